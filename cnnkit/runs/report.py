"""report.md: one Markdown page per run, readable on its own in any Markdown viewer.

Built only from the files in the run directory (config.yaml, summary.txt, metrics.csv, run.json,
checkpoints/best.json, evaluation.json and the PNGs that exist), so it can be rewritten at any
time: after training (finished, interrupted or failed) and after every evaluation. Each split
evaluated has its section: evaluation.json (test) first, then evaluation_validation.json and
evaluation_train.json (cnnkit.runs.layout.split_file), each with the notes evaluate recorded (an
optimistic test score: the model was selected on the test set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cnnkit.io import atomic_write_text
from cnnkit.runs.layout import (
    CONFUSION_PNG,
    EVALUATION_SPLITS,
    MISCLASSIFIED_CSV,
    MISCLASSIFIED_PNG,
    RunDir,
    split_file,
)
from cnnkit.runs.state import read_state


def _cell(value: Any, digits: int = 4) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value.replace("|", "\\|")
        if value.strip().lstrip("-").isdigit():
            return value
        value = number
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # nan
            return "n/a"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def build_report(run_dir: Path) -> str:
    run = RunDir(run_dir)
    run_dir = run.root
    state = read_state(run_dir)
    metrics = run.read_metrics()
    best = run.read_checkpoint_meta("best")
    evaluations = read_evaluations(run_dir)
    config = run.read_text(run.config)
    planned = (state or {}).get("epochs_planned")
    out = [f"# Run report: {run_dir.name}", ""]

    facts = [["run directory", str(run_dir)]]
    if state:
        facts += [
            ["state", state.get("state", "unknown")],
            ["started", state.get("started", "–")],
            ["ended", state.get("ended") or "–"],
        ]
        if state.get("error"):
            facts.append(["error", state["error"]])
    facts.append(["epochs done / planned", f"{len(metrics)} / {planned if planned else '?'}"])
    if state and state.get("images_per_s"):
        facts.append(["training images/s (mean)", f"{state['images_per_s']:,.0f}"])
    if best:
        monitor = checkpoint_monitor(config)
        value = best.get("metrics", {}).get(monitor) if monitor else None
        facts.append(["best epoch", f"{best.get('epoch')} ({monitor} {_cell(value)})"])
    for _, evaluation in evaluations:
        accuracy = _cell(evaluation.get("accuracy"))
        if evaluation.get("optimistic"):
            accuracy += " (optimistic: selected on this split)"
        facts.append([f"{evaluation.get('split', 'test')} accuracy", accuracy])
    out += ["## Summary", "", table(["", ""], facts), ""]

    if run.curves.is_file():
        out += ["## Training curves", "", f"![training curves]({run.curves.name})", ""]

    if metrics:
        headers = list(metrics[0])
        body = [[r[h] for h in headers] for r in metrics]
        out += ["## Metrics per epoch", "", table(headers, body), ""]

    for files, evaluation in evaluations:
        out += _evaluation_section(run_dir, files, evaluation)

    summary = run.read_text(run.summary).rstrip()
    if summary:
        out += ["## Model", "", "```", summary, "```", ""]
    if config:
        title = f"## Spec ({run.config.name}, every default filled in)"
        out += [title, "", "```yaml", config.rstrip()]
        out += ["```", ""]
    return "\n".join(out)


def checkpoint_monitor(config_text: str) -> str | None:
    """callbacks.checkpoint.monitor of config.yaml: what chose best.npz."""
    try:
        config = yaml.safe_load(config_text) or {}
        return config["callbacks"]["checkpoint"]["monitor"]
    except (yaml.YAMLError, KeyError, TypeError):
        return None


def read_evaluations(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """The run's evaluations as (the split its files are named for, evaluation): the test
    split's (evaluation.json) first, then the others."""
    run = RunDir(run_dir)
    found = [(s, run.read_evaluation(s)) for s in EVALUATION_SPLITS]
    return [(s, ev) for s, ev in found if ev]


def _evaluation_section(run_dir: Path, files: str, ev: dict[str, Any]) -> list[str]:
    """files: the split the evaluation's files are named for (an evaluation.json written
    before `evaluate --split` existed may hold the validation split)."""
    split = ev.get("split", "test")
    title = "Final evaluation" if split == "test" else "Evaluation"
    out = [f"## {title} ({split} split)", ""]
    out += [f"> **Note:** {note}" for note in ev.get("notes") or ()]
    if ev.get("notes"):
        out.append("")
    rows = [
        ["checkpoint", ev.get("checkpoint")],
        ["epoch", ev.get("epoch")],
        ["samples", ev.get("samples")],
        ["loss", ev.get("loss")],
        ["accuracy", ev.get("accuracy")],
    ]
    positive = ev.get("positive_class")  # binary: precision, recall, f1 of this class
    for name, value in (ev.get("metrics") or {}).items():
        if name != "accuracy":
            shown = f"{name} (positive class {positive})" if positive is not None else name
            rows.append([shown if name in ("precision", "recall", "f1") else name, value])
    out += [table(["", ""], rows), ""]
    per_class = ev.get("per_class") or {}
    if per_class.get("classes"):
        body = [
            [r["class"], r["precision"], r["recall"], r["f1"], r["support"]]
            for r in per_class["classes"]
        ]
        for avg in ("macro", "weighted"):
            if avg in per_class:
                r = per_class[avg]
                body.append([f"*{avg} avg*", r["precision"], r["recall"], r["f1"], ev["samples"]])
        out += ["### Per class", "", table(["class", "precision", "recall", "f1", "support"], body)]
        out.append("")
    pairs = ev.get("most_confused") or []
    if pairs:
        body = [[p["true"], p["predicted"], p["count"], p["fraction_of_true"]] for p in pairs]
        out += ["### Most-confused class pairs", ""]
        out += [table(["true", "predicted as", "count", "share of true class"], body), ""]
    for base, title in (
        (CONFUSION_PNG, "Confusion matrix"),
        (MISCLASSIFIED_PNG, "Most confident mistakes"),
    ):
        name = split_file(base, files)
        if (run_dir / name).is_file():
            out += [f"### {title}", "", f"![{title.lower()}]({name})", ""]
    csv_name = split_file(MISCLASSIFIED_CSV, files)
    if (run_dir / csv_name).is_file():
        count = ev.get("misclassified")
        what = f"all {count:,} mistakes" if isinstance(count, int) else "every mistake"
        out += [f"[{csv_name}]({csv_name}): {what}, most confident first.", ""]
    return out


def write_report(run_dir: Path) -> Path:
    path = RunDir(run_dir).report
    atomic_write_text(path, build_report(run_dir))
    return path
