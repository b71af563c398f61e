"""`cnnkit train SPEC | head -3` (issue 12, line 10): when stdout's reader goes away, training
stops as interrupted, with its checkpoint, exit code 141 (128 + SIGPIPE), and says on stderr
how to resume; an interrupt in epoch 1 (no best.npz yet) points at --checkpoint last."""

from __future__ import annotations

import json

from tests.clitools import close_stdout_and_wait, flat, run_cli, start_subprocess, tiny_pool_spec

# hundreds of epochs of a model that trains in a moment: it is still training, printing a
# line every 4 steps, whenever the pipe closes
SPEC = tiny_pool_spec("piped", epochs=500, train_samples=512, every_steps=4)


def test_closed_stdout_stops_training_as_interrupted_with_its_checkpoint(
    tmp_path, monkeypatch, capsys
):
    spec = tmp_path / "piped.yaml"
    spec.write_text(SPEC)
    proc = start_subprocess("train", str(spec), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    code, err = close_stdout_and_wait(proc, after_lines=1)  # as `head -1` exits
    assert code == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    text = flat(err)
    assert "Interrupted by the output pipe closing (SIGPIPE) at epoch 1, after step" in text, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"cnnkit train --resume {run_dir}" in text, err
    # no epoch finished: the hint says which checkpoint evaluate and predict can use
    assert f"cnnkit evaluate {run_dir} --checkpoint last" in text, err
    assert json.loads((run_dir / "run.json").read_text())["state"] == "interrupted"
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    # the closed pipe is noticed at the next print: a note, or a progress line
    assert last["epoch"] == 1 and not last["epoch_complete"] and last["step"] >= 1, last
    assert not (run_dir / "checkpoints" / "best.npz").exists()

    # evaluate's default (best) points at the checkpoint that exists
    code, _, err = run_cli("evaluate", str(run_dir), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2
    text = flat(err)
    assert "no best.npz yet" in text and "add --checkpoint last" in text, err
    assert f"cnnkit train --resume {run_dir}" in text, err


def test_stdout_closed_before_the_first_line_still_stops_as_interrupted(tmp_path):
    """The reader gone before anything was printed: the first lines (run directory, notes)
    meet the closed pipe through Rich, which by itself would exit with 1 and leave a run
    marked failed. The run still stops after its first step, saved, with 141."""
    spec = tmp_path / "piped.yaml"
    spec.write_text(SPEC)
    proc = start_subprocess("train", str(spec), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    code, err = close_stdout_and_wait(proc)  # `cnnkit train ... | true`
    assert code == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "run.json").read_text())["state"] == "interrupted"
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    assert last["epoch"] == 1 and not last["epoch_complete"], last


def test_json_into_a_closed_pipe_exits_141_quietly(tmp_path):
    """`cnnkit schema | true`: print() meets the closed pipe; Typer alone would exit 1."""
    code, err = close_stdout_and_wait(start_subprocess("schema", cwd=tmp_path), timeout=60)
    assert code == 141 and not err.strip(), err
