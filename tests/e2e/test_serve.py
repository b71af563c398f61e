"""`cnnkit serve` as a real process on a free loopback port, asked by a real HTTP client (httpx):
predict's answers for one and several files, concurrent requests, every bad input a 4xx JSON
error after which the server still answers, /model, /docs, one log line a request; and, in
process, the command without the serve extra (exit 2)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cnnkit import api
from cnnkit.data.idx import read_idx
from cnnkit.spec.config import load_spec
from tests.clitools import MNIST, run_cli, subprocess_env

TINY = """\
name: tiny
seed: 5
data:
  source: mnist
  path: {mnist}
  validation: test
  max_train_samples: 300
  max_test_samples: 100
model:
  input_shape: [28, 28, 1]
  layers:
    - Conv2D: {{filters: 4, kernel_size: 3, strides: 2, activation: relu}}
    - MaxPooling2D: {{pool_size: 2}}
    - Flatten: {{}}
    - Dense: {{units: 10, activation: softmax}}
optimizer: {{name: adam, learning_rate: 0.01}}
train: {{epochs: 1, batch_size: 64}}
"""
MAX_IMAGE_MB = 0.05  # the server's --max-image-mb: 52,428 bytes


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("serve")
    (work / "tiny.yaml").write_text(TINY.format(mnist=MNIST))
    return api.train(load_spec(work / "tiny.yaml"), work / "runs").run_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Six MNIST test digits as PNG files, one drawn dark on light (predict inverts it), one
    in RGB (converted, with a note), and a file that is not an image."""
    folder = tmp_path_factory.mktemp("images")
    digits = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:6]
    for i, digit in enumerate(digits):
        Image.fromarray(digit).save(folder / f"digit{i}.png")
    Image.fromarray(255 - digits[0]).save(folder / "drawn.png")
    Image.fromarray(np.repeat(digits[1][..., None], 3, axis=2)).save(folder / "rgb.png")
    (folder / "bad.png").write_text("not an image")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory) -> Server:
    """`python -m cnnkit serve RUN --port P` (host left to its default), up when /health
    answers; stopped (SIGTERM, then killed) whatever the tests did."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cnnkit", "serve", str(run_dir), "--port", str(port)]
            + ["--max-image-mb", str(MAX_IMAGE_MB)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the server exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no /health in 120 s:\n{log.read_text()}"
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(server: Server, names: list[str], folder: Path, **options) -> httpx.Response:
    files = [("file", (name, (folder / name).read_bytes(), "image/png")) for name in names]
    return httpx.post(f"{server.url}/predict", files=files, timeout=60, **options)


def predict_json(names: list[str], run_dir: Path, folder: Path, monkeypatch, capsys, k=3):
    """`cnnkit predict NAMES --json` run in the images' folder (so "image" is the name)."""
    monkeypatch.chdir(folder)
    code, out, err = run_cli(
        "predict", *names, "--run", str(run_dir), "--top-k", str(k), "--json",
        monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code in (0, 1), err  # 1: some file could not be read (its entry says why)
    return json.loads(out)


NAMES = ["digit0.png", "drawn.png", "rgb.png", "bad.png", "digit2.png", "digit3.png"]


def test_one_and_several_files_get_exactly_predicts_json(
    server, images, run_dir, monkeypatch, capsys
):
    """A request alone is batched as predict batches the same files: bit for bit its answer,
    the unreadable file's error entry, the inverted image and the conversion note included."""
    several = post(server, NAMES, images)
    assert several.status_code == 200, several.text
    expected = predict_json(NAMES, run_dir, images, monkeypatch, capsys)
    assert several.json() == expected
    assert [e["inverted"] for e in expected][:2] == [False, True]
    assert expected[2]["note"] and expected[3]["error"] and not expected[3]["top"]

    one = post(server, ["digit0.png"], images)
    assert one.json() == predict_json(["digit0.png"], run_dir, images, monkeypatch, capsys)

    as_form = post(server, NAMES[:2], images, data={"top_k": "5"})
    in_query = post(server, NAMES[:2], images, params={"top_k": "5"})
    five = predict_json(NAMES[:2], run_dir, images, monkeypatch, capsys, k=5)
    assert as_form.json() == in_query.json() == five
    assert [len(e["top"]) for e in five] == [5, 5]


def test_concurrent_requests_all_get_their_own_answers(server, images, run_dir):
    """16 requests from 8 threads at once, 1 to 3 files each: every answer is its files', in
    order (batched with other requests: equal to float32 rounding, same classes)."""
    alone = api.predict([images / n for n in NAMES if n != "bad.png"], run_dir)
    expected = {Path(e["image"]).name: e for e in alone}
    names = sorted(expected)
    requests = [
        [names[i % 5], names[(i + 1) % 5], names[(i + 3) % 5]][: 1 + i % 3] for i in range(16)
    ]
    answers: dict[int, httpx.Response] = {}
    start = threading.Barrier(8)

    def client(thread: int) -> None:
        start.wait()
        for i in range(thread, 16, 8):
            answers[i] = post(server, requests[i], images)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(answers) == list(range(16))
    for i, response in answers.items():
        assert response.status_code == 200, response.text
        got = response.json()
        assert [e["image"] for e in got] == requests[i]
        for entry in got:
            want = expected[entry["image"]]
            assert [c["class"] for c in entry["top"]] == [c["class"] for c in want["top"]]
            np.testing.assert_allclose(
                [c["probability"] for c in entry["top"]],
                [c["probability"] for c in want["top"]],
                rtol=1e-5,
                atol=1e-7,
            )
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["requests"] >= 16


BIG = MAX_IMAGE_MB * 2**20
BAD_INPUTS = {
    "not an image": (
        {"files": [("file", ("notes.png", b"not an image", "image/png"))]},
        422,
        "cannot identify image file 'notes.png'",
    ),
    "an empty body": ({}, 422, "the multipart field 'file' is missing"),
    "no file field": (
        {"files": [("image", ("digit.png", b"\x89PNG", "image/png"))]},
        422,
        "the multipart field 'file' is missing",
    ),
    "a text field for file": ({"data": {"file": "digit.png"}}, 422, "must be an uploaded file"),
    "an empty file": (
        {"files": [("file", ("empty.png", b"", "image/png"))]},
        422,
        "the file is empty",
    ),
    "an image above the size limit": (
        {"files": [("file", ("huge.png", b"\x89PNG" + bytes(int(BIG)), "image/png"))]},
        413,
        "image above the size limit of 52,428 bytes",
    ),
    "too many files": (
        {"files": [("file", (f"{i}.png", b"x", "image/png")) for i in range(65)]},
        413,
        "too many files: 65 (at most 64 a request)",
    ),
    "a body above the limit": (
        {"files": [("file", ("a.png", bytes(int(BIG)), "image/png"))] * 70},
        413,
        "above the limit",
    ),
    "top_k 0": (
        {"files": [("file", ("d.png", b"x", "image/png"))], "params": {"top_k": "0"}},
        422,
        "top_k: Input should be greater than or equal to 1",
    ),
    "a chunked body": (
        {"content": iter([b"--x\r\n"]), "headers": {"content-type": "multipart/form-data"}},
        411,
        "send its Content-Length",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_4xx_json_error_naming_it_and_the_server_goes_on(server, images, case):
    options, status, message = BAD_INPUTS[case]
    try:
        response = httpx.post(f"{server.url}/predict", timeout=60, **options)
    except httpx.WriteError:  # the server answered and closed before the whole body was sent
        pytest.fail(f"{case}: the connection was closed without an answer")
    assert response.status_code == status, response.text
    assert message in response.json()["error"], response.json()
    assert post(server, ["digit0.png"], images).status_code == 200


def test_model_docs_and_the_loopback_default(server, run_dir):
    info = httpx.get(f"{server.url}/model").json()
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["input_shape"] == [None, 28, 28, 1]
    assert info["spec"]["model"]["input_shape"] == [28, 28, 1]
    assert info["metrics"] == best["metrics"] and info["epoch"] == 1
    assert info["checkpoint"].endswith("best.npz")
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "/predict" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    listening = Path("/proc/net/tcp")
    if listening.is_file():  # local address 127.0.0.1 (hex, little-endian) in state LISTEN
        rows = [line.split() for line in listening.read_text().splitlines()[1:]]
        mine = [r[1] for r in rows if r[1].endswith(f":{server.port:04X}") and r[3] == "0A"]
        assert mine == [f"0100007F:{server.port:04X}"]


def test_one_log_line_a_request(server, images):
    before = len(server.lines())
    post(server, ["digit0.png", "digit2.png"], images)
    httpx.get(f"{server.url}/health")
    httpx.get(f"{server.url}/no-such-page")
    deadline = time.monotonic() + 5
    while len(server.lines()) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # nothing more comes
    new = server.lines()[before:]
    assert len(new) == 3, new
    assert '"POST /predict" 200' in new[0] and new[0].endswith(" ms 2 images")
    assert '"GET /health" 200' in new[1] and '"GET /no-such-page" 404' in new[2]
    assert new[0].startswith("INFO:") and "127.0.0.1:" in new[0]


def test_without_the_serve_extra_the_command_says_which_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` fails
    code, out, err = run_cli("serve", "runs/none", monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    assert 'pip install "cnnkit[serve]"' in err and "'fastapi' is not installed" in err


def test_a_port_in_use_is_a_user_error(monkeypatch, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, _, err = run_cli(
            "serve", "runs/none", "--port", port, monkeypatch=monkeypatch, capsys=capsys
        )
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err
