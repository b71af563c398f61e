"""YAML spec -> validated, fully resolved Spec, before any array is allocated.

Every error names the file, the YAML path (and line) and what would be valid. Shapes are
inferred layer by layer here, so a kernel bigger than its input is reported before training.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from cnnkit.data.augment import resolve_augmentation
from cnnkit.data.sources import SOURCES, count_classes
from cnnkit.errors import SpecError
from cnnkit.nn.build import build_layers, unused_layers
from cnnkit.nn.layers.base import Layer
from cnnkit.nn.metrics import (
    check_metrics,
    head_classes,
    metric_column,
    metric_entries,
    parse_metrics,
)
from cnnkit.nn.monitor import resolve_monitor
from cnnkit.nn.registry import LOSSES, OPTIMIZERS
from cnnkit.nn.schedules import SCHEDULES
from cnnkit.options import (
    Checker,
    ErrorList,
    Option,
    checker,
    compose_yaml,
    did_you_mean,
    join_path,
    load_yaml,
    nullable,
    require_mapping,
    resolve_options,
)
from cnnkit.spec.blocks import expand_blocks
from cnnkit.spec.callbacks import CALLBACK_SECTIONS, DEFAULT_MONITORS
from cnnkit.spec.overrides import SECTION_DEFAULTS, Override, apply_overrides, as_overrides
from cnnkit.spec.sections import (
    SOURCE_SPECIFIC,
    AugmentationSection,
    CallbacksSection,
    DataSection,
    LoggingSection,
    LossSection,
    ModelSection,
    OptimizerSection,
    ScheduleSection,
    TrainSection,
    freeze,
    thaw,
)


@checker({"type": "string", "pattern": "^[^./][^/]*$"})
def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
        raise SpecError(
            f"expected a run name (letters, digits, - and _), found {value!r}", where=path
        )
    return value


@checker({"type": ["string", "null"]})
def _path_or_null(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError(f"expected a folder path, found {value!r}", where=path)
    return value


CLASS_MODES = ("categorical", "sparse", "binary")


@checker(nullable({"type": "string", "enum": list(CLASS_MODES)}))
def _class_mode(value: Any, path: str) -> str | None:
    if value is None:
        return None
    return Option("str", choices=CLASS_MODES).check(value, path)


@checker({"type": ["string", "null"], "minLength": 1})
def _weights_path(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SpecError(
            f"expected the path of a checkpoint (.npz) or a run directory, found {value!r}",
            where=path,
        )
    return value


@checker(
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 1},
        "minItems": 3,
        "maxItems": 3,
        "description": "[height, width, channels]",
    }
)
def _input_shape(value: Any, path: str) -> list[int]:
    ok = (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )
    if not ok:
        raise SpecError(
            f"expected [height, width, channels] with positive integers, found {value!r}",
            where=path,
            hint="Example: input_shape: [28, 28, 1] (channels last, as Keras).",
        )
    channels, height, width = value
    if channels in (1, 3, 4) and min(height, width) > 4:  # a 3-pixel-high image: (C, H, W)
        raise SpecError(
            f"{value} looks channels-first ({channels} channels of {height}x{width}, as "
            "PyTorch writes it); cnnkit is channels-last, as Keras",
            where=path,
            hint=f"Use input_shape: [{height}, {width}, {channels}] ([height, width, channels]).",
        )
    return list(value)


@checker(lambda: nullable(Option("int_or_pair", minimum=1).json_schema()))
def _pair_or_null(value: Any, path: str) -> list[int] | None:
    return None if value is None else Option("int_or_pair", minimum=1).check(value, path)


@checker(
    nullable(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "integer", "minimum": 0}},
                {"type": "array", "items": {"type": "string", "minLength": 1}},
            ],
            "minItems": 2,
            "uniqueItems": True,
            "description": "class indices [3, 8], or class names [cat, dog]",
        }
    )
)
def _class_subset(value: Any, path: str) -> list[int] | list[str] | None:
    """data.classes: [3, 8] keeps those classes of the source, relabelled 0, 1, ... in order;
    [cat, dog] does the same by class name (Keras' flow_from_directory(classes=[...]))."""
    if value is None:
        return None
    indices = isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )
    names = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    ok = (indices or names) and len(value) >= 2 and len(set(value)) == len(value)
    if not ok:
        raise SpecError(
            "expected a list of at least two different class indices, or of class names, "
            f"found {value!r}",
            where=path,
            hint="Example: classes: [3, 8] (a binary task: 3 -> label 0, 8 -> label 1), or "
            "classes: [cat, dog] (class folder names: cat -> 0, dog -> 1). Quote a name that "
            "looks like a number: ['3', '8'].",
        )
    return list(value)


TOP_LEVEL = ("name", "seed", "data", "model", "loss", "optimizer", "metrics", "train")
TOP_LEVEL += ("schedule", "callbacks", "augmentation", "logging")
# the top-level scalars (the sections have their own tables below); name's default is the
# spec file's name
TOP_OPTIONS = {
    "name": Option(_name, default=None, doc="run name: output goes to runs/<name>"),
    "seed": Option("int", default=42, minimum=0, doc="every random choice flows from it"),
}

DATA_OPTIONS = {
    "source": Option("str", choices=tuple(SOURCES), doc="e.g. mnist"),
    "path": Option(_path_or_null, default=None),
    "validation": Option("str", default="test", choices=("test", "split", "none")),
    "validation_split": Option(
        "float_or_null",
        default=None,
        minimum=0.0,
        maximum=1.0,
        exclusive_min=True,
        exclusive_max=True,
    ),
    "rescale": Option("float", default=1.0 / 255.0, minimum=0.0, exclusive_min=True),
    "max_train_samples": Option("int_or_null", default=None, minimum=1),
    "max_test_samples": Option("int_or_null", default=None, minimum=1),
    "classes": Option(_class_subset, default=None),
    # source-specific (SourceInfo.options): synthetic
    "num_classes": Option("int_or_null", default=None, minimum=1),
    # source-specific: folder (Keras flow_from_directory's names and defaults)
    "target_size": Option(_pair_or_null, default=None),
    "color_mode": Option("str", default="rgb", choices=("grayscale", "rgb", "rgba")),
    # null: follow the loss (binary_crossentropy: binary, sparse_...: sparse, else categorical)
    "class_mode": Option(_class_mode, default=None),
    "interpolation": Option("str", default="nearest", choices=("nearest", "bilinear", "bicubic")),
    "skip_bad_images": Option("bool", default=False),
}

MODEL_OPTIONS = {
    "input_shape": Option(_input_shape, default=None),
    "weights": Option(_weights_path, default=None),
    # build_layers checks the list; cnnkit.spec.schema describes it from the layer table
    "layers": Option(Checker(lambda value, path: value, dict), doc="a list of layers"),
    # cnnkit.spec.blocks checks and expands them
    "blocks": Option(
        Checker(lambda value, path: value, dict),
        default=None,
        doc="groups of layers written once, with parameters, used in layers: like a layer",
    ),
}

TRAIN_OPTIONS = {
    "epochs": Option("int", default=10, minimum=1),
    "batch_size": Option("int", default=32, minimum=1),
    "shuffle": Option("bool", default=True),
    "eval_batch_size": Option("int", default=500, minimum=1),
    # also checkpoint last.npz every N optimizer steps (mid-epoch); null: at epoch ends only
    "save_every_steps": Option("int_or_null", default=None, minimum=1),
}

LOGGING_OPTIONS = {
    # TensorBoard event files in <run>/tensorboard/ (needs the tensorboardX package)
    "tensorboard": Option("bool", default=False),
    # step-level logging interval: TensorBoard step scalars and, in a non-terminal, a plain
    # progress line every this many steps
    "every_steps": Option("int", default=50, minimum=1),
}


@dataclass(frozen=True)
class Spec:
    """The resolved spec: typed, frozen sections (cnnkit.spec.sections) that write back as
    config.yaml; never changed once validated (derive another with dataclasses.replace)."""

    name: str
    seed: int
    data: DataSection
    model: ModelSection
    loss: LossSection
    optimizer: OptimizerSection
    metrics: tuple[Any, ...]  # names, or {top_k_accuracy: {k: 5}}: see cnnkit.nn.metrics
    train: TrainSection
    schedule: ScheduleSection | None  # cnnkit.nn.schedules; None: constant learning rate
    callbacks: CallbacksSection  # cnnkit.train.callbacks
    augmentation: AugmentationSection  # cnnkit.data.augment: ImageDataGenerator's options
    logging: LoggingSection  # what the run logs besides metrics.csv (no effect on results)
    file: Path | None = None
    notes: tuple[str, ...] = field(default=(), repr=False)  # shown when training starts
    # --set overrides applied on top of the file, as typed (config.yaml lists them)
    overrides: tuple[str, ...] = field(default=(), repr=False)
    command: str | None = field(default=None, repr=False)  # the command line, for config.yaml

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "data": self.data.to_dict(),
            "model": self.model.to_dict(),
            "loss": self.loss.to_dict(),
            "optimizer": self.optimizer.to_dict(),
            "metrics": thaw(self.metrics),
            "train": self.train.to_dict(),
            "schedule": self.schedule.to_dict() if self.schedule else None,
            "callbacks": self.callbacks.to_dict(),
            "augmentation": self.augmentation.to_dict(),
            "logging": self.logging.to_dict(),
        }

    def to_yaml(self) -> str:
        """The resolved spec; a comment header records the command line and the overrides
        (comments: the file stays a spec that loads as it is)."""
        header = ""
        if self.command:
            header += f"# command: {self.command}\n"
        if self.file is not None and (self.command or self.overrides):
            header += f"# spec file: {self.file}\n"
        for override in self.overrides:
            header += f"# override: {override}\n"
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        return header + body

    def hash(self) -> str:
        """Identity of the model and data (not of training length): checkpoints carry it."""
        d = self.to_dict()
        key = {"model": d["model"], "data": d["data"], "loss": d["loss"]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# -- loading -----------------------------------------------------------------------------


SpecOverrides = Mapping[str, Any] | Sequence[str | Override] | None


def load_spec(path: str | Path, overrides: SpecOverrides = None, check_data: bool = False) -> Spec:
    """Read and validate a YAML spec file.

    overrides: `--set` strings ('train.epochs=3'), Override objects, or a mapping of dotted
    paths to values ({'train.epochs': 3}); see cnnkit.spec.overrides. check_data: also check what
    the data on disk can tell without reading an image (the source's check_files: the data
    path, the validation split folder, data.classes), as `check` and `train` do; evaluate
    and predict need no data folder."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(
            "is a folder, not a spec file",
            where=str(path),
            hint="Give a YAML spec such as configs/mnist.yaml (or a run folder to `summary`).",
        )
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(
            "spec file not found", where=str(path), hint="Ready specs are in configs/."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file: {exc}", where=str(path)) from None
    return parse_spec(text, path, overrides, check_data)


def parse_spec(
    text: str,
    file: Path | None = None,
    overrides: SpecOverrides = None,
    check_data: bool = False,
) -> Spec:
    """Validate spec text. Every error gets the place it comes from: file:line:column and the
    offending line, or the --set argument that caused it. check_data: see load_spec."""
    where = str(file) if file else "spec"
    sets = as_overrides(overrides)
    try:
        root = compose_yaml(text)
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        error = SpecError(
            f"not valid YAML: {problem}",
            where=where,
            hint="A spec is a YAML mapping of `key: value` lines; check the indentation, the "
            "colons and that every [ or { is closed, e.g. data: {source: mnist}.",
        )
        if mark is not None:
            error.where = f"{where}:{mark.line + 1}:{mark.column + 1}"
            error.context = _source_excerpt(text, mark.line + 1, mark.column + 1)
        raise error from None
    if raw is None:
        raise SpecError(
            "the spec file is empty",
            where=where,
            hint="A spec needs at least a data: and a model: section, e.g. start from "
            "configs/mnist_basic.yaml (or run cnnkit init).",
        )
    errors = ErrorList()
    spec = None
    raw, not_applied = apply_overrides(raw, sets)
    for error in not_applied:
        errors.add(error)
    with errors.collect():
        spec = validate(raw, file.stem if file else "run", file, check_data)
    for error in errors.found:
        _locate(error, text, root, where, sets)
    for error, mark in _duplicate_keys(root):
        error.where = f"{where}:{mark.line + 1}:{mark.column + 1} {error.where}"
        error.context = _source_excerpt(text, mark.line + 1, mark.column + 1)
        errors.add(error)
    errors.raise_if_any()
    assert spec is not None
    return replace(spec, overrides=tuple(o.arg for o in sets))


def _locate(exc: SpecError, text: str, root, where: str, sets: list[Override]) -> None:
    """Point an error at its --set argument or at file:line:column (with the line shown)."""
    if any(exc.where == o.arg for o in sets):
        return  # raised while applying an override: already names it
    path = exc.where or ""
    position = _position_of(root, path)
    owner = next((o for o in reversed(sets) if o.owns(path)), None)  # the last one wins
    if owner is not None:  # the value the override set, or inside it
        exc.where = f"{owner.arg} {path}".rstrip()
        about_key = path == owner.path and exc.message.startswith("unknown ")
        exc.context = owner.excerpt(at_value=not about_key)  # an unknown key: under the key
        return
    # an error about a node the override changed inside (a layer whose kernel_size it set):
    # name the override, and show the node's line in the file too
    owner = next((o for o in reversed(sets) if path and o.changes_inside(path)), None)
    if owner is not None:
        exc.where = f"{owner.arg} {path}"
        exc.context = owner.excerpt()
        if position:
            exc.context += f"\n{where}:{position[0]}:{position[1]}\n"
            exc.context += _source_excerpt(text, *position)
        return
    if position:
        exc.where = f"{where}:{position[0]}:{position[1]} {path}".rstrip()
        exc.context = _source_excerpt(text, *position)
    else:
        exc.where = f"{where}: {path}" if path else where
    if sets:
        applied = ", ".join(o.arg for o in sets)
        exc.hint = f"{exc.hint}\n(with {applied})" if exc.hint else f"(with {applied})"


def _duplicate_keys(node) -> list[tuple[SpecError, yaml.Mark]]:
    """YAML keeps the last of two equal keys without a word: a typo nobody sees. Refuse it."""
    found: list[tuple[SpecError, yaml.Mark]] = []
    stack = [(node, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                child = join_path(path, name)
                if name in seen:
                    error = SpecError(
                        f"duplicate key '{name}' (first at line {seen[name]}): YAML would "
                        "silently keep only this one",
                        where=child,
                        hint="Remove one of them, or merge their contents.",
                    )
                    found.append((error, key.start_mark))
                else:
                    seen[name] = key.start_mark.line + 1
                stack.append((value, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return sorted(found, key=lambda item: (item[1].line, item[1].column))


def validate(
    raw: Any, default_name: str = "run", file: Path | None = None, check_data: bool = False
) -> Spec:
    """The resolved Spec, or every error found: sections (and layers) are checked one by one
    and their errors collected; a check that needs a broken section is skipped. check_data:
    also what the data on disk says (the source's check_files), beside the other errors."""
    top = require_mapping(raw, "", "a YAML mapping at the top level (name:, data:, model:, ...)")
    errors = ErrorList()
    _check_top_level_keys(top, errors)
    name = errors.attempt(TOP_OPTIONS["name"].check, top.get("name", default_name), "name")
    seed = errors.attempt(TOP_OPTIONS["seed"].check, top.get("seed", 42), "seed")
    data = None
    if "data" not in top:
        errors.add(
            SpecError("missing the 'data' section", where="", hint="Add data: {source: mnist}.")
        )
    else:
        data = errors.attempt(_data_section, top["data"])
    notes: list[str] = []
    model = _model_section(top, data, errors, notes)
    loss = errors.attempt(_named_section, top.get("loss", SECTION_DEFAULTS["loss"]), LOSSES, "loss")
    optimizer = errors.attempt(
        _optimizer_section, top.get("optimizer", SECTION_DEFAULTS["optimizer"])
    )
    metrics = errors.attempt(parse_metrics, top.get("metrics", ["accuracy"]), "metrics")
    train = errors.attempt(resolve_options, top.get("train"), TRAIN_OPTIONS, "train")
    schedule, callbacks = _monitored_sections(top, data, metrics, notes, errors)
    augmentation = errors.attempt(resolve_augmentation, top.get("augmentation"))
    logging = errors.attempt(resolve_options, top.get("logging"), LOGGING_OPTIONS, "logging")
    if None not in (data, model, loss, metrics):
        class_mode = errors.attempt(check_head, model.layers, loss, metrics, data, file)
        data = replace(data, class_mode=class_mode)
    if check_data and data is not None and SOURCES[data.source].check_files is not None:
        errors.attempt(SOURCES[data.source].check_files, data, file.parent if file else None)
    errors.raise_if_any()
    return Spec(
        name,
        seed,
        data,
        model,
        LossSection.of(loss),
        OptimizerSection.of(optimizer),
        freeze(metrics),
        TrainSection.of(train),
        ScheduleSection.of(schedule) if schedule else None,
        CallbacksSection.of(callbacks),
        AugmentationSection.of(augmentation),
        LoggingSection.of(logging),
        file=file,
        notes=tuple(notes),
    )


def _check_top_level_keys(top: Mapping, errors: ErrorList) -> None:
    for key in top:
        if key not in TOP_LEVEL:
            errors.add(
                SpecError(
                    f"unknown key '{key}'",
                    where=str(key),
                    hint=f"{did_you_mean(key, TOP_LEVEL)}"
                    f"Valid top-level keys: {', '.join(TOP_LEVEL)}.",
                )
            )


def _model_section(
    top: Mapping, data: DataSection | None, errors: ErrorList, notes: list[str]
) -> ModelSection | None:
    """model: its options and shape-checked layers (None when either is broken). Without an
    input shape the layers' options are still checked."""
    if "model" not in top:
        errors.add(
            SpecError("missing the 'model' section", where="", hint="Add model: {layers: [...]}.")
        )
        return None
    model = errors.attempt(resolve_options, top["model"], MODEL_OPTIONS, "model")
    if model is None:
        return None
    given = top.get("data")
    raw_source = given.get("source") if isinstance(given, Mapping) else None
    input_shape = errors.attempt(_model_input_shape, model["input_shape"], data, raw_source)
    expanded = errors.attempt(expand_blocks, model["layers"], model["blocks"])
    if expanded is None:
        return None
    layers = errors.attempt(
        build_layers, expanded.entries, input_shape, expanded.paths, expanded.contexts
    )
    if input_shape is None or layers is None:
        return None
    notes.extend(_unused_layer_notes(layers))
    return ModelSection(tuple(input_shape), tuple(layers), model["weights"])


def _unused_layer_notes(layers: Sequence[Layer]) -> list[str]:
    return [
        f"warning: {layer.where} ({layer.name or layer.keras_name}): no layer takes its "
        "output, so it does not change the model's output and its weights are not trained; "
        "name it in a later layer's inputs, or remove it"
        for layer in unused_layers(layers)
    ]


def _optimizer_section(given: Any) -> dict[str, Any]:
    optimizer = _named_section(given, OPTIMIZERS, "optimizer")
    OPTIMIZERS[optimizer["name"]].check_options(optimizer)
    return optimizer


def _monitored_sections(
    top: Mapping, data: DataSection | None, metrics: list | None, notes: list[str], errors
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """schedule and callbacks, whose monitors name metric columns (skipped without metrics)."""
    if metrics is None:
        return None, {}
    columns = [metric_column(n, o) for n, o in metric_entries(metrics)]
    if data is not None:
        has_validation = data.validation != "none"
    else:
        given = top.get("data") if isinstance(top.get("data"), Mapping) else {}
        has_validation = given.get("validation", "test") != "none"
    schedule = errors.attempt(
        _schedule_section, top.get("schedule"), columns, has_validation, notes
    )
    callbacks = errors.attempt(
        _callbacks_section, top.get("callbacks"), columns, has_validation, notes
    )
    return schedule, callbacks or {}


def _data_section(given: Any) -> DataSection:
    data = resolve_options(given, DATA_OPTIONS, "data")
    if data["validation_split"] is not None:
        if "validation" in given and data["validation"] != "split":
            raise SpecError(
                "both validation and validation_split are set",
                where="data.validation",
                hint="Keep one: validation: test, or validation_split: 0.1.",
            )
        data["validation"] = "split"
    elif data["validation"] == "split":
        raise SpecError(
            "validation: split needs validation_split",
            where="data.validation",
            hint="Add validation_split: 0.1 (the last 10% of the training set).",
        )
    source = SOURCES[data["source"]]
    if data["path"] is None:
        data["path"] = source.default_path
    if data["path"] is None and source.needs_path:
        raise SpecError(
            f"the {data['source']} source needs data.path",
            where="data",
            hint="folder: the folder of class sub-folders; npz: the .npz file.",
        )
    _check_source_options(data, given, source)
    return DataSection.of(data)


def _model_input_shape(
    given: list[int] | None, data: DataSection | None, raw_source: Any = None
) -> list[int] | None:
    """model.input_shape, or the one the data source implies (when the data section is
    broken but names a known source, that source's shape, so the layers are still checked)."""
    if data is None:
        source = SOURCES.get(raw_source) if isinstance(raw_source, str) else None
        fallback = source.input_shape if source is not None else None
        return given or (list(fallback) if fallback else None)
    source = SOURCES[data.source]
    input_shape = given
    if input_shape is None and data.target_size:
        input_shape = [*data.target_size, CHANNELS[data.color_mode]]
    _check_folder_shape(data, input_shape)
    if input_shape is None:
        if source.input_shape is None:
            raise SpecError(
                f"the {data.source} source needs model.input_shape",
                where="model",
                hint="Add input_shape: [height, width, channels], e.g. [227, 227, 3].",
            )
        input_shape = list(source.input_shape)
    if source.input_shape is not None and list(input_shape) != list(source.input_shape):
        raise SpecError(
            f"input_shape {input_shape} does not match the {data.source} images "
            f"{list(source.input_shape)}",
            where="model.input_shape",
            hint=f"Use input_shape: {list(source.input_shape)}.",
        )
    return input_shape


CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}  # of each color_mode


def _check_folder_shape(data: DataSection, input_shape: list[int] | None) -> None:
    """Images are resized to target_size in color_mode: both must agree with input_shape."""
    if data.color_mode is None or input_shape is None:
        return
    channels = CHANNELS[data.color_mode]
    if input_shape[2] != channels:
        raise SpecError(
            f"color_mode {data.color_mode} gives {channels} channel{'s' * (channels != 1)} "
            "but model.input_shape "
            f"has {input_shape[2]}",
            where="data.color_mode",
            hint=f"Use input_shape: [{input_shape[0]}, {input_shape[1]}, {channels}] or change "
            "color_mode (grayscale 1, rgb 3, rgba 4).",
        )
    if data.target_size and list(data.target_size) != list(input_shape[:2]):
        raise SpecError(
            f"target_size {list(data.target_size)} differs from model.input_shape "
            f"{list(input_shape[:2])}",
            where="data.target_size",
            hint="Images are resized to target_size; make it the model's [height, width].",
        )


def _check_source_options(data: dict[str, Any], given: Any, source) -> None:
    """Options that only make sense for some sources, and class subsets within range.

    Options of other sources are refused when given and left out of the resolved spec, so
    config.yaml shows only what applies."""
    for key in SOURCE_SPECIFIC:
        if key in source.options:
            continue
        if key in given:
            owners = [n for n, s in SOURCES.items() if key in s.options]
            raise SpecError(
                f"{key} is an option of the {' and '.join(owners)} source, not of {data['source']}",
                where=f"data.{key}",
            )
        del data[key]
    if "num_classes" in source.options and data["num_classes"] is None:
        raise SpecError(
            f"the {data['source']} source needs num_classes",
            where="data",
            hint="Add num_classes: 10 (any count of at least 1).",
        )
    available = source.num_classes or data.get("num_classes")
    names = list(source.class_names) if source.class_names else None
    for i, c in enumerate(data["classes"] or []):
        if isinstance(c, str) and names is not None and c not in names:
            raise SpecError(
                f"class '{c}' does not exist in {data['source']}",
                where=f"data.classes[{i}]",
                hint=f"{did_you_mean(c, names)}Valid names: {', '.join(names)} "
                f"(or indices 0 to {len(names) - 1}).",
            )
        if isinstance(c, int) and available is not None and c >= available:
            raise SpecError(
                f"class {c} does not exist: {data['source']} has classes 0 to {available - 1}",
                where=f"data.classes[{i}]",
            )


def _named_section(value: Any, table: dict, path: str) -> dict[str, Any]:
    """`loss: name` or `loss: {name: ..., option: ...}` (same for optimizer)."""
    if isinstance(value, str):
        given: dict[str, Any] = {"name": value}
    else:
        given = dict(require_mapping(value, path, f"a {path} name or a mapping with name:"))
    if "name" not in given:
        raise SpecError(f"missing '{path}.name'", where=path, hint=f"Valid: {', '.join(table)}.")
    name = Option("str", choices=tuple(table)).check(given.pop("name"), join_path(path, "name"))
    options = resolve_options(given, table[name].OPTIONS, path, what=f"{name} option")
    return {"name": name, **options}


def _schedule_section(
    value: Any, columns: list[str], has_validation: bool, notes: list[str]
) -> dict[str, Any] | None:
    """`schedule: name` or `schedule: {name: ..., options}` (cnnkit.nn.schedules); null: none."""
    if value is None:
        return None
    section = _named_section(value, SCHEDULES, "schedule")
    SCHEDULES[section["name"]].check_section(section, columns, has_validation, notes)
    return section


def _callbacks_section(
    value: Any, columns: list[str], has_validation: bool, notes: list[str]
) -> dict[str, Any]:
    """`callbacks: {early_stopping: {...}, checkpoint: {...}}` (cnnkit.train.callbacks).

    checkpoint is always there (it picks best.npz); early_stopping only when written (an
    empty `early_stopping:` means Keras' defaults; `early_stopping: false` means off)."""
    given = require_mapping(value, "callbacks", "a mapping of callbacks (early_stopping:, ...)")
    for key in given:
        if key not in CALLBACK_SECTIONS:
            raise SpecError(
                f"unknown callback '{key}'",
                where=join_path("callbacks", str(key)),
                hint=f"{did_you_mean(key, list(CALLBACK_SECTIONS))}"
                f"Valid: {', '.join(CALLBACK_SECTIONS)}.",
            )
    resolved: dict[str, Any] = {}
    for key, options in CALLBACK_SECTIONS.items():
        if key != "checkpoint" and (key not in given or given[key] is False):
            continue
        path = join_path("callbacks", key)
        section = resolve_options(given.get(key), options, path, what=f"{key} option")
        section["monitor"] = resolve_monitor(
            section["monitor"],
            DEFAULT_MONITORS[key],
            section["mode"],
            join_path(path, "monitor"),
            columns,
            has_validation,
            notes,
        )
        resolved[key] = section
    return resolved


def _resolve_class_mode(data: DataSection, loss_name: str, binary_loss: bool) -> str | None:
    """data.class_mode (folder source) says how the labels are meant, as Keras'
    flow_from_directory: binary (0/1, for one sigmoid unit) must go with binary_crossentropy
    and the other way round; categorical and sparse both suit every multi-class loss, because
    cnnkit's losses encode class indices themselves. null resolves from the loss."""
    if "class_mode" not in SOURCES[data.source].options:
        return None
    mode = data.class_mode
    if mode is None:
        if binary_loss:
            return "binary"
        return "sparse" if loss_name.startswith("sparse_") else "categorical"
    if (mode == "binary") != binary_loss:
        wanted = "binary" if binary_loss else "categorical (or sparse)"
        raise SpecError(
            f"data.class_mode {mode} does not fit loss {loss_name}",
            where="data.class_mode",
            hint=f"Use class_mode: {wanted} with {loss_name}, or leave class_mode out: it then "
            "follows the loss. class_mode binary means 0/1 labels for one sigmoid unit and "
            "binary_crossentropy.",
        )
    return mode


def check_head(
    layers: Sequence[Layer],
    loss: Mapping[str, Any],
    metrics: Sequence[Any],
    data: DataSection,
    file: Path | None = None,
) -> str | None:
    """The last layer must fit the loss (its activation and units) and the dataset's class
    count; the chosen metrics must fit the task (auc: two classes). Returns data.class_mode
    resolved from the loss (None for a source without class_mode)."""
    last = layers[-1]
    loss_name = loss["name"]
    loss_cls = LOSSES[loss_name]
    num_classes = count_classes(data, file.parent if file else None)
    if last.output_shape is None or len(last.output_shape) != 1:
        raise SpecError(
            f"the model ends in {last.keras_name} with output shape {last.output_shape}; "
            "a classifier ends in a flat vector of class scores",
            where=last.where,
            hint=f"End with - Dense: {{units: {num_classes}, activation: softmax}}.",
        )
    units = last.output_shape[0]
    activation = last.options.get("activation") or "linear"
    from_logits = loss.get("from_logits", False)
    class_mode = _resolve_class_mode(data, loss_name, loss_cls.binary)
    if loss_cls.binary:
        if units != 1 or (activation != "sigmoid" and not from_logits):
            raise SpecError(
                f"{loss_name} needs one sigmoid unit, the last layer {last.where} has {units} "
                f"unit{'s' if units != 1 else ''} with {activation}",
                where=last.where,
                hint="End with - Dense: {units: 1, activation: sigmoid}, or use "
                "categorical_crossentropy with one softmax unit per class.",
            )
        if num_classes is not None and num_classes != 2:
            raise SpecError(
                f"{loss_name} is for two classes, but {data.source} has {num_classes} classes",
                where="loss",
                hint="Keep two classes with data.classes: [3, 8], or use "
                f"categorical_crossentropy with {num_classes} softmax units.",
            )
    elif num_classes is not None and units != num_classes:
        binary_hint = (
            " (one sigmoid unit needs loss: binary_crossentropy)"
            if units == 1 and num_classes == 2
            else ""
        )
        raise SpecError(
            f"the last layer has {units} outputs but {data.source} has {num_classes} classes",
            where=last.where,
            hint=f"Use units: {num_classes} in the last Dense layer{binary_hint}.",
        )
    _check_logits(loss, loss_cls, activation, last.where)
    check_metrics(metrics, head_classes(units))
    return class_mode


def _check_logits(loss: Mapping[str, Any], loss_cls, activation: str, where: str) -> None:
    """from_logits wants a linear last layer; otherwise the loss names the heads it takes."""
    from_logits = loss.get("from_logits", False)
    if from_logits and activation != "linear":
        raise SpecError(
            f"loss {loss['name']} has from_logits: true but the last layer applies {activation}",
            where="loss.from_logits",
            hint="Use activation: linear on the last layer, or drop from_logits.",
        )
    if not from_logits and activation not in loss_cls.accepted_heads:
        heads = " or ".join(loss_cls.accepted_heads)
        logits_hint = " (or set loss.from_logits: true)" if "from_logits" in loss else ""
        raise SpecError(
            f"{loss['name']} needs a {heads} last layer, but the last layer's activation is "
            f"{activation}",
            where=where,
            hint=f"Add activation: {loss_cls.accepted_heads[0]} to the last layer{logits_hint}.",
        )


# -- error locations ---------------------------------------------------------------------


def _position_of(root, path: str) -> tuple[int, int] | None:
    """1-based (line, column) of a YAML path like 'model.layers[2].Conv2D.filters' in the
    composed file: the key's position, or the deepest parent that exists (a missing key points
    at its section; a missing section at the first line)."""
    if root is None:
        return None
    parts = [p for p in re.split(r"\.|\[(\d+)\]", path) if p]
    node, mark = root, root.start_mark
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if str(kv[0].value) == part), None)
            if match is None:
                break
            mark, node = match[0].start_mark, match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            mark = node.start_mark
        else:
            break
    return mark.line + 1, mark.column + 1


def _source_excerpt(text: str, line: int, column: int) -> str:
    """The offending line of the file with a caret under the column, as compilers show it."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return ""
    gutter = f"{line:>4} | "
    return f"{gutter}{lines[line - 1]}\n{' ' * (len(gutter) + column - 1)}^"
