"""`--set key.path=value`: change one value of a spec from the command line.

An override is applied to the parsed YAML before validation, so it goes through exactly the
same checks as the file (an unknown key suggests the closest one). Paths use the spec's own
YAML paths, as error messages print them: `train.epochs`, `optimizer.learning_rate`,
`model.layers[0].Conv2D.filters`. Values are parsed as YAML, as the spec file is
(cnnkit.options.load_yaml): `3` is an integer, `0.01`, `1e-3` and `.5` numbers, `1/255` a
fraction wherever a number goes, `[5, 5]` a list, `null` nothing, `{name: sgd, momentum: 0.9}`
a mapping.

An error caused by an override names the `--set` argument (with a caret under its value)
instead of a line of the file.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from cnnkit.errors import SpecError
from cnnkit.options import closest, did_you_mean, load_yaml

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
# sections that may be written as a bare name (`loss: mse`): `--set loss.label_smoothing=0.1`
# turns them into {name: mse, label_smoothing: 0.1}
_NAMED_SECTIONS = ("loss", "optimizer", "schedule")


@dataclass
class Override:
    """One change: the YAML path, the parsed value, and how the user wrote it."""

    path: str  # e.g. model.layers[0].Conv2D.filters
    value: Any
    arg: str  # as shown in errors and config.yaml: `--set train.epochs=3`, `--epochs 3`
    value_column: int = 0  # 0-based column of the value within `arg` (the caret goes there)
    created: list[str] = field(default_factory=list)  # paths the override added to the spec

    @property
    def parts(self) -> list[str | int]:
        return split_path(self.path)

    def error(self, message: str, hint: str | None = None, at_value: bool = True) -> SpecError:
        exc = SpecError(message, where=self.arg, hint=hint)
        exc.context = self.excerpt(at_value)
        return exc

    def excerpt(self, at_value: bool = True) -> str:
        """The argument with a caret under its value, or (at_value False) under the last key
        of its path: where an unknown key is."""
        column = self.value_column
        if not at_value:
            key_end = max(self.value_column - 1, 0)  # the '=' before the value
            column = 1 + max(
                self.arg.rfind(".", 0, key_end),
                self.arg.rfind("]", 0, key_end),
                self.arg.find(" "),
            )
        return f"  {self.arg}\n  {' ' * column}^"

    def owns(self, path: str) -> bool:
        """True when an error at `path` is this override's doing: the path it set, a key of
        the value it set, or a section it created."""
        return _within(path, self.path) or any(path == created for created in self.created)

    def changes_inside(self, path: str) -> bool:
        """True when this override set something inside the node at `path`."""
        return self.path != path and _within(self.path, path)


# what an absent `loss:` / `optimizer:` means (Keras' compile() defaults of the tutorials)
SECTION_DEFAULTS = {"loss": "categorical_crossentropy", "optimizer": "adam"}


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "[")


def split_path(path: str) -> list[str | int]:
    """'model.layers[0].Conv2D.filters' -> ['model', 'layers', 0, 'Conv2D', 'filters']."""
    parts: list[str | int] = []
    position = 0
    text = path.strip()
    while position < len(text):
        if text[position] == "." and parts and position + 1 < len(text):
            position += 1
        match = _PART.match(text, position)
        if match is None:
            raise ValueError(f"cannot read the key path at '{text[position:]}'")
        name, index = match.groups()
        parts.append(int(index) if index is not None else name)
        position = match.end()
    if not parts or isinstance(parts[0], int):
        raise ValueError("a key path starts with a top-level key, e.g. train.epochs")
    return parts


def join_parts(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_set(text: str) -> Override:
    """`key.path=value` (the text of one --set) -> Override; the value is parsed as YAML."""
    arg = f"--set {text}"
    key, sep, value_text = text.partition("=")
    if not sep or not key.strip():
        exc = SpecError(
            "expected KEY.PATH=VALUE",
            where=arg,
            hint="Examples: --set train.epochs=3, --set model.layers[0].Conv2D.filters=16, "
            "--set optimizer.learning_rate=0.01",
        )
        exc.context = f"  {arg}\n  {' ' * 6}^"
        raise exc
    override = Override(key.strip(), None, arg, len("--set ") + len(key) + 1)
    try:
        split_path(override.path)
    except ValueError as error:
        raise override.error(f"{error}", at_value=False) from None
    try:
        override.value = load_yaml(value_text) if value_text.strip() else None
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error)
        raise override.error(
            f"the value is not valid YAML: {problem}",
            hint="Quote the whole argument for the shell: --set 'train.epochs=3'; a string "
            "with YAML characters needs YAML quotes inside: --set 'name=\"a: b\"'.",
        ) from None
    return override


def as_overrides(overrides: Mapping[str, Any] | Iterable[str | Override] | None) -> list[Override]:
    """--set strings, Override objects, or a {dotted.path: value} mapping (the Python API)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [
            Override(key, value, f"{key}={_yaml_scalar(value)}", len(key) + 1)
            for key, value in overrides.items()
        ]
    return [o if isinstance(o, Override) else parse_set(o) for o in overrides]


def option_override(path: str, value: Any, flag: str) -> Override:
    """A dedicated CLI option (`--epochs 3`) as an override, so its errors name the option."""
    return Override(path, value, f"{flag} {_yaml_scalar(value)}", len(flag) + 1)


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...")


def apply_overrides(raw: Any, overrides: Sequence[Override]) -> tuple[Any, list[SpecError]]:
    """Set every override's value in the parsed YAML (in order: a later one wins). Returns
    the changed spec and the errors of overrides that could not be applied (the others are)."""
    if not overrides:
        return raw, []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return raw, []  # validation reports the malformed file
    errors = []
    for override in overrides:
        try:
            _apply(raw, override)
        except SpecError as error:
            errors.append(error)
    return raw, errors


def _apply(raw: dict, override: Override) -> None:
    parts = override.parts
    node: Any = raw
    i = 0
    while i < len(parts) - 1:
        part, following = parts[i], parts[i + 1]
        here = join_parts(parts[: i + 1])
        if isinstance(part, str) and isinstance(node, list) and parts[i - 1] == "layers":
            # model.layers.shortcut.filters: the layer named shortcut, written as the path
            # validation reports (model.layers[3].Conv2D.filters), so its errors name the --set
            index = _named_entry(node, part, join_parts(parts[:i]), override)
            parts[i : i + 1] = [index, next(iter(node[index]))]
            override.path = join_parts(parts)
            continue
        if isinstance(part, int):
            parent = join_parts(parts[:i])
            layers, node = node, _list_item(node, part, parent, override)
            if parent == "model.layers":  # `- Conv2D: {...}`: the next part names the layer
                key = _layer_key(node, following, here, override, layers)
                if i + 2 == len(parts):  # --set 'model.layers[0].Conv2D={filters: 8, ...}'
                    node[key] = override.value
                    return
                node, i = node[key], i + 2
                continue
        elif not isinstance(node, dict):
            raise override.error(
                f"{join_parts(parts[:i]) or 'the spec'} is not a mapping, so it has no key "
                f"'{part}'",
                at_value=False,
            )
        else:
            child = node.get(part)
            if child is None and i == 0 and part in SECTION_DEFAULTS:
                # `--set optimizer.learning_rate=0.01` without optimizer: in the file
                child = node[part] = {"name": SECTION_DEFAULTS[part]}
            elif child is None:  # absent or null: the override creates the section
                if isinstance(following, int):
                    raise override.error(f"{here} is not a list in the spec", at_value=False)
                child = node[part] = {}
                override.created.append(here)
            elif isinstance(child, str) and i == 0 and part in _NAMED_SECTIONS:
                child = node[part] = {"name": child}
            elif not isinstance(child, (dict, list)):
                raise override.error(
                    f"{here} is {child!r} in the spec, not a mapping with keys",
                    hint=f"Set the whole value instead: --set '{here}=...'",
                    at_value=False,
                )
            node = child
        i += 1
    last = parts[-1]
    if (
        isinstance(last, str)
        and isinstance(node, list)
        and len(parts) > 1
        and parts[-2] == "layers"
    ):
        last = parts[-1] = _named_entry(node, last, join_parts(parts[:-1]), override)
        override.path = join_parts(parts)
    if isinstance(last, int):
        _list_item(node, last, join_parts(parts[:-1]), override)
        node[last] = override.value
    elif isinstance(node, dict):
        node[last] = override.value
    else:
        raise override.error(
            f"{join_parts(parts[:-1])} is not a mapping, so it has no key '{last}'",
            at_value=False,
        )


def _named_entry(layers: list, name: str, path: str, override: Override) -> int:
    """The position of the layer entry whose options say `name: <name>`."""
    names = []
    for index, entry in enumerate(layers):
        options = (
            next(iter(entry.values())) if isinstance(entry, dict) and len(entry) == 1 else None
        )
        if isinstance(options, dict) and isinstance(options.get("name"), str):
            if options["name"] == name:
                return index
            names.append(options["name"])
    raise override.error(
        f"{path} has no layer named '{name}'",
        hint=f"{did_you_mean(name, names)}Named layers there: {', '.join(names) or '(none)'}"
        f"; or give the position: {path}[2].Conv2D.filters.",
        at_value=False,
    )


def _list_item(node: Any, index: int, path: str, override: Override) -> Any:
    if not isinstance(node, list):
        raise override.error(f"{path} is not a list", at_value=False)
    if index >= len(node):
        raise override.error(
            f"{path} has {len(node)} entries ([0] to [{len(node) - 1}]), not [{index}]",
            at_value=False,
        )
    return node[index]


def _layer_key(entry: Any, name: str | int, path: str, override: Override, layers: list) -> str:
    """model.layers[i].Name...: Name must be that layer's type (in any accepted spelling).
    Returns the entry's own key, its options made a mapping (`- Flatten:` has none)."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise override.error(f"{path} is not a `- LayerName: {{options}}` entry", at_value=False)
    ((key, options),) = entry.items()
    actual = _layer_class(key)
    if actual is None and name == key and isinstance(options, dict | None):
        entry[key] = options or {}  # a block's use (cnnkit.spec.blocks checks its name)
        return key
    if isinstance(name, int) or actual is None or _layer_class(name) is not actual:
        left_out = _layer_class(name) is None and actual is not None and name in actual.OPTIONS
        raise override.error(
            f"{path} is a {key} layer: the path names the layer before its option"
            if left_out
            else f"{path} is a {key} layer, not {name}",
            hint=_layer_hint(key, name, path, override, layers),
            at_value=False,
        )
    if options is None:
        entry[key] = {}
    elif isinstance(options, str) and actual.keras_name == "Activation":
        entry[key] = {"activation": options}  # `- Activation: relu` shorthand
    elif not isinstance(options, dict):
        raise override.error(f"{path}.{key}: the options are not a mapping", at_value=False)
    return key


def _layer_class(name: Any):
    from cnnkit.nn.registry import canonical_layer  # the layer table: only needed here

    return canonical_layer(str(name))


def _layer_names() -> list[str]:
    from cnnkit.nn.registry import layer_names

    return list(layer_names())


def _layer_hint(key: Any, name: str | int, path: str, override: Override, layers: list) -> str:
    """Only paths that exist: the layers of the type named, the options of the layer there."""
    rest = override.path.split(f"{path}.{name}", 1)[-1] if isinstance(name, str) else ""
    option = re.split(r"[.\[]", rest.removeprefix("."), maxsplit=1)[0]
    actual, wanted = _layer_class(key), _layer_class(name)
    hints = []
    if wanted is not None:  # the layers of the type the user named
        same = [
            (f"model.layers[{j}]", next(iter(e)))
            for j, e in enumerate(layers)
            if isinstance(e, dict) and len(e) == 1 and _layer_class(next(iter(e))) is wanted
        ]
        if same:
            where = ", ".join(p for p, _ in same)
            theirs = option if option in wanted.OPTIONS else closest(option, list(wanted.OPTIONS))
            tail = rest.removeprefix(f".{option}") if option else ""
            tail = f".{theirs}{tail}" if option and theirs else ""
            hints.append(
                f"The {wanted.keras_name} layers: {where}; e.g. --set "
                f"{same[0][0]}.{same[0][1]}{tail}=..."
            )
    if actual is not None:
        own = list(actual.OPTIONS)
        looked_for = option if wanted is not None else str(name)  # .filters: the name left out
        misspelt = wanted is None and closest(str(name), _layer_names()) == actual.keras_name
        if looked_for in own or misspelt:
            tail = rest if wanted is not None or misspelt else f".{name}{rest}"
            hints.append(f"For this layer: --set {path}.{key}{tail}=...")
        elif own:
            near = closest(looked_for, own) if looked_for else None
            example = f"--set {path}.{key}.{near or own[0]}=..."
            hints.append(f"{actual.keras_name} options: {', '.join(own)} (e.g. {example})")
    hints.append(
        f"To replace the whole layer: --set '{path}={{{wanted.keras_name if wanted else key}: "
        "{...}}'."
    )
    return "\n".join(hints)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed (`cnnkit train ... --set ...`), shell-quoted: config.yaml keeps it."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["cnnkit", *args])
