"""The committed spec reference page is the generated one, and it covers every option."""

from __future__ import annotations

from pathlib import Path

from cnnkit.nn.layers import ALL_LAYERS
from cnnkit.spec.reference import PAGE, REGENERATE, main, spec_reference, type_text
from cnnkit.spec.schema import build_schema

ROOT = Path(__file__).resolve().parents[2]


def test_committed_page_is_the_generated_one():
    committed = (ROOT / PAGE).read_text(encoding="utf-8")
    assert committed == spec_reference(), f"the spec reference is stale: run {REGENERATE}"


def test_every_section_layer_and_option_has_a_row():
    page = spec_reference()
    schema = build_schema()
    for key in schema["properties"]:
        assert f"## `{key}` {{#{key}}}" in page
    for cls in ALL_LAYERS:
        assert f"### `{cls.keras_name}`" in page
        for option in cls.OPTIONS:
            assert f"| `{option}` |" in page, (cls.keras_name, option)
    for option in schema["properties"]["train"]["properties"]:
        assert f"| `{option}` |" in page


def test_value_descriptions():
    assert type_text({"type": "integer", "minimum": 1}) == "integer ≥ 1"
    assert type_text({"type": ["number", "null"], "exclusiveMinimum": 0}) == "number > 0 or null"
    pair = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}
    assert type_text(pair) == "[integer, integer]"
    assert type_text({"enum": ["valid", "same"]}) == "one of `valid`, `same`"
    spelled = {"anyOf": [{"type": "number"}, {"$ref": "#/$defs/number_text"}]}
    assert type_text(spelled) == "number"  # 1/255 and 1_000 are said once, at the top


def test_out_writes_the_page(tmp_path):
    out = tmp_path / "spec.md"
    main(["--out", str(out)])
    assert out.read_text(encoding="utf-8") == spec_reference()
