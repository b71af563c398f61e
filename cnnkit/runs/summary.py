"""The model summary table (Keras' model.summary(), with MACs and the memory plan): printed by
`cnnkit summary` and `cnnkit check`, and saved as the run's summary.txt."""

from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from cnnkit.nn.model import INPUT_NAME, SummaryRow


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} GB"


def is_graph(rows: list[SummaryRow]) -> bool:
    """Whether any layer reads another than the one before it (Keras' functional table)."""
    previous = (INPUT_NAME,)
    for row in rows:
        if row.connected_to and tuple(row.connected_to) != previous:
            return True
        previous = (row.name,)
    return False


def summary_table(
    title: str,
    rows: list[SummaryRow],
    totals: dict[str, int],
    memory: Any = None,
    input_shape: str | None = None,
) -> Any:
    """Keras' summary; with a cnnkit.nn.memory.MemoryPlan, per-layer and total memory too.
    A graph gets Keras' functional table: an InputLayer row (input_shape) and the layers each
    layer is connected to.

    Laid out for the width it is printed at (Fits): one row per layer when that fits; in a
    narrower terminal (80 columns) the layer's type goes under its name, then the memory
    columns move to a table of their own (then a graph's MACs column goes, and its inputs
    lose Keras' [0][0]). Names, shapes and figures are never cut."""
    caption = _caption(totals, memory)
    table = _LayersTable(title, rows, memory, input_shape)
    if memory is None:
        return Fits(
            Group(table.render(False, False), caption),
            Group(table.render(True, False), caption),
            Group(table.render(True, False, compact=True), caption),
        )
    return Fits(
        Group(table.render(False, True), caption),
        Group(table.render(True, True), caption),
        Group(table.render(True, False), _memory_table(rows, memory), caption),
        Group(table.render(True, False, compact=True), _memory_table(rows, memory), caption),
    )


def _caption(totals: dict[str, int], memory: Any) -> Text:
    lines = [
        f"Total params: {totals['total']:,} ({human_bytes(totals['bytes'])})",
        f"Trainable params: {totals['trainable']:,}",
        f"Non-trainable params: {totals['non_trainable']:,}",
        f"MACs / image (forward): {totals['macs']:,}",
    ]
    if memory is not None:
        activations = memory.forward_total - memory.input - memory.weights
        lines += [
            f"Memory for a batch of {memory.batch_size:,}, float32 (Forward/Training: what each "
            "layer keeps)",
            f"  forward (inference): {human_bytes(memory.forward_total)}",
            f"    input {human_bytes(memory.input)}, weights {human_bytes(memory.weights)}, "
            f"activations {human_bytes(activations)}",
            f"  training step: {human_bytes(memory.training_total)}",
            f"    activations and their gradients {human_bytes(memory.activations_training)}, "
            f"weight gradients {human_bytes(memory.gradients)},",
            f"    optimizer state {human_bytes(memory.optimizer_state)}, weights "
            f"{human_bytes(memory.weights)}",
        ]
    return Text("\n".join(lines))


class _LayersTable:
    """The table of layers in one of its layouts."""

    def __init__(self, title: str, rows: list[SummaryRow], memory: Any, input_shape: str | None):
        self.title, self.rows, self.memory, self.input_shape = title, rows, memory, input_shape
        self.graph = is_graph(rows)

    def render(self, stacked: bool, with_memory: bool, compact: bool = False) -> Table:
        """stacked: the type under the name; compact (a graph in a narrow terminal): no MACs
        column (the total is in the caption), inputs by name without Keras' [0][0]."""
        table = Table(title=self.title, box=box.SIMPLE_HEAVY, title_justify="left")
        table.add_column("Layer (type)")
        for name in ("Output Shape", "Param #", *([] if compact else ["MACs / image"])):
            table.add_column(name, justify="left" if name == "Output Shape" else "right")
        if self.graph:  # Keras' functional summary
            table.add_column("Connected to")
        if with_memory:
            table.add_column("Forward", justify="right")
            table.add_column("Training", justify="right")
        if self.graph:
            label = f"{INPUT_NAME}\n(InputLayer)" if stacked else f"{INPUT_NAME} (InputLayer)"
            cells = [label, self.input_shape or "?", "0", *([] if compact else ["0"]), "-"]
            table.add_row(*cells, *(["", ""] if with_memory else []))
        for i, row in enumerate(self.rows):
            table.add_row(*self._cells(i, row, stacked, with_memory, compact))
        return table

    def _cells(self, i: int, row: SummaryRow, stacked: bool, with_memory: bool, compact: bool):
        label = f"{row.name}\n({row.type})" if stacked else f"{row.name} ({row.type})"
        cells = [escape(label), row.output_shape, f"{row.params:,}"]
        cells += [] if compact else [f"{row.macs:,}"]
        if self.graph:
            joiner = ",\n" if stacked else ", "
            suffix = "" if compact else "[0][0]"
            cells.append(escape(joiner.join(f"{n}{suffix}" for n in row.connected_to)))
        if with_memory:
            layer = self.memory.layers[i]
            cells += [human_bytes(layer.forward), human_bytes(layer.training)]
        return cells


def _memory_table(rows: list[SummaryRow], memory: Any) -> Table:
    table = Table(
        title=f"Memory per layer, batch of {memory.batch_size}",
        box=box.SIMPLE_HEAVY,
        title_justify="left",
    )
    for name in ("Layer", "Forward", "Training"):
        table.add_column(name, justify="left" if name == "Layer" else "right")
    for row, layer in zip(rows, memory.layers, strict=True):
        table.add_row(row.name, human_bytes(layer.forward), human_bytes(layer.training))
    return table


class Fits:
    """The first of several layouts whose tables fit the width they are printed at, without
    wrapping a cell (else the last): a summary stays whole in an 80-column terminal."""

    def __init__(self, *layouts: Any):
        self.layouts = layouts

    def __rich_console__(self, console: Console, options: Any):
        for layout in self.layouts:
            tables = layout.renderables if isinstance(layout, Group) else [layout]
            wide = options.update_width(10_000)
            natural = [
                Measurement.get(console, wide, t).maximum for t in tables if isinstance(t, Table)
            ]
            if max(natural, default=0) <= options.max_width:
                yield layout
                return
        yield self.layouts[-1]


def render_text(renderable: Any, width: int = 100) -> str:
    """Plain text of a Rich renderable (for summary.txt)."""
    recorder = Console(width=width, record=True, file=io.StringIO())
    recorder.print(renderable)
    return recorder.export_text()
