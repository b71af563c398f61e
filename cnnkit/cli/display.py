"""Everything a person reads in the terminal: Rich tables, progress bars and error panels."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from cnnkit.errors import CnnkitError
from cnnkit.interrupts import output_closed
from cnnkit.runs.layout import RunDir, read_checkpoint_sidecar
from cnnkit.runs.summary import Fits, human_bytes, summary_table


class _PipeSafeConsole(Console):
    """Rich's Console ends the program with exit code 1 when stdout's reader has gone; cnnkit
    goes on writing into /dev/null instead (cnnkit.interrupts.output_closed: a training run
    then stops as interrupted, with its checkpoint) and the CLI exits with 141 at the end."""

    def on_broken_pipe(self) -> None:
        output_closed()


console = _PipeSafeConsole()
error_console = Console(stderr=True)


def plural(n: int, word: str) -> str:
    """1 round, 3 rounds; 1 batch, 2 batches; 1 channel, 4 channels."""
    end = "es" if word.endswith(("s", "sh", "ch", "x")) else "s"
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}{end}"


def check_renderables(report: Any) -> list[Any]:
    """`cnnkit check`: the summary with its memory plan, memory warnings, then ok."""
    info = report.summary
    out: list[Any] = [
        summary_table(info.title, info.rows, info.totals, info.memory, info.input_shape)
    ]
    if report.available is not None:
        out.append(f"Memory available now: {human_bytes(report.available)} (MemAvailable)")
    else:
        out.append("[dim]Memory available now: unknown (no /proc/meminfo): not checked[/dim]")
    for w in report.warnings:
        fits = (
            f"The largest batch size that fits: {w.fits:,} (--set {w.option}={w.fits})."
            if w.fits
            else "Not even a batch of 1 fits: make the model smaller."
        )
        out.append(
            f"[yellow]Warning:[/yellow] {w.what} at {w.option} {w.batch_size:,} plans "
            f"{human_bytes(w.planned)} of memory, more than {w.share:.0%} of the "
            f"{human_bytes(w.available)} available.\n  {fits}"
        )
    for note in report.spec.notes:
        out.append(f"[yellow]Note:[/yellow] {escape(note)}")
    where = escape(str(report.spec.file)) if report.spec.file else "spec"
    out.append(f"[bold green]ok[/bold green]: {where} is valid")
    return out


def print_error(error: CnnkitError) -> None:
    errors = getattr(error, "errors", None)  # SpecErrors: every error of the spec, one panel each
    if errors:
        for one in errors:
            print_error(one)
        error_console.print(f"[bold red]{escape(error.message)}[/bold red]")
        return
    head = f"[bold]{escape(error.message)}[/bold]"
    if error.where:
        head = f"[cyan]{escape(error.where)}[/cyan]\n{head}"
    parts: list[Any] = [Text.from_markup(head)]
    if error.context:
        inside = max(error_console.width - 4, 20)  # the panel's border and padding
        # never wrapped: a wrapped line would leave its caret under the wrong column
        excerpt = fit_excerpt(error.context, inside)
        parts += [Text(""), Text(excerpt, style="dim", no_wrap=True, overflow="crop")]
    if error.hint:
        parts += [Text(""), Text(error.hint)]
    error_console.print(
        Panel(Group(*parts), title="cnnkit: error", title_align="left", border_style="red")
    )


_GUTTER = re.compile(r"^(\s*\d+ \| |\s*)")


def fit_excerpt(context: str, width: int) -> str:
    """An error's excerpt (a source line, then a line holding only a caret under a column)
    with every line that is wider than `width` cut to a window around its caret, marked with
    … on the cut sides; the caret moves with it, so it stays under its column. The gutter
    (`  12 | `, or the indent of a --set argument) is kept."""
    lines = context.split("\n")
    for i in range(len(lines) - 1):
        source, caret = lines[i], lines[i + 1]
        if len(source) <= width or caret.strip() != "^":
            continue
        gutter = len(_GUTTER.match(source)[0])
        column = caret.index("^") - gutter  # in the text after the gutter
        text, room = source[gutter:], max(width - gutter, 8)
        start = max(0, min(column - room // 3, len(text) - room + 1))
        head = "…" if start > 0 else ""
        first = start + len(head)  # the … takes the place of one character
        end = first + room - len(head)
        tail = ""
        if end < len(text):
            tail, end = "…", end - 1
        lines[i] = source[:gutter] + head + text[first:end] + tail
        lines[i + 1] = " " * (gutter + len(head) + column - first) + "^"
    return "\n".join(lines)


def print_line(target: Console, text: str) -> None:
    """target.print(text) without breaking a long path onto a second line. A closed stdout
    is the console's business (_PipeSafeConsole: training stops as interrupted)."""
    target.print(text, soft_wrap=True)


def format_metrics(values: dict[str, Any]) -> str:
    """`loss 0.1234  accuracy 0.9876  ...` in the order given; NaN (auc with one class) as nan."""
    return "  ".join(f"{name} {value:.4f}" for name, value in values.items())


# row keys that are not metrics: shown separately (or not at all) at the end of an epoch
_NOT_METRICS = ("epoch", "images_per_s", "seconds", "lr")


class RichReporter:
    """Progress bar per epoch (step, loss and the chosen metrics, images/s, ETA) and one line per
    epoch with train and validation metrics (auc appears there: it needs the whole epoch)."""

    def __init__(self):
        self.progress = Progress(
            TextColumn("[bold]Epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TextColumn("{task.fields[ips]:,.0f} img/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = None
        self.status: Any = None  # the spinner while kernels load or compile
        self.started = False  # the progress bar: from the first epoch on

    def __enter__(self) -> RichReporter:
        return self

    def __exit__(self, *exc) -> None:
        if self.status is not None:
            self.status.stop()
        if self.started:
            self.progress.stop()

    def kernels(self, phase: str, seconds: float) -> None:
        if phase in ("compiled", "loaded"):
            if self.status is not None:
                self.status.stop()
                self.status = None
            if phase == "compiled":
                console.print(f"[dim]{kernels_compiled_line(seconds)}[/dim]")
            return
        text = compiling_line(seconds) if phase == "compiling" else "Loading kernels"
        if self.status is None:
            self.status = console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.epochs = epochs
        self.task = self.progress.add_task(
            "train", total=steps, epoch=f"{epoch}/{epochs}", stats="", ips=0.0
        )

    def step(self, step: int, loss: float, metrics: dict[str, float], images_per_s: float) -> None:
        stats = format_metrics({"loss": loss, **metrics})
        self.progress.update(self.task, completed=step, stats=stats, ips=images_per_s)

    def epoch_end(self, row: dict[str, Any]) -> None:
        self.progress.console.print(
            f"[bold]Epoch {row['epoch']}/{self.epochs}[/bold]  " + epoch_line(row), soft_wrap=True
        )


def compiling_line(estimate_s: float) -> str:
    from cnnkit.train.warmup import rounded

    return f"Compiling kernels (first run only, about {rounded(estimate_s)} s) ..."


def kernels_compiled_line(seconds: float) -> str:
    return f"Kernels compiled in {seconds:.0f} s; cached for the next runs."


def evaluation_tables(result: dict[str, Any]) -> list[Any]:
    """Overall metrics (with the split's notes), the per-class report and the confusion matrix."""
    names = result["class_names"]
    split = result.get("split", "test")
    head = Table(
        title=f"Evaluation on the {split} split",
        box=box.SIMPLE,
        show_header=False,
        title_justify="left",
    )
    head.add_column(style="bold")
    head.add_column(justify="right")
    head.add_row("checkpoint", str(result["checkpoint"]))
    head.add_row("samples", f"{result['samples']:,}")
    head.add_row("loss", f"{result['loss']:.4f}")
    head.add_row("accuracy", f"{result['accuracy']:.4f}")
    positive = result.get("positive_class")  # a binary task: precision... of class 1
    meaning = f"positive class {positive}" if positive is not None else "macro"
    labels = {n: f"{n} ({meaning})" for n in ("precision", "recall", "f1")}
    labels.update({f"{n}_macro": f"{n} (macro)" for n in ("precision", "recall", "f1")})
    for name, value in result.get("metrics", {}).items():
        if name != "accuracy":
            text = "n/a (one class only)" if value is None else f"{value:.4f}"
            head.add_row(labels.get(name, name), text)

    report = Table(title="Per class", box=box.SIMPLE_HEAVY, title_justify="left")
    for col in ("class", "precision", "recall", "f1", "support"):
        report.add_column(col, justify="left" if col == "class" else "right")
    for row in result["per_class"]["classes"]:
        report.add_row(
            row["class"],
            f"{row['precision']:.4f}",
            f"{row['recall']:.4f}",
            f"{row['f1']:.4f}",
            f"{row['support']:,}",
        )
    for avg in ("macro", "weighted"):
        r = result["per_class"][avg]
        report.add_row(
            f"[italic]{avg} avg",
            f"{r['precision']:.4f}",
            f"{r['recall']:.4f}",
            f"{r['f1']:.4f}",
            f"{result['samples']:,}",
        )

    matrix = Table(
        title="Confusion matrix (rows: true, columns: predicted)",
        box=box.SIMPLE,
        title_justify="left",
    )
    matrix.add_column("")
    for name in names:
        matrix.add_column(name, justify="right")
    for i, name in enumerate(names):
        cells = []
        for j, count in enumerate(result["confusion_matrix"][i]):
            text = f"{count:,}"
            if i == j:
                text = f"[green]{text}"
            elif count:
                text = f"[red]{text}"
            else:
                text = f"[dim]{text}"
            cells.append(text)
        matrix.add_row(f"[bold]{name}", *cells)
    notes = [f"[yellow]Note:[/yellow] {escape(n)}" for n in result.get("notes", ())]
    out = [head, *notes, report, matrix]
    if result.get("most_confused"):
        out.append(most_confused_table(result["most_confused"]))
    return out


def most_confused_table(pairs: list[dict[str, Any]]) -> Table:
    table = Table(title="Most-confused class pairs", box=box.SIMPLE, title_justify="left")
    for col in ("true", "predicted as", "count", "share of true class"):
        table.add_column(col, justify="left" if col in ("true", "predicted as") else "right")
    for p in pairs:
        table.add_row(
            escape(p["true"]),
            escape(p["predicted"]),
            f"{p['count']:,}",
            f"{p['fraction_of_true']:.1%}",
        )
    return table


def common_folder(images: list[str]) -> str:
    """The folder that holds every image ("" when they are spread over unrelated roots)."""
    parents = [os.path.dirname(i) for i in images]
    try:
        common = os.path.commonpath(parents)
    except ValueError:  # absolute and relative paths mixed
        common = os.path.commonpath([os.path.abspath(p) for p in parents])
    return common


def shorten_middle(text: str, width: int) -> str:
    """text in at most width cells, cut in the middle ("a/very…/cat.1001.jpg"): the start
    (a class folder) and the end (the file name) are what tell paths apart."""
    if cell_len(text) <= width:
        return text
    keep = max(width - 1, 2)
    head = keep // 3
    tail = keep - head
    return text[:head] + "…" + text[len(text) - tail :]


def predictions_folder(predictions: list[dict[str, Any]]) -> str:
    """The folder that holds every image read (predictions_table names them relative to it);
    "" when they have no common folder."""
    return common_folder([p["image"] for p in predictions if not p.get("error")] or [""])


def predictions_heading(predictions: list[dict[str, Any]]) -> str | None:
    """ "Images in FOLDER/" above predictions_table (None when they share no folder)."""
    folder = predictions_folder(predictions)
    return f"Images in {escape(os.path.join(folder, ''))}" if folder else None


def predictions_table(predictions: list[dict[str, Any]], width: int | None = None) -> Table:
    """One row per image read, named by its path relative to predictions_folder, shortened
    in the middle to fit `width` (default: the console's) so that rows stay distinguishable.
    Conversion notes go below the table (prediction_notes): inside a narrow name column they
    wrapped into a few words a line."""
    width = width or console.width
    shown = [p for p in predictions if not p.get("error")]
    names = _prediction_names(shown)
    tops = [", ".join(f"{t['class']} {t['probability']:.3f}" for t in p["top"][1:]) for p in shown]
    first = max([len("prediction"), *(cell_len(p["top"][0]["class"]) for p in shown)])
    rest = min(max([len("top-k"), *(cell_len(t) for t in tops)]), 24)  # top-k wraps
    # 13: each cell's padding (2 x 4), the box's edges (2) and column gaps (3)
    budget = max(16, width - first - len("probability") - rest - 13)
    marks = [" (inverted)" if p.get("inverted") else "" for p in shown]
    names = [
        shorten_middle(n, max(8, budget - len(m))) + m for n, m in zip(names, marks, strict=True)
    ]
    table = Table(box=box.SIMPLE_HEAVY)
    longest = max([len("image"), *(cell_len(n) for n in names)])
    table.add_column("image", min_width=min(longest, budget), no_wrap=True)
    table.add_column("prediction", style="bold")
    table.add_column("probability", justify="right")
    table.add_column("top-k")
    for p, name, rest_k in zip(shown, names, tops, strict=True):
        top = p["top"]
        table.add_row(Text(name), top[0]["class"], f"{top[0]['probability']:.4f}", rest_k)
    return table


def _prediction_names(predictions: list[dict[str, Any]]) -> list[str]:
    folder = predictions_folder(predictions)
    return [os.path.relpath(p["image"], folder) if folder else p["image"] for p in predictions]


def prediction_notes(predictions: list[dict[str, Any]]) -> list[str]:
    """One line per distinct conversion note (an RGB photo given to a grayscale model ...),
    with the images it applies to, as named in the table."""
    shown = [p for p in predictions if not p.get("error")]
    grouped: dict[str, list[str]] = {}
    for p, name in zip(shown, _prediction_names(shown), strict=True):
        if p.get("note"):
            grouped.setdefault(p["note"], []).append(name)
    lines = []
    for note, names in grouped.items():
        which = ", ".join(names[:3]) + (f" and {len(names) - 3:,} more" if len(names) > 3 else "")
        lines.append(f"[yellow]Note:[/yellow] {escape(note)} ({escape(which)})")
    return lines


def predict_failures(predictions: list[dict[str, Any]]) -> str:
    """The images predict could not read, each with the reason."""
    failed = [p for p in predictions if p.get("error")]
    lines = [
        f"[bold red]✗ {len(failed)} of {len(predictions)} image{'s' * (len(predictions) != 1)} "
        f"could not be read[/bold red] (the others are predicted above):"
    ]
    lines += [f"  {escape(p['image'])}: {escape(p['error'])}" for p in failed]
    return "\n".join(lines)


def print_serving(info: dict[str, Any]) -> None:
    """`cnnkit serve`'s first lines: the model served and where (uvicorn's lines follow)."""
    metrics = info.get("metrics") or {}
    shown = {k: v for k, v in metrics.items() if k.startswith("val_") and isinstance(v, float)}
    epoch = f", epoch {info['epoch']}" if info.get("epoch") is not None else ""
    scores = f" ({format_metrics(shown)})" if shown else ""
    print_line(
        console,
        f"Serving [bold]{escape(info['name'])}[/bold]: {escape(info['checkpoint'])}{epoch}"
        f"{scores}, {len(info['classes'])} classes",
    )
    url = info["url"]
    print_line(console, f"POST images to {url}/predict (field file); API docs at {url}/docs")
    print_line(console, f"Try: curl -F file=@image.png {url}/predict")


_SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}
_LISTED = 10  # rows shown for a long list (--json has the counts and more examples)


def export_lines(result: dict[str, Any]) -> list[str]:
    """`cnnkit export`: the file written and the verification's two figures."""
    v = result["verification"]
    size = result["bytes"] / 1024
    return [
        f"Wrote [bold]{result['model']}[/bold] (ONNX opset {result['opset']}, {size:,.1f} KiB) "
        f"from {result['checkpoint']}",
        "onnx.checker (full check): passed",
        f"onnxruntime {v['onnxruntime_version']} vs cnnkit on {plural(v['images'], 'image')} "
        f"of the {v['split']} split: argmax agrees on {v['argmax_agreement']:.2%}, largest "
        f"probability difference {v['max_abs_difference']:.2g} (tolerance {v['tolerance']:g})",
        f"Wrote {result['report']}",
    ]


def data_check_renderables(report: dict[str, Any]) -> list[Any]:
    """`cnnkit data check`: class counts, a size histogram, one table per finding, a line per
    piece of information, then a clean / summary line. A few dozen lines for any folder."""
    where = escape(str(report.get("path") or report["input"]))
    out: list[Any] = [
        f"Checked [bold]{report['images']:,}[/bold] images of [bold]{where}[/bold] "
        f"({report['source']}) in {report['seconds']:.1f}s"
    ]
    splits = report["splits"]
    counts = Table(title="Class counts", box=box.SIMPLE_HEAVY, title_justify="left")
    counts.add_column("class")
    for split in splits:
        counts.add_column(split, justify="right")
    for name in report["classes"]:
        cells = []
        for split in splits:
            n = splits[split]["counts"].get(name)
            cells.append("[dim]-" if n is None else f"[red]{n:,}" if n == 0 else f"{n:,}")
        counts.add_row(escape(name), *cells)
    counts.add_row("[italic]total", *(f"{s['images']:,}" for s in splits.values()))
    out.append(counts)
    if report.get("file_checks"):
        out.append(_sizes_renderable(report["sizes"]))
        modes = ", ".join(f"{m['mode']} ({m['count']:,})" for m in report["modes"])
        out.append(f"Modes: {modes or '-'}")
    else:
        out.append(
            "[dim]Arrays: file-level checks (unreadable files, sizes, modes, ignored files) "
            "do not apply.[/dim]"
        )
    for finding in report["findings"]:
        out.extend(_finding_renderables(finding))
    for info in report.get("info", []):
        out.extend(_finding_renderables(info))
    findings = report["findings"]
    notes = len(report.get("info", []))
    also = f" ({notes} note{'s' * (notes != 1)}, information only)" if notes else ""
    if not findings:
        out.append(f"[bold green]✓ Clean: no findings.[/bold green]{also}")
    else:
        tally = Counter(f["severity"] for f in findings)
        colour = "red" if tally["error"] else "yellow"
        parts = [f"{tally[s]} {s}{'s' * (tally[s] != 1)}" for s in _SEVERITY_STYLE if tally[s]]
        out.append(
            f"[bold {colour}]✗ {len(findings)} finding{'s' * (len(findings) != 1)}: "
            f"{', '.join(parts)}.[/bold {colour}]{also}"
        )
    return out


def _sizes_renderable(sizes: dict[str, Any]) -> Any:
    """One line for one size; else a table of the sizes, or of a histogram of the longer side
    when there are many, with counts and example files."""
    if sizes["distinct"] <= 1:
        (only,) = sizes["common"] or [None]
        return "Sizes: -" if only is None else f"Sizes: all {only['width']}×{only['height']}"
    (w0, w1), (h0, h1) = sizes["width"], sizes["height"]
    title = f"Image sizes: {sizes['distinct']:,} (width {w0}–{w1}, height {h0}–{h1})"
    table = Table(title=title, box=box.SIMPLE, title_justify="left")
    examples = {"no_wrap": True}

    def listed(files: list[str], used: int) -> str:  # as many as fit the terminal's width
        room, shown = max(12, console.width - used), []
        for name in files:
            if len(", ".join([*shown, name])) + 3 > room:  # room for ", …"
                break
            shown.append(name)
        text = ", ".join(shown) + (", …" if len(shown) < len(files) else "")
        return escape(text if shown else files[0][: room - 1] + "…")

    if sizes["histogram"]:
        bins = sizes["histogram"]
        largest = max(b["count"] for b in bins)
        table.add_column("longer side", no_wrap=True, min_width=11)
        table.add_column("images", justify="right", no_wrap=True, min_width=6)
        table.add_column("", no_wrap=True, min_width=20)
        table.add_column("e.g.", **examples)
        for b in bins:
            low, high = b["longer_side"]
            label = f"> {low - 1}" if high is None else f"{low}–{high}"
            bar = "█" * max(1, round(20 * b["count"] / largest))
            table.add_row(label, f"{b['count']:,}", bar, listed(b["examples"], 48))
        repeated = [c for c in sizes["common"][:3] if c["count"] > 1]
        if repeated:
            table.caption = "most common: " + ", ".join(
                f"{c['width']}×{c['height']} ({c['count']:,})" for c in repeated
            )
    else:
        table.add_column("width×height", no_wrap=True, min_width=12)
        table.add_column("images", justify="right", no_wrap=True, min_width=6)
        table.add_column("e.g.", **examples)
        for c in sizes["common"]:
            table.add_row(
                f"{c['width']}×{c['height']}", f"{c['count']:,}", listed(c["examples"], 30)
            )
    return table


def _finding_renderables(finding: dict[str, Any]) -> list[Any]:
    style = _SEVERITY_STYLE[finding["severity"]]
    title = f"[{style}]{finding['severity']}[/{style}] {escape(finding['message'])}"
    kind = finding["kind"]

    def table(*columns: str) -> Table:
        t = Table(box=box.SIMPLE)
        for column in columns:
            t.add_column(column)
        return t

    if kind == "class_folders":
        t = table("split", "missing", "extra")
        for d in finding["splits"]:
            t.add_row(d["split"], escape(", ".join(d["missing"])), escape(", ".join(d["extra"])))
    elif kind == "imbalance":
        t = table("split", "largest class", "smallest class", "ratio")
        for d in finding["splits"]:
            t.add_row(
                d["split"],
                f"{escape(d['largest'])} ({d['largest_count']:,})",
                f"{escape(d['smallest'])} ({d['smallest_count']:,})",
                f"{d['ratio']:g}×",
            )
    elif kind == "unreadable":
        t = table("file", "error")
        for d in finding["files"][:_LISTED]:
            t.add_row(escape(d["file"]), escape(d["error"]))
        if len(finding["files"]) > _LISTED:
            t.caption = f"first {_LISTED} of {len(finding['files']):,} (--json lists all)"
    elif kind in ("leakage", "duplicates"):
        t = table("image", "class", "identical to", "class")
        for d in finding["pairs"][:_LISTED]:
            other = escape(d["b_class"])
            other = other if d["b_class"] == d["a_class"] else f"[red]{other}"
            t.add_row(escape(d["a"]), escape(d["a_class"]), escape(d["b"]), other)
        if finding["count"] > min(_LISTED, len(finding["pairs"])):
            shown = min(_LISTED, len(finding["pairs"]))
            t.caption = f"first {shown} of {finding['count']:,} pairs"
    elif kind == "empty_classes":
        t = table("split", "class")
        for d in finding["empty"]:
            t.add_row(d["split"], escape(d["class"]))
    elif kind == "ignored" and finding["examples"]:
        return [title + escape(" (e.g. " + ", ".join(finding["examples"][:3]) + ")")]
    else:  # tiny classes, mixed sizes and modes: the message says it all
        return [title]
    return [title, t]


# -- progress for logs, run lists, run comparison ------------------------------------------


class PlainReporter:
    """For a non-terminal (CI, a pipe, a log file): plain lines without control characters,
    one every `every_steps` steps and one per epoch, flushed as they are written."""

    def __init__(self, every_steps: int = 50, file: Any = None):
        self.every_steps = max(1, every_steps)
        self.file = file
        self.epoch = self.epochs = self.steps = 0

    def __enter__(self) -> PlainReporter:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def _print(self, text: str) -> None:
        try:
            print(text, file=self.file or sys.stdout, flush=True)
        except BrokenPipeError:  # `cnnkit train ... | head`: stop as interrupted, saved
            output_closed()

    def kernels(self, phase: str, seconds: float) -> None:
        """A line when Numba compiles, one when it is done; nothing with a warm cache."""
        if phase == "compiling":
            self._print(compiling_line(seconds))
        elif phase == "compiled":
            self._print(kernels_compiled_line(seconds))

    def epoch_begin(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps

    def step(self, step: int, loss: float, metrics: dict[str, float], images_per_s: float) -> None:
        if step % self.every_steps == 0 and step != self.steps:
            stats = format_metrics({"loss": loss, **metrics})
            self._print(
                f"epoch {self.epoch}/{self.epochs} step {step}/{self.steps}  {stats}  "
                f"{images_per_s:,.0f} img/s"
            )

    def epoch_end(self, row: dict[str, Any]) -> None:
        self._print(f"Epoch {row['epoch']}/{self.epochs}  {epoch_line(row)}")


class QuietReporter(PlainReporter):
    """--quiet: no progress at all."""

    def kernels(self, phase: str, seconds: float) -> None:
        pass

    def step(self, step: int, loss: float, metrics: dict[str, float], images_per_s: float) -> None:
        pass

    def epoch_end(self, row: dict[str, Any]) -> None:
        pass


def epoch_line(row: dict[str, Any]) -> str:
    """train metrics, val_ metrics, images/s and seconds of an epoch row."""
    values = {
        k: v
        for k, v in row.items()
        if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    train = {k: v for k, v in values.items() if not k.startswith("val_")}
    val = {k: v for k, v in values.items() if k.startswith("val_")}
    parts = [format_metrics(train)] + ([format_metrics(val)] if val else [])
    parts += [f"{row['images_per_s']:,.0f} img/s", f"{row['seconds']:.1f}s"]
    return "  ".join(parts)


class DecodeBar:
    """A transient Rich bar while a folder's images are decoded the first time; in a pipe one
    plain line for the whole load (no bar, no control characters)."""

    def __init__(self, out: Console):
        self.out = out
        self.progress: Progress | None = None
        self.task = None
        self.said = False

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.out.is_terminal:
            if not self.said:
                self.out.print("Decoding images (first run only; later runs read the cache) ...")
                self.said = True
            return
        if done == 0:
            self.progress = Progress(
                TextColumn(f"Decoding {escape(label)}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.out,
                transient=True,
            )
            self.task = self.progress.add_task("decode", total=total)
            self.progress.start()  # inside train's live display: Rich 14 nests them
        elif self.progress is not None:
            self.progress.update(self.task, completed=done)
        if done >= total and self.progress is not None:
            self.progress.stop()
            self.progress = None


def load_progress(quiet: bool = False) -> Any:
    """For loading an image folder: its "Found N images belonging to K classes" lines and a
    decoding bar (DecodeBar); nothing with --quiet."""
    from cnnkit.data.folder import LoadProgress

    if quiet:
        return LoadProgress()
    return LoadProgress(found=lambda text: console.print(escape(text)), decoding=DecodeBar(console))


def make_reporter(quiet: bool = False, every_steps: int = 50) -> Any:
    """The live Rich progress bar in a terminal; plain lines elsewhere; nothing with --quiet."""
    if quiet:
        return QuietReporter()
    if console.is_terminal:
        return RichReporter()
    return PlainReporter(every_steps)


def _num(value: Any, fmt: str = "{:.4f}") -> str:
    return "–" if value is None else fmt.format(value)


_STATE_STYLE = {"finished": "green", "interrupted": "yellow", "failed": "red", "running": "cyan"}


def runs_table(runs: list[dict[str, Any]], root: str = "") -> Table:
    """`cnnkit runs`: one row per run, newest first."""
    table = Table(
        title=f"Runs in {escape(root)}" if root else None,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    rows = []
    for r in runs:
        planned = r["epochs_planned"] if r["epochs_planned"] is not None else "?"
        started = (r["started"] or "–").replace("T", " ")[5:16]  # 11-22 01:54
        best = _num(r["best_val_accuracy"])
        if r["best_epoch"] is not None:
            best += f" ({r['best_epoch']})"
        rows.append(
            (
                escape(r["name"]),
                started,
                escape(r["dataset"]),
                f"{r['epochs_done']}/{planned}",
                best,
                _num(r["test_accuracy"]),
                _num(r["images_per_s"], "{:,.0f}"),
                r["state"],
            )
        )
    headers = ("run", "started", "data", "epochs", "best val acc", "test acc", "img/s", "state")
    widths = [max([len(col), *(len(row[i]) for row in rows)]) for i, col in enumerate(headers)]
    # in a narrow terminal (or a pipe: 80 columns) only the run and data names shrink, with an
    # ellipsis; the figures and the state are never cut (Rich would drop whole columns)
    spare = console.width - 2 * (len(headers) - 1) - sum(widths) + widths[0] + widths[2]
    if spare < widths[0] + widths[2]:
        widths[0] = max(6, spare - min(widths[2], max(6, spare // 3)))
        widths[2] = max(3, spare - widths[0])
    for i, col in enumerate(headers):
        justify = "right" if i in (3, 4, 5, 6) else "left"
        table.add_column(col, justify=justify, no_wrap=True, width=widths[i], overflow="ellipsis")
    table.caption = "started: month-day hour:minute UTC; best val acc: its epoch in brackets"
    table.caption_justify = "left"
    for row in rows:
        style = _STATE_STYLE.get(row[-1], "dim")
        table.add_row(f"[bold]{row[0]}", *row[1:-1], f"[{style}]{row[-1]}[/{style}]")
    if not runs:
        table.caption = "no run directories found"
    return table


def _value(value: Any) -> str:
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if value is None:
        return "–"
    return escape(str(value))


def compare_renderables(result: dict[str, Any]) -> list[Any]:
    """`cnnkit compare A B`: the spec keys that differ side by side, then the metrics with the
    better value marked (★, green)."""
    a, b = result["a"], result["b"]
    spec = Table(
        title=f"Spec: {plural(len(result['spec_diff']), 'key')} differ"
        f"{'s' * (len(result['spec_diff']) == 1)} ({result['spec_same']} the same)",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    spec.add_column("key")
    spec.add_column(f"A: {escape(a['name'])}")
    spec.add_column(f"B: {escape(b['name'])}")
    for row in result["spec_diff"]:
        spec.add_row(escape(row["key"]), _value(row["a"]), _value(row["b"]))
    metrics = Table(
        title="Metrics (★ the better value)", box=box.SIMPLE_HEAVY, title_justify="left"
    )
    metrics.add_column("metric")
    metrics.add_column(f"A: {escape(a['name'])}", justify="right")
    metrics.add_column(f"B: {escape(b['name'])}", justify="right")
    for row in result["metrics"]:
        cells = []
        for side in ("a", "b"):
            text = _value(row[side])
            cells.append(f"[bold green]★ {text}" if row["better"] == side else text)
        metrics.add_row(escape(row["metric"]), *cells)
    return [spec, metrics]


def print_trained(run_dir: Any, spec: Any) -> None:
    """The closing lines of `cnnkit train`: best checkpoint, run directory, next command."""
    monitor = spec.callbacks.checkpoint.monitor  # what chose best.npz
    best = read_checkpoint_sidecar(RunDir(run_dir).checkpoint("best"), required=True)
    console.print(
        f"Done. Best {monitor} {best['metrics'][monitor]:.4f} at epoch {best['epoch']} "
        "(checkpoints/best.npz).\n"
        f"Run directory: [bold]{escape(str(run_dir))}[/bold] (report.md, curves.png)\n"
        f"Next: cnnkit evaluate {escape(str(run_dir))}",
        soft_wrap=True,  # paths and commands whole, to copy (the terminal wraps them)
    )


def print_interrupted(stop: Any) -> None:
    """After SIGINT/SIGTERM: what was saved and the exact command that continues."""
    import shlex

    name = {2: "Ctrl-C (SIGINT)", 13: "the output pipe closing (SIGPIPE)", 15: "SIGTERM"}.get(
        stop.signum, f"signal {stop.signum}"
    )
    where = (
        f"epoch {stop.epoch}, after step {stop.step}/{stop.steps}"
        if stop.step
        else f"the end of epoch {stop.epoch - 1}"
    )
    run = shlex.quote(str(stop.run_dir))
    command = f"cnnkit train --resume {run}"
    if stop.workers > 1:  # data-parallel: resumed by as many workers
        command += f" --workers {stop.workers}"
    text = (
        f"[yellow]Interrupted by {name}[/yellow] at {where}. Saved "
        f"{escape(str(stop.run_dir))}/checkpoints/last.npz with the optimizer, schedule, "
        "random-stream and epoch state; metrics.csv holds the finished epochs.\n"
        f"Resume exactly where it stopped with:\n  [bold]{escape(command)}[/bold]"
    )
    if not RunDir(stop.run_dir).checkpoint("best").weights.is_file():  # no epoch has finished
        text += (
            "\nNo epoch has finished, so there is no best.npz yet: evaluate or predict with "
            f"these weights using --checkpoint last, e.g.\n  [bold]cnnkit evaluate "
            f"{escape(run)} --checkpoint last[/bold]"
        )
    error_console.print(text, soft_wrap=True)


def print_reproduction(result: Any) -> None:
    epochs = result.epochs
    if not epochs:
        console.print(
            f"[red]Nothing compared:[/red] {escape(str(result.original))} and "
            f"{escape(str(result.run_dir))} have no finished epoch in common.",
            soft_wrap=True,
        )
        return
    span = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"
    weights = {
        True: "final weights identical",
        False: "[red]final weights differ[/red]",
        None: "final weights not compared (different epochs)",
    }[result.weights]
    if result.match:
        console.print(
            f"[bold green]Reproduced bit for bit:[/bold green] {escape(str(result.run_dir))} "
            f"matches {escape(str(result.original))}: metrics of {span} identical at full "
            f"precision (seconds aside), {weights}.",
            soft_wrap=True,
        )
        return
    table = Table(title="Differences", box=box.SIMPLE_HEAVY, title_justify="left")
    for column in ("epoch", "metric", "original", "reproduced"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for epoch, key, a, b in result.differences[:30]:
        table.add_row(str(epoch), key, repr(a), repr(b))
    console.print(table)
    console.print(
        f"[bold red]Not reproduced:[/bold red] {plural(len(result.differences), 'value')} "
        f"differ{'s' * (len(result.differences) == 1)} over "
        f"{span}; {weights}. Same machine and thread count (NUMBA_NUM_THREADS) are needed "
        "for bit-for-bit results.",
        soft_wrap=True,
    )


def bench_progress(text: str) -> None:
    error_console.print(f"[dim]bench: {escape(text)}[/dim]")


def _guard_line(check: dict[str, Any]) -> str:
    """The correctness guard's verdict against one peer, in one sentence."""
    peer = check.get("peer", "torch")
    label = check.get("peer_label", "PyTorch")
    mine, theirs = check["cnnkit"], check[peer]
    guard = (
        f"Correctness guard against the float64 {label} twin: cnnkit within "
        f"{check['tolerance']:.0e}"
    )
    if mine["max"] > check["tolerance"]:  # passed as no worse than the peer's float32
        guard += (
            f", or as close as {label} float32 ({mine['worst']}: {mine['max']:.1e}, "
            "ill-conditioned)"
        )
    if check.get("first_batch"):
        guard += (
            " on a second batch (the first refused: a near-tie that float32 and float64 break"
            f" differently, as a max-pooling window within rounding; {check['first_batch']})"
        )
    if theirs["ok"]:
        return guard + f", {label} float32 too"
    return guard + (
        f"; [yellow]{label} float32 is not[/yellow] ({theirs['worst']}: "
        f"{theirs['max']:.1e}), its own rounding: the benchmark ran"
    )


def _bench_peers(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, figures) of each peer the bench ran against (--vs torch,keras), in order."""
    return [(name, result[name]) for name in ("torch", "keras") if result.get(name)]


def bench_renderables(result: dict[str, Any]) -> list[Any]:
    """`cnnkit bench`: throughput table (with each peer's figures and the ratios under --vs),
    then the per-layer times, slowest first, with their GFLOP/s and share of the measured
    peak."""
    peers = _bench_peers(result)
    title = (
        f"{result['spec']}: batch {result['batch_size']}, {result['threads']} threads, "
        f"{plural(result['rounds'], 'round')} of {plural(result['steps'], 'batch')} (medians)"
    )
    if peers:
        versions = ", ".join(f"{p.get('label', 'PyTorch')} {p['version']}" for _, p in peers)
        title += f"; {versions}, alternately in the same process"
    # title and notes as lines of their own: they wrap at the terminal's width, not the table's
    table = Table(box=box.SIMPLE_HEAVY)
    table.add_column("")
    table.add_column("cnnkit images/s", justify="right")
    table.add_column("GFLOP/s", justify="right")
    for _, peer in peers:
        label = peer.get("label", "PyTorch")
        table.add_column(f"{label} images/s", justify="right")
        table.add_column(f"cnnkit / {label}", justify="right")
    for kind, label in (("train", "training"), ("infer", "inference")):
        row = [
            label,
            f"{result[f'{kind}_images_per_s']:,.0f}",
            f"{result[f'{kind}_gflops']:.1f}",
        ]
        for _, peer in peers:
            row += [f"{peer[f'{kind}_images_per_s']:,.0f}", _ratio(peer[f"{kind}_ratio"])]
        table.add_row(*row)
    notes = []
    if result.get("peak_memory_mb") is not None:
        notes.append(f"Peak memory (resident): {result['peak_memory_mb']:,.0f} MB")
    if result.get("step_alloc_mb") is not None:
        notes.append(
            f"Allocated during one training step (numpy, peak): {result['step_alloc_mb']:.1f} MB"
        )
    peak = result.get("peak_gflops")
    if peak is not None:
        notes.append(
            f"FP32 peak, measured (FMA microkernel, {plural(result['threads'], 'thread')}): "
            f"{peak:.1f} GFLOP/s; each layer's GFLOP/s below is shown as a share of it"
        )
    for name, peer in peers:
        notes.append(_guard_line(peer["check"]))
        ratios = ", ".join(
            f"{r[f'{name}_train_ratio']:.2f}/{r[f'{name}_infer_ratio']:.2f}"
            for r in result["rounds_detail"]
        )
        label = peer.get("label", "PyTorch")
        notes.append(f"cnnkit / {label} per round (train/inference): {ratios}")
        chosen = (peer.get("setup") or {}).get("chosen")
        if chosen:
            notes.append(f"{label} timed as {chosen['train']}; {chosen['infer']}")
    if len(peers) > 1 and result.get("vs_faster"):
        faster = result["vs_faster"]
        notes.append(
            f"cnnkit / the faster peer (per round, median): training "
            f"{_ratio(faster['train_ratio'])}, inference {_ratio(faster['infer_ratio'])}"
        )

    checks = [_bench_check_table(peer["check"]) for _, peer in peers]
    notes_text = Text.from_markup("\n".join(notes))
    return [Text(title), table, notes_text, *checks, _bench_layer_layouts(result)]


def _bench_layer_layouts(result: dict[str, Any]) -> Fits:
    """The per-layer figures: one table with times and GFLOP/s where it fits, else the
    times and the GFLOP/s as two tables, else both with names on two lines."""
    if result.get("peak_gflops") is None:  # a result from before the peak was measured
        return Fits(
            _bench_layer_table(result, False, False), _bench_layer_table(result, True, False)
        )
    return Fits(
        _bench_layer_table(result, False, True),
        Group(_bench_layer_table(result, False, False), _bench_rate_table(result, False)),
        Group(_bench_layer_table(result, True, False), _bench_rate_table(result, True)),
    )


def _bench_layer_table(result: dict[str, Any], stacked: bool, rates: bool) -> Table:
    """Per-layer times, slowest first, with the GFLOP/s columns when `rates`."""
    layers = Table(
        title="Per layer, one training step (ms), slowest first",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    columns = ["Layer (type)", "forward", "backward", "total"]
    if rates:
        columns += ["forward GFLOP/s (peak)", "backward GFLOP/s (peak)"]
    for name in columns:
        layers.add_column(name, justify="left" if name.startswith("Layer") else "right")
    sep = "\n" if stacked else " "
    for row in result["layers"]:
        cells = [
            escape(f"{row['name']}{sep}({row['type']})"),
            f"{row['forward_ms']:.2f}",
            f"{row['backward_ms']:.2f}",
            f"{row['forward_ms'] + row['backward_ms']:.2f}",
        ]
        if rates:
            cells += [_rate(row, "forward", " "), _rate(row, "backward", " ")]
        layers.add_row(*cells)
    return layers


def _bench_rate_table(result: dict[str, Any], stacked: bool) -> Table:
    """The layers with multiply-adds: GFLOP/s and share of the peak, forward and backward
    (a table of its own where one table with the times would not fit)."""
    layers = Table(
        title="Per layer GFLOP/s (share of the measured peak)",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    for name in ("Layer (type)", "forward", "backward"):
        layers.add_column(name, justify="left" if name.startswith("Layer") else "right")
    sep = "\n" if stacked else " "
    for row in result["layers"]:
        if row.get("forward_gflops") is not None or row.get("backward_gflops") is not None:
            layers.add_row(
                escape(f"{row['name']}{sep}({row['type']})"),
                _rate(row, "forward", sep),
                _rate(row, "backward", sep),
            )
    return layers


def _rate(row: dict[str, Any], kind: str, sep: str) -> str:
    """A layer's forward or backward GFLOP/s and its share of the peak, "95.1 (52%)", the
    share green from 50% (the bar of issue 17); "-" for a layer without multiply-adds."""
    gflops = row.get(f"{kind}_gflops")
    if gflops is None:
        return "-"
    share = row[f"{kind}_peak_share"]
    style = "green" if share >= 0.5 else "yellow" if share >= 0.25 else "default"
    return f"{gflops:.1f}{sep}[{style}]({share:.0%})[/{style}]"


def _ratio(ratio: float) -> str:
    style = "green" if ratio >= 1 else ("yellow" if ratio >= 0.5 else "red")
    return f"[{style}]{ratio:.2f}×[/{style}]"


def _bench_check_table(check: dict[str, Any]) -> Table:
    """Each side's error against the float64 reference, per array; over the tolerance in
    yellow (only the peer's can be: cnnkit over it stops the benchmark)."""
    peer, label = check.get("peer", "torch"), check.get("peer_label", "PyTorch")
    table = Table(
        title=f"Error vs a float64 reference (tolerance {check['tolerance']:.0e})",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
        caption=f"Per array: max |x - ref| / max |ref|; ref: the {label} twin in float64, "
        "same weights, same batch."
        + ("" if check["cnnkit"]["gradients"] else " Dropout: loss and gradients not compared."),
        caption_justify="left",
    )
    for name in ("", "cnnkit", f"{label} float32"):
        table.add_column(name, justify="right" if name else "left")

    def cell(value: float | None) -> str:
        if value is None:
            return "-"
        text = f"{value:.1e}"
        return text if value <= check["tolerance"] else f"[yellow]{text}[/yellow]"

    ours, theirs = check["cnnkit"], check[peer]
    table.add_row("output (logits)", cell(ours["output"]), cell(theirs["output"]))
    table.add_row("loss", cell(ours["loss"]), cell(theirs["loss"]))
    for key, value in ours["gradients"].items():
        table.add_row(f"gradient {key}", cell(value), cell(theirs["gradients"][key]))
    return table
