"""The CLI (cnnkit.cli.app), in-process through its real entry point (tests/clitools.run_cli).

Bad input: each case exits 2 with one message that names the file and what would be valid, no
traceback, and no run directory or checkpoint left behind; loading a broken checkpoint gives a
clear error and never unpickles anything. Every command's --help has a one-line description and
an example; completion is on. Ctrl-C outside training says that nothing was in progress."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cnnkit.cli.app import app
from tests.clitools import MNIST, flat, run_cli

BASE = f"""\
data: {{source: mnist, path: {MNIST}, max_train_samples: 64, max_test_samples: 32}}
model:
  input_shape: [28, 28, 1]
  layers:
    - Conv2D: {{filters: 4, kernel_size: 3}}
    - MaxPooling2D: {{pool_size: 2}}
    - Flatten: {{}}
    - Dense: {{units: 10, activation: softmax}}
optimizer: {{name: adam, learning_rate: 0.001}}
train: {{epochs: 1, batch_size: 32}}
"""


def edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


SPEC_CASES = {
    "empty": ("", ["the spec file is empty", "data:"]),
    "yaml_syntax": (
        "data: {source: mnist\nmodel: [1\n",
        ["not valid YAML", "yaml_syntax.yaml:2:", "key: value"],
    ),
    "top_level_list": ("- data\n- model\n", ["expected a YAML mapping at the top level"]),
    "section_list": (
        edit(BASE.splitlines()[0], "data: [mnist]"),
        ["data", "expected a mapping of options (key: value), found a list"],
    ),
    "unknown_layer": (edit("- Conv2D:", "- Conv2Dd:"), ["unknown layer 'Conv2Dd'", "'Conv2D'"]),
    "zero_filters": (
        edit("filters: 4", "filters: 0"),
        ["filters", "0 is out of range", "[1, inf]"],
    ),
    "negative_units": (edit("units: 10", "units: -1"), ["units", "-1 is out of range", "[1, inf]"]),
    "zero_batch_size": (
        edit("batch_size: 32", "batch_size: 0"),
        ["train.batch_size", "out of range", "[1, inf]"],
    ),
    "zero_epochs": (edit("epochs: 1", "epochs: 0"), ["train.epochs", "out of range", "[1, inf]"]),
    "zero_learning_rate": (
        edit("learning_rate: 0.001", "learning_rate: 0"),
        ["optimizer.learning_rate", "out of range", "(0, inf]"],
    ),
    "negative_learning_rate": (
        edit("learning_rate: 0.001", "learning_rate: -0.1"),
        ["optimizer.learning_rate", "out of range", "(0, inf]"],
    ),
    "dropout_one": (
        edit("    - Flatten: {}", "    - Dropout: {rate: 1.0}\n    - Flatten: {}"),
        ["Dropout.rate", "out of range", "[0, 1)"],
    ),
    "dropout_negative": (
        edit("    - Flatten: {}", "    - Dropout: {rate: -0.1}\n    - Flatten: {}"),
        ["Dropout.rate", "out of range", "[0, 1)"],
    ),
    "kernel_too_big": (
        edit("kernel_size: 3", "kernel_size: 30"),
        ["Conv2D kernel 30×30", "bigger than its 28×28 input", "smaller kernel_size"],
    ),
    "pool_too_big": (
        edit("pool_size: 2", "pool_size: 30"),
        ["pool_size 30×30 is bigger than its 26×26 input", "smaller pool_size"],
    ),
    "dense_without_flatten": (
        edit("    - Flatten: {}\n", ""),
        ["Dense needs a flat input", "(None, 13, 13, 4)", "Add `- Flatten: {}`"],
    ),
    "wrong_class_count": (
        edit("units: 10", "units: 7"),
        ["the last layer has 7 outputs but mnist has 10 classes", "units: 10"],
    ),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_bad_spec_exits_2_with_one_message_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    text, expected = SPEC_CASES[case]
    spec = tmp_path / f"{case}.yaml"
    spec.write_text(text)
    out_dir = tmp_path / "runs"
    code, out, err = run_cli(
        "train", str(spec), "--out", str(out_dir), monkeypatch=monkeypatch, capsys=capsys
    )
    message = flat(err)
    assert code == 2, out + err
    assert "Traceback" not in err and err.count("cnnkit: error") == 1
    assert spec.name in message
    for part in expected:
        assert part in message, (part, message)
    assert not out_dir.exists()


def test_missing_data_path_names_it_and_the_files_expected(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "nodata.yaml"
    spec.write_text(BASE.replace(str(MNIST), str(tmp_path / "nowhere")))
    code, _, err = run_cli(
        "train", str(spec), "--out", str(tmp_path / "runs"), monkeypatch=monkeypatch, capsys=capsys
    )
    message = flat(err)
    assert code == 2 and "Traceback" not in err
    assert "nowhere" in message and "train-images-idx3-ubyte.gz" in message
    assert "set data.path" in message
    assert not (tmp_path / "runs").exists()


# -- predict and checkpoints --------------------------------------------------------------

TINY = """\
name: small
seed: 1
data: {source: synthetic, num_classes: 3, max_train_samples: 48, max_test_samples: 12}
model:
  input_shape: [8, 8, 1]
  layers:
    - Conv2D: {filters: 2, kernel_size: 3}
    - Flatten: {}
    - Dense: {units: 3, activation: softmax}
train: {epochs: 1, batch_size: 16}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from cnnkit import api
    from cnnkit.spec.config import parse_spec

    work = tmp_path_factory.mktemp("bad_input")
    return api.train(parse_spec(TINY), out=work / "runs").run_dir


@pytest.mark.e2e
def test_predict_on_a_file_that_is_not_an_image(run_dir, tmp_path, monkeypatch, capsys):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    code, _, err = run_cli(
        "predict", str(fake), "--run", str(run_dir), monkeypatch=monkeypatch, capsys=capsys
    )
    message = flat(err)
    assert code == 2 and "Traceback" not in err
    assert "notes.png" in message and "cannot read as an image" in message
    assert "PNG, JPEG" in message


@pytest.mark.e2e
def test_predict_on_a_run_without_checkpoints(run_dir, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", empty / "config.yaml")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    code, _, err = run_cli(
        "predict", str(image), "--run", str(empty), monkeypatch=monkeypatch, capsys=capsys
    )
    message = flat(err)
    assert code == 2 and "Traceback" not in err
    assert "best.npz" in message and "checkpoint not found" in message
    assert "once an epoch" in message


@pytest.mark.e2e
def test_image_with_other_channel_count_is_converted_with_a_note(
    run_dir, tmp_path, monkeypatch, capsys
):
    image = tmp_path / "colour.png"
    Image.fromarray(np.full((8, 8, 3), (200, 30, 30), np.uint8), "RGB").save(image)
    code, out, err = run_cli(
        "predict", str(image), "--run", str(run_dir), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 0, out + err
    assert "converted from RGB (3 channels) to grayscale (1 channel)" in flat(out)
    # the note is one line below the table, naming the image, not wrapped into the name column
    assert (
        "Note: converted from RGB (3 channels) to grayscale (1 channel), as the model was "
        "trained (colour.png)" in flat(out)
    )
    code, out, _ = run_cli(
        "predict",
        str(image),
        "--run",
        str(run_dir),
        "--json",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert json.loads(out)[0]["note"].startswith("converted from RGB")


class _Trap:
    """Unpickling this would create `marker`: proof that nothing is ever unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _checkpoint_cases(run_dir: Path, folder: Path) -> dict[str, tuple[Path, list[str]]]:
    best = run_dir / "checkpoints" / "best.npz"
    data = best.read_bytes()
    meta = json.loads(best.with_suffix(".json").read_text())
    with np.load(best) as archive:
        weights = {k: archive[k] for k in archive.files}
    marker = folder / "unpickled"
    cases = {}

    def case(name: str, content: bytes | None, expected: list[str], sidecar=None) -> None:
        path = folder / f"{name}.npz"
        if content is not None:
            path.write_bytes(content)
        if sidecar is not None:
            path.with_suffix(".json").write_text(json.dumps(sidecar))
        cases[name] = (path, expected)

    case("missing", None, ["checkpoint not found"])
    case("truncated", data[: len(data) // 2], ["corrupt or truncated checkpoint"])
    case("garbage", bytes(range(256)) * 8, ["corrupt checkpoint", "not a numpy .npz archive"])
    wrong = dict(weights)
    wrong["layers.2.kernel"] = np.zeros((100, 3), np.float32)
    buffer = folder / "wrong_shape_src.npz"
    np.savez(buffer, **wrong)
    case(
        "wrong_shape",
        buffer.read_bytes(),
        ["layers.2.kernel (Dense, layer 2)", "(100, 3) in the checkpoint", "needs (72, 3)"],
    )
    case(
        "newer",
        data,
        ["format version 99 is newer", "Upgrade cnnkit"],
        {**meta, "format_version": 99},
    )
    trap = np.empty(1, dtype=object)
    trap[0] = _Trap(marker)
    np.savez(folder / "object_src.npz", **{**weights, "layers.2.kernel": trap})
    case("object_array", (folder / "object_src.npz").read_bytes(), ["pickled Python objects"])
    case("raw_pickle", pickle.dumps({"w": _Trap(marker)}), ["pickled Python objects"])
    np.save(folder / "single.npy", weights["layers.2.kernel"])
    case("npy", (folder / "single.npy").read_bytes(), ["not an .npz archive"])
    changed = {k: v + 1 for k, v in weights.items()}
    np.savez(folder / "changed_src.npz", **changed)
    case(
        "other_save",
        (folder / "changed_src.npz").read_bytes(),
        ["does not match its sidecar"],
        meta,  # the sidecar of best.npz, with its sha256
    )
    return cases


CHECKPOINT_CASES = [
    "missing",
    "truncated",
    "garbage",
    "wrong_shape",
    "newer",
    "object_array",
    "raw_pickle",
    "npy",
    "other_save",
]


@pytest.mark.e2e
@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_broken_checkpoint_is_a_clear_error_and_never_unpickled(
    case, run_dir, tmp_path, monkeypatch, capsys
):
    path, expected = _checkpoint_cases(run_dir, tmp_path)[case]
    code, out, err = run_cli(
        "evaluate",
        str(run_dir),
        "--checkpoint",
        str(path),
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    message = flat(err)
    assert code == 2, out + err
    assert "Traceback" not in err and path.stem in message  # the .npz or its .json sidecar
    for part in expected:
        assert part in message, (part, message)
    assert not (tmp_path / "unpickled").exists()


@pytest.mark.e2e
def test_resume_of_a_run_without_checkpoint(run_dir, tmp_path, monkeypatch, capsys):
    fresh = tmp_path / "fresh"
    (fresh / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", fresh / "config.yaml")
    code, _, err = run_cli("train", "--resume", str(fresh), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "nothing to resume" in flat(err)
    code, _, err = run_cli(
        "train", "--resume", str(tmp_path / "nope"), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "run directory not found" in flat(err)


def test_ctrl_c_outside_training_says_so_and_exits_130(tmp_path, monkeypatch, capsys):
    """Typer turns a KeyboardInterrupt (loading data, evaluate, predict) into a bare exit 130;
    the user is told that nothing was in progress to save."""
    from cnnkit import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "evaluate", interrupted)
    code, _, err = run_cli("evaluate", str(tmp_path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 130
    assert "Interrupted (no training step in progress; nothing to save)." in flat(err), err


def test_cli_check_exits_2_and_train_refuses_before_creating_a_run(
    tmp_path, monkeypatch, capsys, image_folder, folder_spec
):
    image_folder(tmp_path / "d", splits=("train",))
    spec = folder_spec(str(tmp_path / "d"), "\n  classes: [cat, dgo]", units=2)
    code, out, err = run_cli("check", str(spec), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "Traceback" not in err
    assert "2 errors in the spec" in flat(err)
    assert "data.validation" in flat(err) and "data.classes[1]" in flat(err)
    out_dir = tmp_path / "runs"
    code, out, err = run_cli(
        "train", str(spec), "--out", str(out_dir), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "data.classes[1]" in flat(err) and not out_dir.exists()


# -- --help and --version --------------------------------------------------------------


def all_commands() -> list[tuple[tuple[str, ...], object]]:
    """Every command and sub-command of the CLI, whoever added it."""
    found = []

    def walk(group, path: tuple[str, ...]) -> None:
        for name, command in group.commands.items():
            found.append(((*path, name), command))
            if is_group(command):
                walk(command, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def is_group(command) -> bool:
    return hasattr(command, "commands")  # click.Group (typer vendors its own click)


COMMANDS = all_commands()


def test_the_commands_are_found():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"train", "check", "summary", "schema", "init", "data check"} <= names


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_help_has_one_line_description_and_example(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    first_paragraph = (command.help or "").strip().split("\n\n")[0]
    assert first_paragraph and "\n" not in first_paragraph, f"{path}: {first_paragraph!r}"
    assert len(first_paragraph) <= 100
    if not is_group(command):
        example = f"Example: cnnkit {' '.join(path)}"
        assert example in command.help, f"`cnnkit {' '.join(path)} --help` has no example"
        assert example in result.output


def test_shell_completion_is_installable():
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "--install-completion" in result.output and "--show-completion" in result.output


def test_version_prints_cnnkit_and_its_main_dependencies():
    from importlib.metadata import version

    from cnnkit import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert line.startswith(f"cnnkit {__version__} (Python ")
    assert f"numba {version('numba')}" in line and f"numpy {version('numpy')}" in line


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_help_paragraphs_fill_80_columns(path, command):
    """No sentence breaks early where the docstring did: every line of the description that
    a line of the same paragraph follows reaches near the edge."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    description = result.output.split("╭")[0].splitlines()[3:]  # after the Usage line
    for line, following in zip(description, description[1:], strict=False):
        if line.strip() and following.strip():
            assert len(line.rstrip()) >= 55, f"`{' '.join(path)} --help` breaks early: {line!r}"
