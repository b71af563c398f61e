"""One preparation path: `predict` reads an image folder's files exactly as training and
`evaluate` do (decoder, colour mode, interpolation, size, rescale, normalisation, batches), for
every color_mode; a folder with an unreadable file; predict's table at 80 columns."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnkit import api
from cnnkit.data import folder, images
from cnnkit.spec.config import parse_spec
from tests.clitools import flat, run_cli, run_subprocess

CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}
# (size, format, mode): none 12x12 (the model's size), PNG and JPEG, alpha, palette
IMAGES = [
    ((15, 13), "png", "RGB"),
    ((20, 20), "jpg", "RGB"),
    ((9, 14), "png", "RGBA"),
    ((17, 11), "png", "LA"),
    ((16, 16), "png", "P"),  # palette with a transparent entry
    ((13, 19), "jpg", "L"),
    ((21, 10), "png", "L"),
]


def write_image(path: Path, size: tuple[int, int], mode: str, rng, base: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    noise = rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)
    noise[..., :3] = np.clip(noise[..., :3].astype(int) // 2 + base, 0, 255)
    rgba = Image.fromarray(noise, "RGBA")
    if mode == "P":
        img = rgba.convert("RGB").quantize(16)
        img.info["transparency"] = 0
    else:
        img = rgba.convert(mode)
    img.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))


def make_folder(root: Path) -> None:
    """train/ and test/ with two classes; every image needs resizing to 12x12."""
    rng = np.random.default_rng(0)
    for split, repeats in (("train", 2), ("test", 1)):
        for name, base in (("dark", 0), ("light", 120)):
            for r in range(repeats):
                for i, (size, fmt, mode) in enumerate(IMAGES):
                    write_image(root / split / name / f"{r}{i}.{fmt}", size, mode, rng, base)


def spec_text(root: Path, mode: str) -> str:
    """A tiny model large enough for BLAS to round by batch: with OpenBLAS 0.3.31 predicting
    these 14 test files in batches of 1, 3 or 64 instead of evaluate's 4 moves probabilities
    by 6e-8 (measured), so the test also checks that predict batches as evaluate does."""
    return f"""
name: prep_{mode}
seed: 1
data: {{source: folder, path: {root}, color_mode: {mode}, interpolation: nearest}}
model:
  input_shape: [12, 12, {CHANNELS[mode]}]
  layers:
    - Conv2D: {{filters: 8, kernel_size: 3}}
    - Flatten: {{}}
    - Dense: {{units: 16, activation: relu}}
    - Dense: {{units: 2, activation: softmax}}
augmentation: {{samplewise_center: true}}
train: {{epochs: 1, batch_size: 4, eval_batch_size: 4}}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    work = tmp_path_factory.mktemp("prepare")
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNKIT_CACHE_DIR", str(work / "cache"))
    make_folder(work / "data")
    try:
        done = {
            mode: api.train(parse_spec(spec_text(work / "data", mode)), out=work / "runs").run_dir
            for mode in CHANNELS
        }
    finally:
        mp.undo()
    return work, done


def read_predictions_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    names = [k[2:] for k in rows[0] if k.startswith("p_")]
    probs = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows])
    return [r["file"] for r in rows], names, probs


@pytest.mark.e2e
@pytest.mark.parametrize("mode", list(CHANNELS))
def test_predict_gives_evaluates_probabilities_bit_for_bit(runs, mode, monkeypatch):
    work, done = runs
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(work / "cache"))
    run = done[mode]
    report = api.evaluate(run)
    files, names, expected = read_predictions_csv(run / "predictions.csv")
    assert report["samples"] == len(files) == 2 * len(IMAGES)
    assert names == ["dark", "light"]
    results = api.predict([work / "data" / "test"], run, top_k=2)
    assert [r["image"] for r in results] == files  # same files, same order
    got = np.array(
        [[{t["class"]: t["probability"] for t in r["top"]}[n] for n in names] for r in results]
    )
    assert np.array_equal(got, expected)
    # and the uint8 arrays predict decodes are those training's cached decoder gave
    spec = api.load_model(run)[0]
    options = images.ImageOptions.from_spec(spec)
    assert options == images.ImageOptions((12, 12), mode, "nearest")
    cached = api.load_dataset(spec)  # the folder cache that training filled
    for f in files:
        row = cached.files_test.index(f)
        assert np.array_equal(images.decode_image(Path(f), options), cached.x_test[row]), f


@pytest.mark.e2e
def test_old_bilinear_path_would_differ(runs):
    """The test above is not vacuous: bilinear (what predict used) gives other arrays."""
    work, _ = runs
    f = next((work / "data" / "test" / "dark").glob("*.jpg"))
    nearest = images.decode_image(f, images.ImageOptions((12, 12), "rgb", "nearest"))
    bilinear = images.decode_image(f, images.ImageOptions((12, 12), "rgb", "bilinear"))
    assert not np.array_equal(nearest, bilinear)


def test_rgba_keeps_alpha_and_other_modes_flatten_onto_white(tmp_path: Path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)  # fully transparent black
    rgba = images.decode_image(path, images.ImageOptions((4, 4), "rgba"))
    assert rgba.shape == (4, 4, 4) and (rgba[..., 3] == 0).all()
    rgb = images.decode_image(path, images.ImageOptions((4, 4), "rgb"))
    gray = images.decode_image(path, images.ImageOptions((4, 4), "grayscale"))
    assert (rgb == 255).all() and gray.shape == (4, 4, 1) and (gray == 255).all()


def test_the_folder_cache_key_holds_the_decoder(tmp_path: Path, monkeypatch, private_cache):
    make_folder(tmp_path / "data")
    spec = parse_spec(spec_text(tmp_path / "data", "rgb"))
    api.load_dataset(spec)
    decoded = []

    def counting(*args):
        decoded.append(args[0])
        return images.decode_image(args[0], images.ImageOptions(*args[1:]))

    monkeypatch.setattr(folder, "_decode", counting)
    api.load_dataset(spec)
    assert decoded == []  # cached
    monkeypatch.setattr(folder, "DECODER", {**images.DECODER, "pillow": "0.0-another"})
    api.load_dataset(spec)
    assert len(decoded) == 6 * len(IMAGES)  # train and test: another Pillow, decoded again


# -- a folder with an unreadable file ------------------------------------------------------


@pytest.fixture
def with_broken(runs, tmp_path) -> tuple[Path, Path]:
    work, done = runs
    target = tmp_path / "to_predict"
    shutil.copytree(work / "data" / "test" / "dark", target)
    return target, done["rgb"]


@pytest.mark.e2e
def test_one_unreadable_file_is_listed_and_exits_1(with_broken, monkeypatch, capsys):
    target, run = with_broken
    code, _, _ = run_cli(
        "predict", str(target), "--run", str(run), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 0  # every file read
    (target / "broken.png").write_bytes(b"\x89PNG not really")
    code, out, err = run_cli(
        "predict", str(target), "--run", str(run), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 1 and "Traceback" not in err
    for name in ("00.png", "01.jpg", "06.png"):
        assert name in out
    assert "broken.png" not in out
    assert "1 of 8 images could not be read" in flat(err)
    assert "broken.png: cannot read as an image (UnidentifiedImageError" in flat(err)
    code, out, err = run_cli(
        "predict", str(target), "--run", str(run), "--json", monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 1
    results = json.loads(out)
    assert len(results) == 8
    broken = [r for r in results if r["error"]]
    assert [Path(r["image"]).name for r in broken] == ["broken.png"] and broken[0]["top"] == []
    assert "cannot read as an image" in broken[0]["error"]
    assert all(len(r["top"]) == 2 and r["error"] is None for r in results if r not in broken)


@pytest.mark.e2e
def test_a_folder_of_only_unreadable_files_exits_2(with_broken, tmp_path, monkeypatch, capsys):
    _, run = with_broken
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.png", "b.jpg"):
        (bad / name).write_bytes(b"nope")
    code, _, err = run_cli(
        "predict", str(bad), "--run", str(run), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "Traceback" not in err
    assert "none of the 2 images could be read" in flat(err)


# -- 80 columns ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_predict_at_80_columns_tells_rows_apart(runs, tmp_path):
    work, done = runs
    source = next((work / "data" / "test" / "dark").glob("*.jpg"))
    deep = tmp_path / "a_rather_long_folder_name" / "data" / "test"
    names = [
        "cats/cat.1001.jpg",
        "cats/cat.1002.jpg",
        "dogs/a_very_long_file_name_straight_from_the_camera_roll_0001.jpg",
        "dogs/a_very_long_file_name_straight_from_the_camera_roll_0002.jpg",
    ]
    for name in names:
        (deep / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, deep / name)
    result = run_subprocess("predict", str(deep), "--run", str(done["rgb"]), columns=80)
    assert result.returncode == 0, result.stderr
    heading, *lines = result.stdout.splitlines()
    assert heading == f"Images in {deep}/"  # the common folder, whole, once
    assert all(len(line) <= 80 for line in lines)
    rows = [line for line in lines if "dark" in line.split()[1:2] or "light" in line.split()[1:2]]
    shown = [line.split()[0] for line in rows]
    assert len(shown) == 4 and len(set(shown)) == 4, result.stdout
    assert shown[:2] == ["cats/cat.1001.jpg", "cats/cat.1002.jpg"]
    assert shown[2].startswith("dogs/") and shown[2].endswith("roll_0001.jpg") and "…" in shown[2]
    assert shown[3].endswith("roll_0002.jpg")


def test_inverted_mark_and_notes_fit_80_columns():
    """'(inverted)' counts in the name's budget (the name is shortened, the mark kept whole);
    conversion notes are lines below the table, grouped, naming their images."""
    import io

    from rich.console import Console

    from cnnkit.cli import display

    note = "converted from RGB (3 channels) to grayscale (1 channel), as the model was trained"
    top = [{"class": c, "probability": p} for c, p in (("2", 0.9999), ("1", 1e-4), ("0", 0.0))]
    names = ["drawn_inverted_label2_100px_from_the_paint_program.jpg", "plain_0001.png"]
    predictions = [
        {"image": f"/data/mine/{n}", "error": None, "inverted": i == 0, "note": note, "top": top}
        for i, n in enumerate(names)
    ]
    out = io.StringIO()
    console = Console(file=out, width=80)
    console.print(display.predictions_table(predictions, width=80))
    for line in display.prediction_notes(predictions):
        console.print(line)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    (row,) = [line for line in lines if "(inverted)" in line]
    assert "…" in row and "program.jpg (inverted)" in row, row
    notes = [line for line in lines if line.startswith("Note:")]
    assert len(notes) == 1 and "grayscale" in notes[0], lines  # one note, both images
    assert "plain_0001.png" in flat(out.getvalue().split("Note:")[1])
