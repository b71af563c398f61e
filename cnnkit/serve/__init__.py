"""`cnnkit serve`: a trained run behind HTTP (FastAPI on uvicorn), the `serve` extra.

The model loads once, at start (cnnkit.api.Predictor); cnnkit.serve.app is the ASGI app,
cnnkit.serve.batching the queue that batches the images of concurrent requests. This module
imports neither FastAPI nor uvicorn until asked to serve, so that without the extra the command
can say which to install.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnkit.errors import CnnkitError, ExtraMissing

EXTRA = 'pip install "cnnkit[serve]"'


def require_extra() -> None:
    """The serve extra's packages, or ExtraMissing (exit 2) saying how to install them."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        try:
            import python_multipart  # noqa: F401
        except ImportError:
            import multipart  # noqa: F401  (python-multipart before 0.0.13)
    except ImportError as error:
        raise ExtraMissing(
            f"cnnkit serve needs the serve extra: the package {error.name!r} is not installed",
            where="cnnkit serve",
            hint=f"Install it with `{EXTRA}` (FastAPI, uvicorn and python-multipart).",
        ) from None


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound here so that a port in use (or a host that is not
    this machine's) is a user error, not uvicorn's exit.

    Its protocol is IPPROTO_TCP, named: asyncio sets TCP_NODELAY only on sockets that say so
    (socket.create_server's say 0), and without it every answer on a kept-alive connection
    waited 40 ms for the client's delayed ACK (Nagle: uvicorn writes headers and body apart)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        return sock
    except OSError as error:
        sock.close()
        raise CnnkitError(
            f"cannot listen on {host}:{port}: {error.strerror or error}",
            where="--host/--port",
            hint="Choose another --port (or stop what listens there); --host is an address of "
            "this machine (127.0.0.1: this machine only; 0.0.0.0: every interface).",
        ) from None


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    checkpoint: str = "best",
    max_files: int | None = None,
    max_image_bytes: int | None = None,
    max_batch: int | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Load the run's model, then answer HTTP on host:port until Ctrl-C or SIGTERM.

    max_batch: images one forward pass may gather from concurrent requests (default the
    spec's train.eval_batch_size; 1: every request alone). on_start(info): called once the
    model is loaded and the port bound, before the first request, with GET /model's content
    and "url"."""
    require_extra()
    import uvicorn

    from cnnkit.api import Predictor
    from cnnkit.serve.app import Limits, create_app, model_info

    defaults = Limits()
    limits = Limits(
        max_files or defaults.max_files, max_image_bytes or defaults.max_image_bytes, max_batch
    )
    sock = listen(host, port)  # before the model loads: a port in use fails at once
    try:
        predictor = Predictor.load(Path(run_dir), checkpoint)
        app = create_app(predictor, limits)
        if on_start is not None:
            shown = f"[{host}]" if ":" in host else host
            info = model_info(predictor, app.state.served.classes, limits)
            on_start({**info, "url": f"http://{shown}:{sock.getsockname()[1]}"})
        _log_requests()
        config = uvicorn.Config(app, log_level="info", access_log=False, lifespan="on")
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly; Ctrl-C is how a server stops
        pass
    finally:
        sock.close()


def _log_requests() -> None:
    """One line a request (cnnkit.serve.app.RequestLog) on stderr, as uvicorn's own lines."""
    from uvicorn.logging import DefaultFormatter

    logger = logging.getLogger("cnnkit.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
