"""Affine resampling of a batch of images (data augmentation), channels-last (NHWC).

One 2x3 matrix per image maps an *output* pixel (row, col) to the *input* position it reads:
    (sr, sc) = (m00 r + m01 c + m02, m10 r + m11 c + m12)
(the inverse map, as scipy.ndimage.affine_transform). The input is sampled bilinearly (order 1,
as Keras' ImageDataGenerator); each of the four taps that falls outside the image is resolved
by the fill mode: nearest (edge replicate: a a | a b c d | d d), constant (cval), reflect
(d c b a | a b c d | d c b a, scipy's 'reflect') or wrap (periodic: a b c d | a b c d).
Sample positions within 1e-6 of an integer are snapped to it, so 90-degree rotations, flips
and integer shifts copy pixels exactly despite cos(pi/2) = 6e-17.

Serial and nogil on purpose: it runs in the prefetch thread while the training step's
parallel kernels use the cores, and Numba's thread pool must not be entered from two threads.
"""

from __future__ import annotations

import numba
import numpy as np

_SNAP = 1e-6


@numba.njit(cache=True, nogil=True, inline="always")
def _index(i, n, mode):
    """Input index read for tap index i on an axis of length n; -1 means cval (constant)."""
    if 0 <= i < n:
        return i
    if mode == 0:  # nearest
        return 0 if i < 0 else n - 1
    if mode == 1:  # constant
        return -1
    if mode == 2:  # reflect: period 2n, mirrored about the edges between pixels
        i = i % (2 * n)
        return i if i < n else 2 * n - 1 - i
    return i % n  # wrap


@numba.njit(cache=True, nogil=True, inline="always")
def _snap(v):
    r = np.floor(v + 0.5)
    return r if abs(v - r) < _SNAP else v


@numba.njit(cache=True, nogil=True)
def augment_batch(
    x, matrices, mode, cval, shifts, do_shift, brightness, do_brightness, rescale, out
):
    """out[n] = rescale * colour(bilinear_sample(x[n], matrices[n])), float32.

    x: (N, H, W, C) uint8 or float32; matrices: (N, 2, 3) float64; out: (N, OH, OW, C) float32.
    colour, in pixel units (before rescale), Keras' order: channel shift (the same value added
    to every channel, clipped to the transformed image's min and max), then brightness (a
    factor, clipped to [0, 255]). do_shift / do_brightness switch each off entirely.
    """
    n_b, h, w, c_n = x.shape
    oh_n, ow_n = out.shape[1], out.shape[2]
    fill = np.float32(cval)
    for n in range(n_b):
        m00, m01, m02 = matrices[n, 0, 0], matrices[n, 0, 1], matrices[n, 0, 2]
        m10, m11, m12 = matrices[n, 1, 0], matrices[n, 1, 1], matrices[n, 1, 2]
        lo = np.float32(np.inf)
        hi = np.float32(-np.inf)
        for r in range(oh_n):
            for c in range(ow_n):
                sr = _snap(m00 * r + m01 * c + m02)
                sc = _snap(m10 * r + m11 * c + m12)
                fr0 = np.floor(sr)
                fc0 = np.floor(sc)
                fr = np.float32(sr - fr0)
                fc = np.float32(sc - fc0)
                r0 = int(fr0)
                c0 = int(fc0)
                i0 = _index(r0, h, mode)
                i1 = _index(r0 + 1, h, mode)
                j0 = _index(c0, w, mode)
                j1 = _index(c0 + 1, w, mode)
                w00 = (np.float32(1.0) - fr) * (np.float32(1.0) - fc)
                w01 = (np.float32(1.0) - fr) * fc
                w10 = fr * (np.float32(1.0) - fc)
                w11 = fr * fc
                for ch in range(c_n):
                    v00 = fill if i0 < 0 or j0 < 0 else np.float32(x[n, i0, j0, ch])
                    v01 = fill if i0 < 0 or j1 < 0 else np.float32(x[n, i0, j1, ch])
                    v10 = fill if i1 < 0 or j0 < 0 else np.float32(x[n, i1, j0, ch])
                    v11 = fill if i1 < 0 or j1 < 0 else np.float32(x[n, i1, j1, ch])
                    # zero-weight taps are skipped: exact copies, and cval = inf/nan stays put
                    v = np.float32(0.0)
                    if w00 != 0:
                        v += w00 * v00
                    if w01 != 0:
                        v += w01 * v01
                    if w10 != 0:
                        v += w10 * v10
                    if w11 != 0:
                        v += w11 * v11
                    out[n, r, c, ch] = v
                    lo = min(lo, v)
                    hi = max(hi, v)
        shift = np.float32(shifts[n])
        factor = np.float32(brightness[n])
        scale = np.float32(rescale)
        for r in range(oh_n):
            for c in range(ow_n):
                for ch in range(c_n):
                    v = out[n, r, c, ch]
                    if do_shift:
                        v = min(max(v + shift, lo), hi)
                    if do_brightness:
                        v = min(max(v * factor, np.float32(0.0)), np.float32(255.0))
                    out[n, r, c, ch] = v * scale
