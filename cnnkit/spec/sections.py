"""The typed, frozen sections of a resolved spec.

Validation (cnnkit.spec.config) checks the YAML against the option tables and hands the
resolved values to these classes; from then on a spec is read by attribute
(`spec.train.epochs`) and never changed: what differs (a resumed run's epochs, a preview's
data) is a new spec, made with dataclasses.replace. Each field is named exactly as its YAML key,
and `to_dict` gives back the resolved YAML mapping, key for key, so config.yaml is written
as before. Lists become tuples and mappings read-only (MappingProxyType), all the way down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from cnnkit.data.sources import SOURCES
from cnnkit.nn.layers.base import Layer

# data options that only some sources take (SourceInfo.options); the others leave them out
# of config.yaml, so it shows only what applies
SOURCE_SPECIFIC = (
    "num_classes",
    "target_size",
    "color_mode",
    "class_mode",
    "interpolation",
    "skip_bad_images",
)


def freeze(value: Any) -> Any:
    """Lists as tuples and mappings as read-only mappings, recursively."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain YAML value of a frozen one: tuples as lists, mappings as dicts."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


class Section:
    """A frozen dataclass of options: made from a resolved mapping, written back as one."""

    @classmethod
    def of(cls, resolved: Mapping[str, Any]):
        return cls(**{f.name: freeze(resolved.get(f.name)) for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: thaw(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class DataSection(Section):
    source: str
    path: str | None
    validation: str
    validation_split: float | None
    rescale: float
    max_train_samples: int | None
    max_test_samples: int | None
    classes: tuple[int, ...] | tuple[str, ...] | None
    # source-specific (None when the source does not take them: see SOURCE_SPECIFIC)
    num_classes: int | None = None
    target_size: tuple[int, int] | None = None
    color_mode: str | None = None
    class_mode: str | None = None
    interpolation: str | None = None
    skip_bad_images: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        taken = SOURCES[self.source].options
        return {
            key: value
            for key, value in Section.to_dict(self).items()
            if key not in SOURCE_SPECIFIC or key in taken
        }


@dataclass(frozen=True, slots=True)
class ModelSection(Section):
    input_shape: tuple[int, int, int]
    # the shape-checked layers (never built: a model makes fresh ones from their configs)
    layers: tuple[Layer, ...]
    weights: str | None = None  # initial weights: a checkpoint or a run directory

    def to_dict(self) -> dict[str, Any]:
        """input_shape and the layers' full configs (weights only start a run: not written)."""
        return {
            "input_shape": list(self.input_shape),
            "layers": [{layer.keras_name: layer.get_config()} for layer in self.layers],
        }


@dataclass(frozen=True, slots=True)
class NamedSection(Section):
    """`loss:`, `optimizer:`, `schedule:`: a name from a registry and that entry's options."""

    name: str
    options: Mapping[str, Any]

    @classmethod
    def of(cls, resolved: Mapping[str, Any]):
        options = {k: v for k, v in resolved.items() if k != "name"}
        return cls(resolved["name"], freeze(options))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **thaw(self.options)}


@dataclass(frozen=True, slots=True)
class LossSection(NamedSection):
    pass


@dataclass(frozen=True, slots=True)
class OptimizerSection(NamedSection):
    pass


@dataclass(frozen=True, slots=True)
class ScheduleSection(NamedSection):
    pass


@dataclass(frozen=True, slots=True)
class TrainSection(Section):
    epochs: int
    batch_size: int
    shuffle: bool
    eval_batch_size: int
    save_every_steps: int | None  # also checkpoint last.npz every N steps


@dataclass(frozen=True, slots=True)
class EarlyStoppingSection(Section):
    monitor: str
    min_delta: float
    patience: int
    mode: str
    restore_best_weights: bool
    start_from_epoch: int


@dataclass(frozen=True, slots=True)
class CheckpointSection(Section):
    monitor: str
    mode: str


@dataclass(frozen=True, slots=True)
class CallbacksSection(Section):
    checkpoint: CheckpointSection  # always there: it picks best.npz
    early_stopping: EarlyStoppingSection | None = None  # only when written

    @classmethod
    def of(cls, resolved: Mapping[str, Any]):
        early = resolved.get("early_stopping")
        return cls(
            CheckpointSection.of(resolved["checkpoint"]),
            EarlyStoppingSection.of(early) if early is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {"early_stopping": self.early_stopping.to_dict()} if self.early_stopping else {}
        return {**out, "checkpoint": self.checkpoint.to_dict()}


@dataclass(frozen=True, slots=True)
class AugmentationSection(Section):
    """ImageDataGenerator's options (cnnkit.data.augment), every default filled in."""

    rotation_range: float
    width_shift_range: int | float  # the type is kept: 2 and 2.0 shift differently
    height_shift_range: int | float
    shear_range: float
    zoom_range: tuple[float, float]
    horizontal_flip: bool
    vertical_flip: bool
    fill_mode: str
    cval: float
    brightness_range: tuple[float, float] | None
    channel_shift_range: float
    featurewise_center: bool
    featurewise_std_normalization: bool
    samplewise_center: bool
    samplewise_std_normalization: bool


@dataclass(frozen=True, slots=True)
class LoggingSection(Section):
    tensorboard: bool  # event files in <run>/tensorboard/
    every_steps: int  # TensorBoard step scalars and plain progress lines
