"""Augmentation (cnnkit.data.augment, cnnkit.kernels.affine), prefetching and normalisation.

Each transform is checked exactly where it can be (flips, 90-degree rotations, integer shifts,
fill modes), the kernel against a slow numpy reference over random matrices, and end to end:
determinism, validation never augmented, featurewise statistics saved and reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnkit import api
from cnnkit.data.augment import (
    Augmenter,
    Preprocessor,
    Transforms,
    featurewise_stats,
    resolve_augmentation,
    transform_matrices,
)
from cnnkit.data.batches import Split, batches, make_splits, prefetch, scale
from cnnkit.errors import SpecError
from cnnkit.kernels.affine import augment_batch
from cnnkit.kernels.nojit import FILL_MODES
from cnnkit.runs.layout import RunDir
from cnnkit.runs.rundir import load_checkpoint
from cnnkit.seeding import random_stream
from cnnkit.spec.build import build_loss
from cnnkit.spec.config import parse_spec
from cnnkit.spec.sections import AugmentationSection
from cnnkit.train.trainer import evaluate_split

RNG = np.random.default_rng(0)


def augmenter(**options) -> Augmenter:
    return Augmenter(AugmentationSection.of(resolve_augmentation(options)))


def images(n=3, h=6, w=6, c=2, dtype=np.uint8) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, h, w, c)).astype(dtype)


def transforms(n: int, **fields) -> Transforms:
    t = Transforms.identity(n)
    for name, value in fields.items():
        setattr(t, name, np.broadcast_to(np.asarray(value), (n,)).copy())
    return t


# -- slow reference ----------------------------------------------------------------------


def reference_index(i: int, n: int, mode: str) -> int | None:
    """Where tap i of an axis of n pixels reads; None: cval. As np.pad's modes."""
    if 0 <= i < n:
        return i
    if mode == "nearest":
        return min(max(i, 0), n - 1)
    if mode == "constant":
        return None
    if mode == "reflect":  # d c b a | a b c d | d c b a
        i %= 2 * n
        return i if i < n else 2 * n - 1 - i
    return i % n  # wrap


def reference_affine(x, matrices, mode, cval):
    """out[n, r, c] = bilinear sample of x[n] at matrices[n] @ (r, c, 1), float64."""
    n_b, h, w, c_n = x.shape
    out = np.zeros(x.shape, np.float64)
    for n in range(n_b):
        for r in range(h):
            for c in range(w):
                sr, sc = matrices[n] @ np.array([r, c, 1.0])
                r0, c0 = int(np.floor(sr)), int(np.floor(sc))
                fr, fc = sr - r0, sc - c0
                for dr, wr in ((0, 1 - fr), (1, fr)):
                    for dc, wc in ((0, 1 - fc), (1, fc)):
                        i = reference_index(r0 + dr, h, mode)
                        j = reference_index(c0 + dc, w, mode)
                        value = cval if i is None or j is None else x[n, i, j].astype(np.float64)
                        out[n, r, c] += wr * wc * value
    return out


# -- exact transforms --------------------------------------------------------------------


def test_all_ranges_zero_is_the_identity():
    for mode in FILL_MODES:
        for dtype in (np.uint8, np.float32):
            x = images(h=5, w=7, c=3, dtype=dtype)
            out = augmenter(fill_mode=mode).apply(x, Transforms.identity(3))
            assert out.dtype == np.float32 and np.array_equal(out, x.astype(np.float32))
    # and drawing from an all-default section gives identity transforms
    x = images()
    out = augmenter()(x, np.random.default_rng(1), rescale=0.5)
    assert np.array_equal(out, x.astype(np.float32) * np.float32(0.5))


def test_flips_equal_np_flip():
    x = images(h=5, w=8)
    aug = augmenter()
    assert np.array_equal(aug.apply(x, transforms(3, flip_cols=True)), np.flip(x, 2))
    assert np.array_equal(aug.apply(x, transforms(3, flip_rows=True)), np.flip(x, 1))
    both = transforms(3, flip_rows=True, flip_cols=True)
    assert np.array_equal(aug.apply(x, both), np.flip(x, (1, 2)))


@pytest.mark.parametrize("degrees, k", [(90, 1), (-90, -1), (180, 2), (270, 3)])
def test_rotation_by_right_angles_equals_rot90(degrees, k):
    """Positive rotation_range angles turn the image counterclockwise, as np.rot90 (k=1)."""
    for size in (6, 7):  # even and odd: the centre is ((size - 1) / 2, (size - 1) / 2)
        x = images(h=size, w=size)
        out = augmenter().apply(x, transforms(3, theta=degrees))
        assert np.array_equal(out, np.rot90(x, k, axes=(1, 2)))


@pytest.mark.parametrize("rows, cols", [(2, 0), (-3, 0), (0, 1), (0, -2), (1, -1)])
def test_integer_shifts_with_constant_fill_equal_np_roll(rows, cols):
    """A shift (rows, cols) samples the input at output + shift: the content moves by -shift
    and the vacated border is cval."""
    x = images(h=6, w=7)
    out = augmenter(fill_mode="constant", cval=9.0).apply(
        x, transforms(3, shift_rows=rows, shift_cols=cols)
    )
    expected = np.roll(x, (-rows, -cols), axis=(1, 2)).astype(np.float32)
    if rows > 0:
        expected[:, -rows:] = 9.0
    elif rows < 0:
        expected[:, :-rows] = 9.0
    if cols > 0:
        expected[:, :, -cols:] = 9.0
    elif cols < 0:
        expected[:, :, :-cols] = 9.0
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    "mode, pad_mode",
    [
        ("nearest", "edge"),  # a a | a b c d | d d
        ("reflect", "symmetric"),  # d c b a | a b c d | d c b a (scipy's 'reflect')
        ("wrap", "wrap"),  # a b c d | a b c d | a b c d (periodic)
        ("constant", "constant"),  # k k | a b c d | k k
    ],
)
def test_fill_modes_at_the_border_match_np_pad(mode, pad_mode):
    """Shift a 4x5 image by up to 2 sizes in each direction: the output is a window of the
    image padded by the fill mode (np.pad's equivalent mode)."""
    h, w, k = 4, 5, 12
    x = images(n=1, h=h, w=w, c=2)
    extra = {"constant_values": 3} if pad_mode == "constant" else {}
    padded = np.pad(x[0], ((k, k), (k, k), (0, 0)), mode=pad_mode, **extra)
    aug = augmenter(fill_mode=mode, cval=3.0)
    for rows in range(-2 * h, 2 * h + 1, 3):
        for cols in range(-2 * w, 2 * w + 1, 4):
            out = aug.apply(x, transforms(1, shift_rows=rows, shift_cols=cols))[0]
            window = padded[k + rows : k + rows + h, k + cols : k + cols + w]
            assert np.array_equal(out, window), (rows, cols)


# -- the kernel against the reference ----------------------------------------------------


@pytest.mark.parametrize("mode", FILL_MODES)
@pytest.mark.parametrize("shape", [(3, 7, 9, 1), (2, 8, 5, 3), (1, 4, 4, 2)])
def test_kernel_matches_the_reference_over_random_matrices(mode, shape):
    rng = np.random.default_rng(hash((mode, shape)) % 2**32)
    for dtype in (np.uint8, np.float32):
        x = rng.integers(0, 256, size=shape).astype(dtype)
        matrices = rng.normal(0.0, 1.0, size=(shape[0], 2, 3))
        matrices[:, :, 2] = rng.uniform(-2 * shape[1], 2 * shape[1], size=(shape[0], 2))
        out = np.empty(shape, np.float32)
        no = np.zeros(shape[0])
        augment_batch(x, matrices, FILL_MODES.index(mode), 5.0, no, False, no, False, 1.0, out)
        np.testing.assert_allclose(out, reference_affine(x, matrices, mode, 5.0), atol=2e-3)


def test_kernel_matches_scipy_order_1():
    """An independent check: scipy.ndimage.affine_transform(order=1) with the same modes."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 255, size=(1, 9, 11, 1)).astype(np.float32)
    t = transforms(1, theta=23.0, shift_rows=1.7, shift_cols=-2.2, shear=9.0, zoom_rows=1.2)
    matrix = transform_matrices(t, 9, 11)
    for mode, scipy_mode in [
        ("nearest", "nearest"),
        ("reflect", "reflect"),
        ("wrap", "grid-wrap"),
        ("constant", "grid-constant"),
    ]:
        ours = augmenter(fill_mode=mode, cval=40.0).apply(x, t)[0, ..., 0]
        theirs = ndimage.affine_transform(
            x[0, ..., 0].astype(np.float64),
            matrix[0, :, :2],
            matrix[0, :, 2],
            order=1,
            mode=scipy_mode,
            cval=40.0,
        )
        np.testing.assert_allclose(ours, theirs, atol=1e-3, err_msg=mode)


def test_composition_is_keras_order_about_the_centre():
    """rotation . shift . shear . zoom, then the output flip: checked on one point."""
    t = transforms(1, theta=30.0, shift_rows=2.0, shift_cols=-1.0, shear=10.0)
    t.zoom_rows[:], t.zoom_cols[:], t.flip_cols[:] = 1.1, 0.9, True
    m = transform_matrices(t, 9, 13)[0]
    th, sh = np.deg2rad(30.0), np.deg2rad(10.0)
    rot = np.array([[np.cos(th), np.sin(th), 0], [-np.sin(th), np.cos(th), 0], [0, 0, 1]])
    shift = np.array([[1, 0, 2.0], [0, 1, -1.0], [0, 0, 1]])
    shear = np.array([[np.cos(sh), 0, 0], [-np.sin(sh), 1, 0], [0, 0, 1]])
    zoom, flip = np.diag([1.1, 0.9, 1.0]), np.diag([1.0, -1.0, 1.0])
    centre = np.array([[1, 0, 4.0], [0, 1, 6.0], [0, 0, 1]])
    expected = centre @ rot @ shift @ shear @ zoom @ flip @ np.linalg.inv(centre)
    np.testing.assert_allclose(m, expected[:2], atol=1e-12)


def test_channel_shift_and_brightness_in_pixel_units():
    x = images(n=2, h=4, w=4, c=3).astype(np.float32)
    shift = augmenter(channel_shift_range=50.0)
    out = shift.apply(x, transforms(2, channel_shift=[40.0, -30.0]))
    for i, s in enumerate([40.0, -30.0]):  # the same value on every channel, clipped as Keras
        assert np.array_equal(out[i], np.clip(x[i] + s, x[i].min(), x[i].max()))
    bright = augmenter(brightness_range=[0.5, 1.5])
    out = bright.apply(x, transforms(2, brightness=[1.4, 0.5]), rescale=0.5)
    for i, b in enumerate([1.4, 0.5]):
        expected = np.clip(x[i] * np.float32(b), 0, 255) * np.float32(0.5)
        np.testing.assert_allclose(out[i], expected, rtol=1e-6)


def test_draws_follow_keras_ranges():
    rng = np.random.default_rng(0)
    aug = augmenter(
        rotation_range=20,
        width_shift_range=3,  # an int: whole pixels, -2 ... 2
        height_shift_range=0.25,  # a fraction of the height
        zoom_range=0.2,
        horizontal_flip=True,
    )
    t = aug.draw(2000, 8, 10, rng)
    assert np.abs(t.theta).max() <= 20 and np.abs(t.theta).max() > 15
    assert set(np.unique(t.shift_cols)) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    assert np.abs(t.shift_rows).max() <= 2.0 and len(np.unique(t.shift_rows)) > 100
    assert t.zoom_rows.min() >= 0.8 and t.zoom_cols.max() <= 1.2
    assert 0.4 < t.flip_cols.mean() < 0.6 and not t.flip_rows.any()
    pixels = augmenter(width_shift_range=2.5).draw(500, 8, 10, rng).shift_cols
    assert np.abs(pixels).max() <= 2.5 and np.abs(pixels).max() > 2.0  # float >= 1: pixels


# -- the spec section --------------------------------------------------------------------

LAYERS = """
model:
  input_shape: [12, 12, 1]
  layers:
    - Conv2D: {filters: 2, kernel_size: 3, strides: 2, activation: relu}
    - Flatten: {}
    - Dense: {units: 3, activation: softmax}
train: {epochs: 1, batch_size: 16}
"""


def spec(augmentation: str = "", data: str = "") -> object:
    text = (
        "seed: 3\ndata: {source: synthetic, num_classes: 3, max_train_samples: 48, "
        f"max_test_samples: 20{data}}}\n{LAYERS}"
    )
    if augmentation:
        text += f"augmentation: {augmentation}\n"
    return parse_spec(text)


def test_spec_section_defaults_and_errors():
    resolved = spec("{zoom_range: 0.25, width_shift_range: 2}").augmentation
    assert resolved.zoom_range == (0.75, 1.25) and resolved.width_shift_range == 2
    assert resolved.fill_mode == "nearest" and resolved.cval == 0.0
    assert spec().augmentation == AugmentationSection.of(resolve_augmentation(None))
    reparsed = parse_spec(spec("{zoom_range: [0.9, 1.3]}").to_yaml())
    assert reparsed.augmentation.zoom_range == (0.9, 1.3)
    with pytest.raises(SpecError, match="data.rescale"):
        spec("{rescale: 0.5}")
    with pytest.raises(SpecError, match="did you mean 'rotation_range'"):
        spec("{rotaton_range: 10}")
    with pytest.raises(SpecError):
        spec("{fill_mode: mirror}")
    with pytest.raises(SpecError):
        spec("{zoom_range: [1.2, 0.8]}")
    with pytest.raises(SpecError):
        spec("{width_shift_range: true}")


# -- prefetching, determinism, where augmentation applies --------------------------------


def test_prefetch_gives_the_same_batches_as_a_plain_loop():
    x = RNG.integers(0, 256, size=(50, 8, 8, 1), dtype=np.uint8)
    split = Split(x, np.arange(50))
    pre = Preprocessor(1 / 255, augmenter=augmenter(rotation_range=30, horizontal_flip=True))

    def run(wrap):
        shuffle, aug = random_stream(7, "shuffle"), random_stream(7, "augment")
        return [b for _ in range(2) for b in wrap(batches(split, 16, pre.training(aug), shuffle))]

    plain, fetched = run(iter), run(prefetch)
    assert len(plain) == len(fetched) == 8
    for (xa, ya), (xb, yb) in zip(plain, fetched, strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(plain[0][0], plain[4][0])  # epochs differ


def test_prefetch_raises_the_producers_error():
    def broken():
        yield 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(prefetch(broken()))


def test_evaluation_batches_are_never_augmented():
    x = RNG.integers(0, 256, size=(10, 8, 8, 1), dtype=np.uint8)
    pre = Preprocessor(1 / 255, augmenter=augmenter(rotation_range=90, vertical_flip=True))
    assert np.array_equal(pre(x), scale(x, 1 / 255))
    ((xb, _),) = batches(Split(x, np.zeros(10, np.int64)), 10, pre)
    assert np.array_equal(xb, scale(x, 1 / 255))


def test_samplewise_normalisation_per_image():
    x = RNG.integers(0, 256, size=(4, 6, 6, 3), dtype=np.uint8)
    out = Preprocessor(1 / 255, samplewise_center=True, samplewise_std_normalization=True)(x)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-4)


def test_featurewise_stats_are_per_channel_over_the_split():
    x = RNG.integers(0, 256, size=(9000, 3, 2, 2), dtype=np.uint8)  # more than one chunk
    mean, std = featurewise_stats(x, 0.5)
    flat = x.reshape(-1, 2).astype(np.float64) * 0.5
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-5)


def read_metrics(run_dir: Path) -> list[str]:
    return (run_dir / "metrics.csv").read_text().splitlines()


FULL = (
    "{rotation_range: 40, width_shift_range: 0.2, height_shift_range: 2, shear_range: 20, "
    "zoom_range: 0.3, horizontal_flip: true, vertical_flip: true, fill_mode: reflect, "
    "brightness_range: [0.6, 1.4], channel_shift_range: 30}"
)


def without_seconds(lines: list[str]) -> list[list[str]]:
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != "seconds"]
    return [[row.split(",")[i] for i in keep] for row in lines]


@pytest.mark.e2e
def test_training_with_augmentation_is_deterministic_and_validation_is_not_augmented(
    tmp_path: Path,
):
    first = api.train(spec(FULL), out=tmp_path)
    second = api.train(spec(FULL), out=tmp_path)
    plain = api.train(spec(), out=tmp_path)
    a, b, c = (without_seconds(read_metrics(r.run_dir)) for r in (first, second, plain))
    assert a == b and a != c
    # val_loss was computed on plain (rescaled, not augmented) batches: recompute it
    s = spec(FULL)
    _, model, _, _ = api.load_model(first.run_dir, "last")
    splits = make_splits(api.load_dataset(s), s.data, s.seed)
    loss_fn = build_loss(s)
    result = evaluate_split(model, loss_fn, splits.validation, s.data.rescale, 500)
    assert result.loss == pytest.approx(first.history[-1]["val_loss"], rel=1e-6)
    assert not RunDir(first.run_dir).normalization.exists()


@pytest.mark.e2e
def test_featurewise_statistics_are_saved_and_used_by_evaluate_and_predict(tmp_path: Path):
    s = spec("{featurewise_center: true, featurewise_std_normalization: true}")
    run = api.train(s, out=tmp_path).run_dir
    saved = json.loads(RunDir(run).normalization.read_text())
    train = make_splits(api.load_dataset(s), s.data, s.seed).train
    mean, std = featurewise_stats(train.x, s.data.rescale)
    assert saved["featurewise_mean"] == mean.tolist() and saved["featurewise_std"] == std.tolist()

    _, model, path, _ = api.load_model(run, "best")
    test = make_splits(api.load_dataset(s), s.data, s.seed).test
    normalised = (scale(test.x, s.data.rescale) - mean) / (std + np.float32(1e-6))
    loss_fn = build_loss(s)
    expected = loss_fn.class_probabilities(model.forward(normalised, training=False))
    report = api.evaluate(run)
    result = evaluate_split(model, loss_fn, test, Preprocessor.from_spec(s, train), 500)
    assert report["loss"] == pytest.approx(result.loss, rel=1e-6)
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5, atol=1e-6)

    image = tmp_path / "digit.png"
    Image.fromarray(test.x[0, ..., 0]).save(image)
    (predicted,) = api.predict([image], run, top_k=3)
    by_class = {p["class"]: p["probability"] for p in predicted["top"]}
    for k, name in enumerate(["0", "1", "2"]):
        assert by_class[name] == pytest.approx(float(expected[0, k]), rel=1e-4, abs=1e-6)
    assert load_checkpoint(path)[1]["kind"] == "best"

    RunDir(run).normalization.unlink()  # a run without its statistics is an error
    with pytest.raises(Exception, match="statistics are missing"):
        api.evaluate(run)


# -- the preview -------------------------------------------------------------------------


def test_augment_preview_writes_a_grid(tmp_path: Path):
    s = spec("{rotation_range: 30}")
    out = tmp_path / "preview.png"
    preview = api.augment_preview(s, n=5, out=out, versions=3)
    assert preview.images == 5 and preview.augments
    image = Image.open(out)
    # 12x12 images enlarged 5x (64 // 12), 2-pixel gaps: 4 rows, 5 columns
    assert image.size == (5 * 62 + 2, 4 * 62 + 2) and image.mode == "L"
    grid = np.asarray(image)
    first = make_splits(api.load_dataset(s), s.data, s.seed).train.x[0, ..., 0]
    assert np.array_equal(grid[2:62:5, 2:62:5], first)  # the first original, top left


def test_augment_preview_shows_every_class_of_a_sorted_dataset(tmp_path: Path):
    # an npz sorted by class (as an image folder is): class c's images are all of value 40 c
    y = np.repeat(np.arange(3), 4)
    x = np.repeat((40 * y + 20).astype(np.uint8), 12 * 12).reshape(12, 12, 12, 1)
    np.savez(tmp_path / "sorted.npz", x=x, y=y)
    s = parse_spec(
        f"seed: 3\ndata: {{source: npz, path: {tmp_path / 'sorted.npz'}, validation: none}}\n"
        + LAYERS
    )
    out = tmp_path / "preview.png"
    api.augment_preview(s, n=6, out=out, versions=1)
    grid = np.asarray(Image.open(out))
    firsts = [int(grid[4, 2 + 62 * i]) for i in range(6)]  # top-left pixel of each original
    assert firsts == [20, 60, 100, 20, 60, 100]  # classes in turn, not the first 6 of class 0


def test_round_robin_by_class_takes_each_class_in_turn():
    y = np.array([2, 0, 0, 1, 0, 2, 1])
    assert api._round_robin_by_class(y, 5).tolist() == [1, 3, 0, 2, 6]
    assert api._round_robin_by_class(y, 100).tolist() == [1, 3, 0, 2, 6, 5, 4]
