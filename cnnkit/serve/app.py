"""The prediction server's ASGI app (FastAPI): POST /predict, GET /health, GET /model, /docs.

A request's uploads go through the one preparation path (cnnkit.api.Predictor, whose reading is
cnnkit.data.images: an upload is ImageBytes, read as its file would be), decoded on a thread pool
(Pillow releases the GIL), then through the model with the images of the requests queued beside
it (cnnkit.serve.batching): the event loop never waits on a decoder or the model. The answer is
`cnnkit predict --json`'s entries for those files, the upload's filename as "image".

Bad input is the client's error, never a 500: a JSON body {"error", "where", "hint"} with a 4xx
status (ERRORS lists them), and the server goes on answering.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from cnnkit import __version__
from cnnkit.api import Predictor, stack_readable
from cnnkit.data.images import CHANNELS, ImageBytes
from cnnkit.errors import CnnkitError, ImageError
from cnnkit.serve.batching import BatchQueue

log = logging.getLogger("cnnkit.serve")

DEFAULT_TOP_K = 3  # as `cnnkit predict`


@dataclass(frozen=True)
class Limits:
    """What one request may send: files, and bytes per file. A body longer than every file
    at its limit is refused before it is read (max_body_bytes)."""

    max_files: int = 64
    max_image_bytes: int = 10 * 2**20
    max_batch: int | None = None  # images a forward pass may gather (None: eval_batch_size)

    @property
    def max_body_bytes(self) -> int:
        return self.max_files * (self.max_image_bytes + 1024) + 64 * 1024  # + multipart headers


class RequestError(Exception):
    """A request the server refuses: status, and the JSON error body's fields."""

    def __init__(
        self, status: int, message: str, where: str | None = None, hint: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.where, self.hint = status, message, where, hint


# -- what /docs shows --------------------------------------------------------------------


class ClassProbability(BaseModel):
    class_: str = Field(alias="class", description="The class name (the run's class_names).")
    probability: float


class Prediction(BaseModel):
    """One uploaded file's entry, as in `cnnkit predict --json`."""

    image: str = Field(description="The upload's filename.")
    error: str | None = Field(description="Why the file could not be read; null when read.")
    inverted: bool = Field(description="Inverted to match dark-background training data.")
    note: str | None = Field(description="e.g. the colour conversion made to fit the model.")
    top: list[ClassProbability] = Field(description="top_k classes, most probable first.")


class ErrorBody(BaseModel):
    error: str = Field(description="What is wrong with the request.")
    where: str | None = Field(None, description="The field or file it is about.")
    hint: str | None = Field(None, description="What would be valid.")


ERRORS: dict[int | str, dict[str, Any]] = {
    411: {"model": ErrorBody, "description": "A chunked body: send a Content-Length."},
    413: {"model": ErrorBody, "description": "Too many files, or a file above the size limit."},
    422: {
        "model": ErrorBody,
        "description": "No `file` field, a bad top_k, or no file readable as an image.",
    },
}


# -- the app -----------------------------------------------------------------------------


@dataclass
class _Served:
    predictor: Predictor
    limits: Limits
    classes: list[str]
    queue: BatchQueue
    decoders: ThreadPoolExecutor


def create_app(predictor: Predictor, limits: Limits | None = None) -> FastAPI:
    """The app serving a loaded model; its kernels are loaded (or compiled) here, once, by
    one forward pass, so that the first request does not wait for them."""
    limits = limits or Limits()
    shape = (*predictor.options.size, CHANNELS[predictor.options.color_mode])
    columns = predictor.probabilities(np.zeros((1, *shape), dtype=np.uint8)).shape[1]
    served = _Served(
        predictor,
        limits,
        predictor.class_names(columns),
        BatchQueue(
            predictor.probabilities, limits.max_batch or predictor.spec.train.eval_batch_size
        ),
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="cnnkit-decode"),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await served.queue.start()
        yield
        await served.queue.close()
        served.decoders.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title=f"cnnkit serve: {predictor.spec.name}",
        version=__version__,
        description=(
            "Classify images with a trained cnnkit run. POST image files to /predict "
            "(multipart field `file`, repeatable): the answer is `cnnkit predict --json`'s."
        ),
        lifespan=lifespan,
    )
    app.state.served = served  # serve() shows its classes
    _add_routes(app, served)
    _add_error_handlers(app)
    app.add_middleware(RequestLog, limits=limits)
    return app


def _add_routes(app: FastAPI, served: _Served) -> None:
    @app.post("/predict", response_model=list[Prediction], responses=ERRORS)
    async def predict(
        request: Request,
        file: Annotated[
            list[UploadFile], File(description="An image file; repeat the field for several.")
        ],
        top_k: Annotated[
            int | None, Form(ge=1, description="Classes per image (default 3).")
        ] = None,
        top_k_query: Annotated[
            int | None, Query(alias="top_k", ge=1, description="The same, in the query string.")
        ] = None,
    ) -> Any:
        """Top-k classes and probabilities of each uploaded image, in order: `cnnkit predict
        --json`'s entries. A file that cannot be read gets its error and an empty top (the
        others are predicted); no readable file is a 422."""
        k = next((v for v in (top_k, top_k_query) if v is not None), DEFAULT_TOP_K)
        request.state.images = len(file)
        return finite(await _predict(served, file, k))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The server answers; what the batching queue has done."""
        return {"status": "ok", "model": served.predictor.spec.name, **asdict(served.queue.stats)}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """The model served: classes, input shape, how images are prepared, the spec, the
        checkpoint's epoch and metrics, and the request limits."""
        return finite(model_info(served.predictor, served.classes, served.limits))


async def _predict(served: _Served, files: list[UploadFile], top_k: int) -> list[dict]:
    limits = served.limits
    if len(files) > limits.max_files:
        raise RequestError(
            413,
            f"too many files: {len(files)} (at most {limits.max_files} a request)",
            where="file",
            hint="Send them in several requests, or start the server with --max-files N.",
        )
    uploads = [await _read_upload(f, i, limits) for i, f in enumerate(files)]
    loop = asyncio.get_running_loop()
    read = await asyncio.gather(
        *(
            loop.run_in_executor(served.decoders, served.predictor.try_read, upload)
            if upload.data
            else _empty(upload)
            for upload in uploads
        )
    )
    x = stack_readable(uploads, read)  # ImageError (422) when none is readable
    rows = await served.queue.submit(x)
    return served.predictor.entries(uploads, read, rows, top_k)


async def _empty(upload: ImageBytes) -> ImageError:
    return ImageError(
        "the file is empty (0 bytes)",
        where=upload.name,
        hint="curl -F file=@PATH sends the file at PATH: check the path.",
    )


async def _read_upload(file: UploadFile, index: int, limits: Limits) -> ImageBytes:
    name = file.filename or f"file {index + 1}"
    too_big = RequestError(
        413,
        f"image above the size limit of {limits.max_image_bytes:,} bytes",
        where=name,
        hint="Send a smaller file, or start the server with a larger --max-image-mb.",
    )
    if file.size is not None and file.size > limits.max_image_bytes:
        raise too_big
    data = await file.read(limits.max_image_bytes + 1)
    if len(data) > limits.max_image_bytes:
        raise too_big
    return ImageBytes(name, data)


def model_info(predictor: Predictor, classes: list[str], limits: Limits) -> dict[str, Any]:
    spec, meta, options = predictor.spec, predictor.meta, predictor.options
    return {
        "name": spec.name,
        "run": str(predictor.run_dir),
        "checkpoint": str(predictor.checkpoint),
        "epoch": meta.get("epoch"),
        "metrics": meta.get("metrics"),
        "classes": classes,
        "input_shape": [None, *options.size, CHANNELS[options.color_mode]],
        "image": {
            "size": list(options.size),
            "color_mode": options.color_mode,
            "interpolation": options.interpolation,
        },
        "spec_hash": spec.hash(),
        "spec": spec.to_dict(),
        "cnnkit_version": __version__,
        "limits": {
            "max_files": limits.max_files,
            "max_image_bytes": limits.max_image_bytes,
            "max_batch": limits.max_batch or spec.train.eval_batch_size,
        },
    }


def finite(value: Any) -> Any:
    """NaN and infinities as null: JSON has no such numbers (a diverged metric has them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


# -- errors: JSON, 4xx, naming the problem -----------------------------------------------


def error_response(status: int, message: str, where=None, hint=None) -> JSONResponse:
    return JSONResponse({"error": message, "where": where, "hint": hint}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return error_response(error.status, error.message, error.where, error.hint)

    @app.exception_handler(CnnkitError)
    async def unreadable(request: Request, error: CnnkitError) -> JSONResponse:
        return error_response(422, error.message, error.where, error.hint)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, *validation_message(error.errors()))

    @app.exception_handler(HTTPException)
    async def http(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail))


def validation_message(errors: list[dict]) -> tuple[str, str | None, str | None]:
    """(error, where, hint) of FastAPI's validation errors, the first one named."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [str(part) for part in first.get("loc") or ()]
    field = loc[1] if len(loc) > 1 and loc[0] in ("body", "query") else (loc[0] if loc else None)
    if field == "file" and first.get("type") == "missing":
        return (
            "no image file in the request: the multipart field 'file' is missing",
            "file",
            "POST the images as multipart/form-data, one `file` field each: "
            "curl -F file=@digit.png http://HOST:PORT/predict",
        )
    if field == "file":
        return (
            f"the field 'file' must be an uploaded file ({first['msg']})",
            "file",
            "Send it as a file part (curl -F file=@digit.png), not as text.",
        )
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{field}: {first['msg']}{more}" if field else first["msg"], field, None


# -- one log line a request; bodies too long refused before they are read ----------------


class RequestLog:
    """ASGI middleware: logs `client "METHOD path" status ms [N images]` for every request,
    and answers 411 / 413 to a body it will not read (chunked, or longer than the limits)."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self.refusal(scope)
            app = refusal if refusal is not None else self.app
            await app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            images = (scope.get("state") or {}).get("images")
            log.info(
                '%s:%s "%s %s" %d %.1f ms%s',
                client[0],
                client[1],
                scope["method"],
                scope["path"],
                status[0],
                (time.perf_counter() - started) * 1e3,
                f" {images} image{'s' * (images != 1)}" if images else "",
            )

    def refusal(self, scope) -> JSONResponse | None:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is None and b"chunked" in headers.get(b"transfer-encoding", b""):
            return error_response(
                411, "a chunked request body: send its Content-Length", hint="curl -F sends one."
            )
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            return error_response(
                413,
                f"request body of {int(length):,} bytes, above the limit of "
                f"{self.limits.max_body_bytes:,} ({self.limits.max_files} files of at most "
                f"{self.limits.max_image_bytes:,} bytes)",
                hint="Send fewer or smaller files per request.",
            )
        return None
