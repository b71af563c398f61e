"""Built-in data sources: files on disk -> uint8 NHWC arrays, integer labels, class names."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.data.arrays import (
    CIFAR10_CLASSES,
    CIFAR10_TEST,
    CIFAR10_TRAIN,
    extract_cifar10,
    find_cifar10_dir,
    npz_class_names,
    read_cifar10,
    read_npz,
)
from cnnkit.data.download import fetch
from cnnkit.data.folder import (
    DecodedSplit,
    FolderScan,
    LoadProgress,
    decode_split,
    folder_classes,
    scan_folder,
    stratified_split,
)
from cnnkit.data.idx import read_idx
from cnnkit.data.images import ImageOptions
from cnnkit.errors import DataError, SpecError
from cnnkit.options import ErrorList, did_you_mean
from cnnkit.places import datasets_dir, source_checkout
from cnnkit.seeding import random_stream

CHECKOUT = source_checkout()  # None when installed
# MNIST ships inside the package (package data, with its credits in README.md). Specs and run
# directories have always called it datasets/mnist (data.path's default, recorded in every
# config.yaml): that name finds the shipped copy when no such folder is in the working
# directory or beside the spec.
MNIST_DIR = Path(__file__).resolve().parent / "mnist"
SHIPPED = {Path("datasets/mnist"): MNIST_DIR}


@dataclass
class Dataset:
    x_train: np.ndarray  # uint8 (N, H, W, C)
    y_train: np.ndarray  # int64 class indices
    x_test: np.ndarray | None  # None: the source has no test split
    y_test: np.ndarray | None
    class_names: list[str]
    # A validation split that comes with the data (an image folder's val/, or its stratified
    # validation_split); None lets make_splits use data.validation.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)  # unreadable files skipped on request
    notes: list[str] = field(default_factory=list)  # things the user should know (ignored files)
    # the image file of each test / validation sample, when the data came from files
    # (evaluate's misclassified.csv names them)
    files_test: list[str] | None = None
    files_val: list[str] | None = None


def resolve_data_dir(path: str, spec_dir: Path | None) -> Path:
    """A relative data path is looked up in the working directory, next to the spec, in the
    cnnkit checkout (when running from one), then among the data shipped with cnnkit, so
    `datasets/mnist` works from anywhere, installed or in a fresh clone."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    for base in (Path.cwd(), spec_dir, CHECKOUT):
        if base is not None and (base / candidate).is_dir():
            return base / candidate
    if candidate in SHIPPED:
        return SHIPPED[candidate]
    return Path.cwd() / candidate


def download_dir(name: str, complete: Callable[[Path], bool]) -> Path:
    """Where a downloadable dataset is read from and downloaded to: the user data directory
    (cnnkit.places), never the package folder; a checkout's datasets/<name> that already holds
    the data (where earlier versions downloaded it) is used as it is."""
    if CHECKOUT is not None and complete(CHECKOUT / "datasets" / name):
        return CHECKOUT / "datasets" / name
    return datasets_dir() / name


# md5 of each file's decompressed content (see read_idx). MNIST ships in MNIST_DIR.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
}
# upstream .gz files (the download path): md5 of the compressed file, as published
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _idx_dataset(directory: Path, files: dict[str, str], class_names: list[str]) -> Dataset:
    arrays = []
    for name, md5 in files.items():
        path = directory / name
        if not path.is_file():
            raise DataError(
                f"file not found: {path}",
                where=str(directory),
                hint=f"This folder must hold {', '.join(files)}; set data.path to the folder "
                "that holds them.",
            )
        arrays.append(read_idx(path, (md5,)))
    x_train, y_train, x_test, y_test = arrays
    return Dataset(
        x_train=x_train[..., None],
        y_train=y_train.astype(np.int64),
        x_test=x_test[..., None],
        y_test=y_test.astype(np.int64),
        class_names=class_names,
    )


def count_classes(data: Any, spec_dir: Path | None) -> int | None:
    """Classes the model must output for a resolved data section; None when the data is not
    there to count yet (a folder or an npz file is looked at, nothing is decoded)."""
    if data.classes:
        return len(data.classes)
    source = SOURCES[data.source]
    if source.list_classes is not None:
        names = source.list_classes(data, spec_dir)
        return len(names) if names is not None else None
    return source.num_classes or data.num_classes


def spec_dir(spec: Any) -> Path | None:
    return spec.file.parent if spec.file else None


def load_mnist(spec: Any) -> Dataset:
    directory = resolve_data_dir(spec.data.path, spec_dir(spec))
    return _idx_dataset(directory, MNIST_FILES, [str(i) for i in range(10)])


def load_fashion_mnist(spec: Any) -> Dataset:
    """data.path if given; else Debian's dataset-fashion-mnist; else fashion_mnist in the user
    data directory (download_dir), downloading (checksummed) into it when a file is missing."""
    if spec.data.path:
        directory = resolve_data_dir(spec.data.path, spec_dir(spec))
    elif all((FASHION_DEBIAN / name).is_file() for name in FASHION_FILES):
        directory = FASHION_DEBIAN
    else:
        directory = download_dir(
            "fashion_mnist", lambda d: all((d / name).is_file() for name in FASHION_GZ_MD5)
        )
        for name, md5 in FASHION_GZ_MD5.items():
            fetch(FASHION_URL + name, directory / name, md5, f"Fashion-MNIST {name}")
    return _idx_dataset(directory, FASHION_FILES, FASHION_CLASSES)


def load_synthetic(spec: Any) -> Dataset:
    """Seeded random images and labels of any shape and class count: for summaries of models
    with no dataset at hand (AlexNet) and for benchmarks. Nothing is learnable here."""
    options, input_shape = spec.data, tuple(spec.model.input_shape)
    rng = np.random.default_rng(spec.seed)
    n_train = options.max_train_samples or SYNTHETIC_TRAIN
    n_test = options.max_test_samples or SYNTHETIC_TEST
    k = options.num_classes
    return Dataset(
        x_train=rng.integers(0, 256, size=(n_train, *input_shape), dtype=np.uint8),
        y_train=rng.integers(0, k, size=n_train).astype(np.int64),
        x_test=rng.integers(0, 256, size=(n_test, *input_shape), dtype=np.uint8),
        y_test=rng.integers(0, k, size=n_test).astype(np.int64),
        class_names=[str(i) for i in range(k)],
    )


def found_lines(scan: FolderScan, validation_split: float | None) -> list[str]:
    """Keras' "Found N images belonging to K classes." for each split, saying which split.

    validation_split without a val/ folder: the held-out share of every class (as
    stratified_split rounds it), before decoding, so before any unreadable file is skipped."""
    k, lines = len(scan.classes), []
    for split in ("train", "all", "val", "test"):
        if split not in scan.splits:
            continue
        files = scan.splits[split]
        folder = scan.folders[split].name + "/"
        role = {"val": "validation", "test": "test"}.get(split, "training")
        n = len(files)
        if role == "training" and validation_split and "val" not in scan.splits:
            counts = np.bincount([label for _, label in files], minlength=k)
            held = int(sum(round(c * validation_split) for c in counts))
            lines.append(
                f"Found {n - held:,} images belonging to {k} classes for training "
                f"({folder} less validation_split {validation_split:g})."
            )
            lines.append(
                f"Found {held:,} images belonging to {k} classes for validation "
                f"(validation_split {validation_split:g} of {folder})."
            )
            continue
        lines.append(f"Found {n:,} images belonging to {k} classes for {role} ({folder}).")
    return lines


def load_folder(spec: Any, progress: LoadProgress | None = None) -> Dataset:
    """An image folder (Keras flow_from_directory layout), decoded once and cached.

    progress: where the "Found N images" lines and the decoding progress go; without it the
    lines are the dataset's first notes."""
    data = spec.data
    root = resolve_data_dir(data.path, spec_dir(spec))
    scan = scan_folder(root)
    size = ImageOptions.from_spec(spec).size  # target_size, else input_shape: as predict
    skipped: list[str] = []
    found = found_lines(scan, data.validation_split)
    for line in found if progress else ():
        progress.found(line)
    notes = [] if progress else found

    def decode(split: str) -> DecodedSplit | None:
        if split not in scan.splits:
            return None
        label = scan.folders[split].name + "/"
        return decode_split(
            scan.splits[split],
            size,
            data.color_mode,
            data.interpolation,
            data.skip_bad_images,
            skipped,
            progress=partial(progress.decoding, label) if progress else None,
        )

    train, val, test = decode("train") or decode("all"), decode("val"), decode("test")
    if val is None and data.validation_split:
        # no val/ folder: a stratified, seeded validation set, the same every run (Keras'
        # flow_from_directory(subset=...) also splits each class, not the class-sorted list)
        rng = random_stream(spec.seed, "split")
        keep, hold = stratified_split(train.y, data.validation_split, rng)
        files = train.files
        val = DecodedSplit(train.x[hold], train.y[hold], [files[i] for i in hold] if files else [])
        kept = [files[i] for i in keep] if files else []
        train = DecodedSplit(train.x[keep], train.y[keep], kept)
    if scan.ignored:
        notes.append(f"{scan.ignored} hidden or non-image files ignored in {root}")
    return Dataset(
        x_train=train.x,
        y_train=train.y,
        x_test=test.x if test else None,
        y_test=test.y if test else None,
        class_names=scan.classes,
        x_val=val.x if val else None,
        y_val=val.y if val else None,
        skipped=skipped,
        notes=notes,
        files_test=test.files if test and test.files else None,
        files_val=val.files if val and val.files else None,
    )


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"


def load_cifar10(spec: Any) -> Dataset:
    """The binary version: data.path if given; else cifar10 in the user data directory
    (download_dir), downloading and extracting the checksummed archive there when missing."""
    if spec.data.path:
        root = resolve_data_dir(spec.data.path, spec_dir(spec))
    else:
        root = download_dir("cifar10", lambda d: find_cifar10_dir(d) is not None)
        if find_cifar10_dir(root) is None:
            archive = fetch(CIFAR10_URL, root / "cifar-10-binary.tar.gz", CIFAR10_MD5, "CIFAR-10")
            extract_cifar10(archive, root)
    directory = find_cifar10_dir(root) or root
    x_train, y_train, x_test, y_test = read_cifar10(directory)
    return Dataset(x_train, y_train, x_test, y_test, list(CIFAR10_CLASSES))


def load_npz(spec: Any) -> Dataset:
    path = resolve_data_file(spec.data.path, spec_dir(spec))
    arrays = read_npz(path)
    shape = tuple(arrays["x"].shape[1:])
    if shape != tuple(spec.model.input_shape):
        raise DataError(
            f"the images are {list(shape)}, model.input_shape is {list(spec.model.input_shape)}",
            where=str(path),
            hint=f"Use input_shape: {list(shape)}.",
        )
    return Dataset(
        arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"], arrays["class_names"]
    )


def resolve_data_file(path: str, spec_dir: Path | None) -> Path:
    """Like resolve_data_dir, for a file."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    for base in (Path.cwd(), spec_dir, CHECKOUT):
        if base is not None and (base / candidate).is_file():
            return base / candidate
    return Path.cwd() / candidate


SYNTHETIC_TRAIN, SYNTHETIC_TEST = 1024, 256  # images made when max_*_samples is not set


# -- what `cnnkit check` finds on disk without reading an image ---------------------------
# Each raises SpecError(s) at the YAML path (data.path, data.validation, data.classes[i]),
# naming the file or folder and what would be valid.


def _looked_in(path: str, spec_dir: Path | None) -> list[Path]:
    """Where resolve_data_dir / resolve_data_file look for a relative path, in order."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return [candidate]
    places = []
    for base in (Path.cwd(), spec_dir, CHECKOUT):
        if base is not None and (base / candidate).resolve() not in places:
            places.append((base / candidate).resolve())
    return places


def _not_found(
    path: str, spec_dir: Path | None, what: str, want_dir: bool, hint: str | None = None
) -> SpecError:
    places = _looked_in(path, spec_dir)
    hint = hint or _PATH_HINTS[what]
    wrong_kind = next((p for p in places if p.exists()), None)
    if wrong_kind is not None:
        kind = "a file" if want_dir else "a folder"
        return SpecError(f"{wrong_kind} is {kind}, not {what}", where="data.path", hint=hint)
    near = ""
    for place in places:  # a sibling with a close name: datasets/shape for datasets/shapes
        if place.parent.is_dir():
            siblings = [c.name for c in place.parent.iterdir() if not c.name.startswith(".")]
            match = difflib.get_close_matches(place.name, siblings, n=1, cutoff=0.6)
            if match:
                near = f"did you mean '{Path(path).expanduser().parent / match[0]}'? "
                break
    relative = not Path(path).expanduser().is_absolute()
    looked = f" (looked in {', '.join(str(p) for p in places)})" if relative else ""
    return SpecError(f"{what} not found: {path}{looked}", where="data.path", hint=f"{near}{hint}")


# a relative data.path is looked up in the working directory, next to the spec, then in the
# cnnkit checkout (resolve_data_dir)
_PATH_HINTS = {
    "image folder": "data.path is the folder of class sub-folders, or of train/ (val/, test/) "
    "folders that each hold one sub-folder per class.",
    ".npz file": "data.path is an .npz file with arrays x and y (and x_test, y_test, class_names).",
}


def _files_hint(names: list[str]) -> str:
    return f"This folder must hold {', '.join(names)}; set data.path to the folder that holds them."


def _check_files_in(data: Any, where: Path | None, names: list[str], *subdirs: str):
    """data.path is a folder that holds every file of names (or a sub-folder of it does)."""
    root = resolve_data_dir(data.path, where)
    if not root.is_dir():
        raise _not_found(data.path, where, "data folder", True, _files_hint(names))
    found = [root / d for d in subdirs if all((root / d / n).is_file() for n in names)]
    directory = found[0] if found else root
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise SpecError(
            f"{directory} lacks {', '.join(missing)}", where="data.path", hint=_files_hint(names)
        )


def _check_idx_files(files: dict[str, str]) -> Callable[[Any, Path | None], None]:
    def check(data: Any, where: Path | None) -> None:
        if data.path:  # else found or downloaded when loaded
            _check_files_in(data, where, list(files))

    return check


def _check_cifar10_files(data: Any, where: Path | None) -> None:
    if data.path:  # else downloaded into the user data directory when loaded
        _check_files_in(data, where, [*CIFAR10_TRAIN, CIFAR10_TEST], "cifar-10-batches-bin")


def _check_npz_files(data: Any, where: Path | None) -> None:
    path = resolve_data_file(data.path, where)
    if not path.is_file():
        raise _not_found(data.path, where, ".npz file", want_dir=False)
    names = npz_class_names(path)
    if names is not None:
        check_class_list(data.classes, names, f"the classes of {path}")


def _check_folder_files(data: Any, where: Path | None) -> None:
    root = resolve_data_dir(data.path, where)
    if not root.is_dir():
        raise _not_found(data.path, where, "image folder", want_dir=True)
    try:
        scan = scan_folder(root)  # lists folders and file names: decodes nothing
    except DataError as exc:
        raise SpecError(f"{exc.where}: {exc.message}", where="data.path", hint=exc.hint) from None
    errors = ErrorList()
    has_val = "val" in scan.splits or "test" in scan.splits
    if data.validation == "test" and not has_val:
        layout = "only class folders" if "all" in scan.splits else "train/ only"
        errors.add(
            SpecError(
                f"validation: test (the default) needs a test/ (or val/) folder, but "
                f"{scan.root} holds {layout}",
                where="data.validation",
                hint="Add a test/ (or val/) folder with the same class folders as "
                f"{'train/' if 'train' in scan.splits else 'the others'}, or hold out part of "
                "the training images with validation_split: 0.2, or train without "
                "validation: validation: none.",
            )
        )
    with errors.collect():
        train = scan.root / "train" if "train" in scan.splits else scan.root
        check_class_list(data.classes, scan.classes, f"the class folders of {train}")
    errors.raise_if_any()


def check_class_list(classes: list[Any] | None, names: list[str], what: str) -> None:
    """data.classes against the classes the data has: every name or index must exist."""
    errors = ErrorList()
    shown = ", ".join(f"{i} {n}" for i, n in enumerate(names[:12]))
    shown += ", ..." if len(names) > 12 else ""
    for i, c in enumerate(classes or []):
        if isinstance(c, str) and c not in names:
            errors.add(
                SpecError(
                    f"no class '{c}' among {what}",
                    where=f"data.classes[{i}]",
                    hint=f"{did_you_mean(c, names)}Valid names: {', '.join(names[:30])}"
                    f"{', ...' if len(names) > 30 else ''}.",
                )
            )
        elif isinstance(c, int) and c >= len(names):
            errors.add(
                SpecError(
                    f"class {c} does not exist: {what} are {len(names)} ({shown})",
                    where=f"data.classes[{i}]",
                    hint=f"Valid indices: 0 to {len(names) - 1}, or the class names.",
                )
            )
    errors.raise_if_any()


@dataclass(frozen=True)
class SourceInfo:
    """What the spec checker needs to know without loading a single file."""

    load: Callable[[Any], Dataset]  # (resolved Spec) -> Dataset
    input_shape: tuple[int, int, int] | None  # None: any shape, taken from model.input_shape
    num_classes: int | None  # None: set by data.num_classes
    default_path: str | None
    # "dark" when images are light strokes on a dark background (MNIST): predict inverts
    # dark-on-light user images to match. None when there is no such convention.
    background: str | None = None
    # True when the training images are digits centred by mass in a 20x20 box (MNIST's own
    # preprocessing): predict crops and centres a user's drawing the same way.
    centre_digits: bool = False
    needs_path: bool = False  # data.path is required (an image folder, an npz file)
    # data options that only this source understands (others reject them)
    options: tuple[str, ...] = ()
    # (resolved data section, spec folder) -> class names, cheaply (no decoding); None when
    # the data is not there yet (the error then comes when training loads it)
    list_classes: Callable[[Any, Path | None], list[str] | None] | None = None
    reports_progress: bool = False  # load(spec, progress=LoadProgress) says what it found
    # the class names when they are fixed (data.classes may name them: [cat, dog])
    class_names: tuple[str, ...] | None = None
    # (resolved data section, spec folder) -> None, or SpecError at the YAML path: what
    # `cnnkit check` can find on disk without reading an image (config.validate, check_data)
    check_files: Callable[[Any, Path | None], None] | None = None


SOURCES: dict[str, SourceInfo] = {
    "mnist": SourceInfo(
        load_mnist,
        (28, 28, 1),
        10,
        "datasets/mnist",
        background="dark",
        centre_digits=True,
        class_names=tuple(str(i) for i in range(10)),
        check_files=_check_idx_files(MNIST_FILES),
    ),
    "fashion_mnist": SourceInfo(
        load_fashion_mnist,
        (28, 28, 1),
        10,
        None,
        class_names=tuple(FASHION_CLASSES),
        check_files=_check_idx_files(FASHION_FILES),
    ),
    "cifar10": SourceInfo(
        load_cifar10,
        (32, 32, 3),
        10,
        None,
        class_names=tuple(CIFAR10_CLASSES),
        check_files=_check_cifar10_files,
    ),
    "npz": SourceInfo(
        load_npz,
        None,
        None,
        None,
        needs_path=True,
        list_classes=lambda data, where: npz_class_names(resolve_data_file(data.path, where)),
        check_files=_check_npz_files,
    ),
    "synthetic": SourceInfo(load_synthetic, None, None, None, options=("num_classes",)),
    "folder": SourceInfo(
        load_folder,
        None,
        None,
        None,
        needs_path=True,
        options=("target_size", "color_mode", "class_mode", "interpolation", "skip_bad_images"),
        list_classes=lambda data, where: folder_classes(resolve_data_dir(data.path, where)),
        reports_progress=True,
        check_files=_check_folder_files,
    ),
}
