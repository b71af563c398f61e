"""`cnnkit data check`: a data-quality report, without training.

For an image folder (the Keras layout, given directly or as a spec's `data.path`): class counts
per split and imbalance, unreadable files, exact duplicates by content hash (across splits:
leakage; and within a split), class folders that differ between splits or hold no images or
too few; and as information, a histogram of image sizes (training resizes every image to
target_size), the image modes and the hidden or non-image files that training ignores. Files
are read once each: the bytes are hashed and Pillow reads only the header (and verifies the
file), no pixels are decoded. Layout problems that stop training (differing class folders, an empty
class) are findings here, not errors.

For an array source (mnist, fashion_mnist, cifar10, npz) the arrays are loaded and the splits
training would see (data.classes, max_*_samples and the validation choice applied) are checked
for class counts, imbalance and duplicate images (each image's bytes hashed).

The report is a plain JSON-ready dict: `findings` (severity error or warning: they can hurt
training, `cnnkit data check` exits 1) is empty when the data is clean; `info` holds what is
worth knowing but harms nothing. Long lists are counts plus a few examples.
"""

from __future__ import annotations

import hashlib
import io
import os
from bisect import bisect_left
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnkit.data.folder import _class_dirs, _split_dirs
from cnnkit.data.images import IMAGE_SUFFIXES
from cnnkit.errors import DataError

IMBALANCE_RATIO = 3.0  # largest / smallest class count above this is a finding
TINY_CLASS = 5  # a training class with fewer images than this is a finding
PAIR_LIMIT = 20  # duplicate pairs listed (the count is always complete)
EXAMPLE_LIMIT = 3  # example files named for each size, size bin and minority mode
SIZE_ROWS = 6  # up to this many distinct sizes are listed one by one, else in bins
# bins of the longer side, in pixels: (previous edge, edge]
SIZE_EDGES = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
IGNORED_EXAMPLES = 5
SPLIT_ORDER = ("train", "val", "test", "all")
ARRAY_SOURCES = ("mnist", "fashion_mnist", "cifar10", "npz")
# severity: error (training stops or skips files), warning (trains, but worse), info (worth
# knowing, harms nothing: not a finding)
SEVERITY = {
    "layout": "error",
    "class_folders": "error",
    "empty_classes": "error",
    "unreadable": "error",
    "tiny_classes": "warning",
    "leakage": "warning",
    "imbalance": "warning",
    "duplicates": "info",  # warning when copies carry different classes
    "mixed_sizes": "info",  # resized to target_size
    "mixed_modes": "info",  # converted to color_mode
    "ignored": "info",
}


@dataclass
class FileInfo:
    file: str  # relative to the checked folder, with / separators
    split: str
    cls: str
    digest: bytes | None = None
    size: tuple[int, int] | None = None  # (width, height); None: unreadable
    mode: str | None = None
    channels: int | None = None
    error: str | None = None


@dataclass
class _Report:
    data: dict[str, Any] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    info: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, message: str, severity: str | None = None, **details: Any) -> None:
        severity = severity or SEVERITY[kind]
        entry = {"kind": kind, "severity": severity, "message": message, **details}
        (self.info if severity == "info" else self.findings).append(entry)


# -- image folders ---------------------------------------------------------------------------


def _inspect(item: FileInfo, path: Path) -> FileInfo:
    """Hash the bytes; read the header (size, mode) and verify the file without decoding."""
    try:
        raw = path.read_bytes()
        item.digest = hashlib.blake2b(raw, digest_size=16).digest()
        with Image.open(io.BytesIO(raw)) as img:
            size, mode, bands = img.size, img.mode, len(img.getbands())
            img.verify()
        item.size, item.mode, item.channels = size, mode, bands
    except UnidentifiedImageError:  # its message names the BytesIO object: not useful
        item.error = "UnidentifiedImageError: not an image Pillow can read"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        item.error = f"{exc.__class__.__name__}: {exc}"
    return item


def check_folder(root: Path, target_size: list[int] | None = None) -> dict[str, Any]:
    """target_size: [height, width] every image is resized to (from a spec), if known."""
    if not root.is_dir():
        raise DataError(
            "image folder not found",
            where=str(root),
            hint="Give a folder with train/ (val/, test/) holding class sub-folders, or the "
            "class sub-folders directly.",
        )
    report = _Report()
    layout, split_dirs, here = _check_layout(report, root)
    items, hidden, other, counts = _list_files(root, split_dirs, here)

    # reading: threads (file reads and hashing release the GIL)
    with ThreadPoolExecutor(max_workers=min(8, max(2, os.cpu_count() or 1))) as pool:
        infos = list(pool.map(lambda pair: _inspect(*pair), items))

    _empty_classes(report, counts)
    _tiny(report, counts)
    _imbalance(report, counts)
    bad = [i for i in infos if i.error is not None]
    if bad:
        report.add(
            "unreadable",
            f"{len(bad)} unreadable image file{'s' * (len(bad) != 1)}",
            files=[{"file": i.file, "error": i.error} for i in bad],
        )
    good = [i for i in infos if i.error is None]
    sizes, modes = _mixed_images(report, good, target_size)
    _duplicates(report, [(i.digest, i.split, i.cls, i.file) for i in good])
    if hidden or other:
        report.add(
            "ignored",
            f"{len(hidden) + len(other)} hidden or non-image files ignored "
            f"({len(hidden)} hidden, {len(other)} other)",
            count=len(hidden) + len(other),
            hidden=len(hidden),
            other=len(other),
            examples=(hidden + other)[:IGNORED_EXAMPLES],
        )
    report.data = {
        "source": "folder",
        "path": str(root),
        "layout": layout,
        "classes": sorted({c for names in here.values() for c in names}),
        "splits": {
            s: {"folder": _rel(split_dirs[s], root), **_split_counts(counts[s])} for s in counts
        },
        "images": len(infos),
        "sizes": sizes,
        "target_size": target_size,
        "modes": [{"mode": m, "channels": c, "count": d["count"]} for (m, c), d in modes.items()],
        "ignored": len(hidden) + len(other),
        "file_checks": True,
    }
    return _finish(report)


def _check_layout(report: _Report, root: Path) -> tuple[str, dict[str, Path], dict[str, list[str]]]:
    """The folder's layout ("splits" or "flat"), its split folders ("all": root when flat) and
    the class folders of each split; a missing train/ and differing class folders are findings."""
    split_dirs = _split_dirs(root)
    layout = "splits" if split_dirs else "flat"
    if not split_dirs:
        split_dirs = {"all": root}
    elif "train" not in split_dirs:
        report.add(
            "layout",
            f"has {', '.join(p.name + '/' for p in split_dirs.values())} but no train/ folder",
        )
    here = {split: _class_dirs(folder) for split, folder in split_dirs.items()}
    reference_split = "train" if "train" in here else next(iter(here))
    classes = here[reference_split]
    if not any(here.values()):
        report.add("layout", "no class folders found: put each class's images in a sub-folder")
    differ = []
    for split, names in here.items():
        missing = sorted(set(classes) - set(names))
        extra = sorted(set(names) - set(classes))
        if missing or extra:
            differ.append({"split": split, "missing": missing, "extra": extra})
    if differ:
        text = "; ".join(
            f"{d['split']}/"
            + (f" lacks {', '.join(d['missing'])}" if d["missing"] else "")
            + (" and" if d["missing"] and d["extra"] else "")
            + (f" has extra {', '.join(d['extra'])}" if d["extra"] else "")
            for d in differ
        )
        report.add(
            "class_folders",
            f"class folders differ from {reference_split}/'s: {text}",
            reference=reference_split,
            splits=differ,
        )
    return layout, split_dirs, here


def _list_files(
    root: Path, split_dirs: dict[str, Path], here: dict[str, list[str]]
) -> tuple[list[tuple[FileInfo, Path]], list[str], list[str], dict[str, dict[str, int]]]:
    """Every file of every class folder (extra classes included), and stray files in splits:
    (the images to read, hidden files, other files, images per class folder of each split)."""
    items: list[tuple[FileInfo, Path]] = []
    hidden: list[str] = []
    other: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for split, folder in split_dirs.items():
        counts[split] = {}
        if split != "all":
            for path in sorted(folder.iterdir()):  # files outside any class folder
                if path.is_file():
                    (hidden if path.name.startswith(".") else other).append(_rel(path, root))
        for name in here[split]:
            class_dir = folder / name
            n = 0
            for path in sorted(class_dir.rglob("*")):
                if not path.is_file():
                    continue
                if any(p.startswith(".") for p in path.relative_to(class_dir).parts):
                    hidden.append(_rel(path, root))
                elif path.suffix.lower() not in IMAGE_SUFFIXES:
                    other.append(_rel(path, root))
                else:
                    items.append((FileInfo(_rel(path, root), split, name), path))
                    n += 1
            counts[split][name] = n
    return items, hidden, other, counts


def _empty_classes(report: _Report, counts: dict[str, dict[str, int]]) -> None:
    empty = [
        {"split": s, "class": c} for s, per in counts.items() for c, n in per.items() if n == 0
    ]
    if empty:
        report.add(
            "empty_classes",
            "class folders without images: "
            + ", ".join(_split_path(e["split"], e["class"]) for e in empty),
            empty=empty,
        )


def _mixed_images(
    report: _Report, good: list[FileInfo], target_size: list[int] | None
) -> tuple[dict[str, Any], dict[Any, dict[str, Any]]]:
    """The sizes and modes of the readable images; more than one of either is a finding."""
    sizes = size_summary(good)
    modes = _distribution(good, lambda i: (i.mode, i.channels))
    if sizes["distinct"] > 1:
        to = (
            f"{target_size[1]}×{target_size[0]} (target_size)"
            if target_size
            else "data.target_size (default: model.input_shape)"
        )
        report.add(
            "mixed_sizes",
            f"{sizes['distinct']:,} image sizes (width×height {_span(sizes)}); training resizes "
            f"every image to {to}",
        )
    if len(modes) > 1:
        listed = ", ".join(f"{m} ({d['count']:,})" for (m, _), d in modes.items())
        report.add(
            "mixed_modes",
            f"{len(modes)} image modes: {listed}; training converts every image to color_mode",
            modes=[{"mode": m, "channels": c, **d} for (m, c), d in modes.items()],
        )
    return sizes, modes


def _rel(path: Path, root: Path) -> str:
    text = path.relative_to(root).as_posix()
    return "." if text == "." else text


def _split_path(split: str, name: str) -> str:
    return name + "/" if split == "all" else f"{split}/{name}/"


def size_summary(items: list[FileInfo]) -> dict[str, Any]:
    """Image sizes as counts with a few example files: the most common sizes (every one when
    there are at most SIZE_ROWS), and beyond that a histogram of the longer side."""
    groups: dict[tuple[int, int], list[str]] = defaultdict(list)
    for item in items:
        groups[item.size].append(item.file)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    common = [
        {"width": w, "height": h, "count": len(files), "examples": files[:EXAMPLE_LIMIT]}
        for (w, h), files in ordered[:SIZE_ROWS]
    ]
    histogram: list[dict[str, Any]] = []
    if len(groups) > SIZE_ROWS:
        bins: dict[int, dict[str, Any]] = {}
        for (w, h), files in sorted(groups.items(), key=lambda kv: (max(kv[0]), kv[0])):
            index = bisect_left(SIZE_EDGES, max(w, h))
            low = SIZE_EDGES[index - 1] + 1 if index else 1
            high = SIZE_EDGES[index] if index < len(SIZE_EDGES) else None
            entry = bins.setdefault(
                index, {"longer_side": [low, high], "count": 0, "sizes": 0, "examples": []}
            )
            entry["count"] += len(files)
            entry["sizes"] += 1
            if len(entry["examples"]) < EXAMPLE_LIMIT:
                entry["examples"].append(files[0])
        histogram = [bins[i] for i in sorted(bins)]
    widths = [w for w, _ in groups]
    heights = [h for _, h in groups]
    return {
        "distinct": len(groups),
        "width": [min(widths), max(widths)] if groups else None,
        "height": [min(heights), max(heights)] if groups else None,
        "common": common,
        "histogram": histogram,
    }


def _span(sizes: dict[str, Any]) -> str:
    (w0, w1), (h0, h1) = sizes["width"], sizes["height"]
    return f"{w0}–{w1} × {h0}–{h1}"


def _distribution(items: list[FileInfo], key) -> dict[Any, dict[str, Any]]:
    """value -> {count, examples}: most common first; examples only for the minority values."""
    groups: dict[Any, list[str]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item.file)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), str(kv[0])))
    return {
        value: {"count": len(files), "examples": files[:EXAMPLE_LIMIT] if rank else []}
        for rank, (value, files) in enumerate(ordered)
    }


# -- shared: counts, imbalance, duplicates ---------------------------------------------------


def _split_counts(per_class: dict[str, int]) -> dict[str, Any]:
    return {"counts": dict(per_class), "images": sum(per_class.values())}


def _tiny(report: _Report, counts: dict[str, dict[str, int]]) -> None:
    """Training classes with images, but fewer than TINY_CLASS: too few to learn or to hold
    a validation share out of (empty ones are empty_classes)."""
    tiny = [
        {"split": s, "class": c, "count": n}
        for s in ("train", "all")
        for c, n in counts.get(s, {}).items()
        if 0 < n < TINY_CLASS
    ]
    if tiny:
        report.add(
            "tiny_classes",
            f"classes with fewer than {TINY_CLASS} training images: "
            + ", ".join(f"{_split_path(t['split'], t['class'])} ({t['count']})" for t in tiny),
            threshold=TINY_CLASS,
            tiny=tiny,
        )


def _imbalance(report: _Report, counts: dict[str, dict[str, int]]) -> None:
    flagged = []
    for split, per_class in counts.items():
        present = {c: n for c, n in per_class.items() if n > 0}
        if len(present) < 2:
            continue
        largest = max(present, key=lambda c: (present[c], c))
        smallest = min(present, key=lambda c: (present[c], c))
        ratio = present[largest] / present[smallest]
        if ratio > IMBALANCE_RATIO:
            flagged.append(
                {
                    "split": split,
                    "largest": largest,
                    "largest_count": present[largest],
                    "smallest": smallest,
                    "smallest_count": present[smallest],
                    "ratio": round(ratio, 2),
                }
            )
    if flagged:
        text = "; ".join(
            f"{f['split']}: {f['largest']} {f['largest_count']:,} vs {f['smallest']} "
            f"{f['smallest_count']:,} ({f['ratio']:g}×)"
            for f in flagged
        )
        report.add(
            "imbalance",
            f"class imbalance above {IMBALANCE_RATIO:g}× (largest / smallest class): {text}",
            threshold=IMBALANCE_RATIO,
            splits=flagged,
        )


def _duplicates(report: _Report, entries: list[tuple[bytes, str, str, str]]) -> None:
    """entries: (digest, split, class, name). Pairs across splits are leakage; pairs within a
    split pair every extra copy with the first. Pairs are ordered train < val < test."""
    groups: dict[bytes, list[tuple[str, str, str]]] = defaultdict(list)
    for digest, split, cls, name in entries:
        groups[digest].append((split, cls, name))
    across: list[dict[str, str]] = []
    within: list[dict[str, str]] = []
    n_across = n_within = n_conflicts = n_within_conflicts = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        by_split: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for member in members:
            by_split[member[0]].append(member)
        splits = sorted(by_split, key=SPLIT_ORDER.index)
        for s in splits:
            first, *copies = by_split[s]
            n_within += len(copies)
            n_within_conflicts += len({m[1] for m in by_split[s]}) > 1
            within.extend(_pair(first, c) for c in copies[: max(0, PAIR_LIMIT - len(within))])
        for i, a_split in enumerate(splits):
            for b_split in splits[i + 1 :]:
                for a in by_split[a_split]:
                    for b in by_split[b_split]:
                        n_across += 1
                        n_conflicts += a[1] != b[1]
                        if len(across) < PAIR_LIMIT:
                            across.append(_pair(a, b))
    if n_across:
        report.add(
            "leakage",
            f"{n_across:,} identical image pair{'s' * (n_across != 1)} across splits "
            "(the same image in training and evaluation data)"
            + (f"; {n_conflicts:,} of them with different classes" if n_conflicts else ""),
            count=n_across,
            pairs=across,
        )
    if n_within:
        report.add(
            "duplicates",
            f"{n_within:,} duplicate image{'s' * (n_within != 1)} within a split "
            "(identical content)"
            + (
                f"; {n_within_conflicts:,} of these images under different classes"
                if n_within_conflicts
                else ""
            ),
            severity="warning" if n_within_conflicts else None,  # contradicting labels
            count=n_within,
            pairs=within,
        )


def _pair(a: tuple[str, str, str], b: tuple[str, str, str]) -> dict[str, str]:
    return {"a": a[2], "b": b[2], "a_class": a[1], "b_class": b[1]}


def _finish(report: _Report) -> dict[str, Any]:
    return {
        **report.data,
        "findings": report.findings,
        "info": report.info,
        "clean": not report.findings,
    }


# -- arrays ----------------------------------------------------------------------------------


def check_arrays(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str]
) -> dict[str, Any]:
    """Class counts, imbalance, empty classes and duplicate images of in-memory splits."""
    report = _Report()
    counts: dict[str, dict[str, int]] = {}
    entries = []
    for split, (x, y) in splits.items():
        bins = np.bincount(y, minlength=len(class_names))
        counts[split] = {name: int(bins[i]) for i, name in enumerate(class_names)}
        rows = np.ascontiguousarray(x).reshape(len(x), -1)
        for i, row in enumerate(rows):
            digest = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            entries.append((digest, split, class_names[y[i]], f"{split}[{i}]"))
    empty = [
        {"split": s, "class": c} for s, per in counts.items() for c, n in per.items() if n == 0
    ]
    if empty:
        report.add(
            "empty_classes",
            "classes without images: " + ", ".join(f"{e['class']} in {e['split']}" for e in empty),
            empty=empty,
        )
    _tiny(report, counts)
    _imbalance(report, counts)
    _duplicates(report, entries)
    shape = next(iter(splits.values()))[0].shape[1:]
    report.data = {
        "layout": "arrays",
        "classes": list(class_names),
        "splits": {s: _split_counts(per) for s, per in counts.items()},
        "images": sum(len(y) for _, y in splits.values()),
        "shape": list(shape),
        "file_checks": False,  # unreadable files, sizes, modes, ignored files: not for arrays
    }
    return _finish(report)
