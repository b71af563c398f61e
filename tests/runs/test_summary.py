"""The summary table (cnnkit.runs.summary): Keras' functional table for a graph, whole names
at 80 columns."""

from __future__ import annotations

from pathlib import Path

from cnnkit.api import summarize
from cnnkit.runs.summary import is_graph, render_text, summary_table
from cnnkit.spec.config import load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_a_graph_gets_keras_functional_table_and_a_stack_does_not():
    graph = summarize(load_spec(ROOT / "configs" / "resnet20.yaml"))
    stack = summarize(load_spec(ROOT / "configs" / "mnist.yaml"))
    assert is_graph(graph.rows) and not is_graph(stack.rows)
    table = summary_table(graph.title, graph.rows, graph.totals, None, "(None, 32, 32, 3)")
    text = render_text(table, width=200)
    assert "Connected to" in text and "input_layer (InputLayer)" in text
    assert "(None, 32, 32, 3)" in text
    add = next(r for r in graph.rows if r.type == "Add")
    assert f"{add.connected_to[0]}[0][0], {add.connected_to[1]}[0][0]" in text
    assert "Total params: 274,442" in text  # Keras' count of ResNet-20
    plain = render_text(summary_table(stack.title, stack.rows, stack.totals), width=200)
    assert "Connected to" not in plain and "InputLayer" not in plain


def test_at_80_columns_no_name_or_input_is_cut():
    info = summarize(load_spec(ROOT / "configs" / "resnet20.yaml"))
    text = render_text(
        summary_table(info.title, info.rows, info.totals, info.memory, info.input_shape), width=80
    )
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    words = set(text.replace(",", " ").split())
    for row in info.rows:
        assert row.name in words, row.name
        assert all(name in words for name in row.connected_to), row.name
