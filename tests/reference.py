"""Slow, obvious numpy references for the kernels in cnnkit.kernels.

Clarity over speed: explicit loops over output positions and kernel taps, with out-of-range
input positions handled by explicit bounds checks (conv: contribute zero; pool: excluded).
Layouts match the kernels: NHWC activations, (KH, KW, C_in, F) conv weights.
"""

from __future__ import annotations

import numpy as np


def _in_pos(o, k, stride, dilation, pad):
    """Input coordinate read by output coordinate o at kernel tap k."""
    return o * stride - pad + k * dilation


def conv2d_forward(x, w, b, stride, dilation, pad, out_hw):
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    (sh, sw), (dh, dw), (pt, pl), (oh_n, ow_n) = stride, dilation, pad, out_hw
    out = np.empty((n, oh_n, ow_n, f), dtype=x.dtype)
    for oh in range(oh_n):
        for ow in range(ow_n):
            acc = np.zeros((n, f), dtype=np.float64) + b
            for i in range(kh):
                ih = _in_pos(oh, i, sh, dh, pt)
                if not 0 <= ih < h:
                    continue
                for j in range(kw):
                    iw = _in_pos(ow, j, sw, dw, pl)
                    if not 0 <= iw < wd:
                        continue
                    acc += x[:, ih, iw, :].astype(np.float64) @ w[i, j].astype(np.float64)
            out[:, oh, ow, :] = acc
    return out


def conv2d_backward_input(dout, w, x_shape, stride, dilation, pad):
    n, h, wd, c = x_shape
    kh, kw, _, f = w.shape
    (sh, sw), (dh, dw), (pt, pl) = stride, dilation, pad
    _, oh_n, ow_n, _ = dout.shape
    dx = np.zeros(x_shape, dtype=np.float64)
    for oh in range(oh_n):
        for ow in range(ow_n):
            for i in range(kh):
                ih = _in_pos(oh, i, sh, dh, pt)
                if not 0 <= ih < h:
                    continue
                for j in range(kw):
                    iw = _in_pos(ow, j, sw, dw, pl)
                    if not 0 <= iw < wd:
                        continue
                    # (N, F) @ (F, C): every input pixel receives dout * w^T of each tap.
                    dx[:, ih, iw, :] += dout[:, oh, ow, :].astype(np.float64) @ w[i, j].T
    return dx.astype(dout.dtype)


def conv2d_backward_weights(x, dout, w_shape, stride, dilation, pad):
    n, h, wd, c = x.shape
    kh, kw, _, f = w_shape
    (sh, sw), (dh, dw), (pt, pl) = stride, dilation, pad
    _, oh_n, ow_n, _ = dout.shape
    dwt = np.zeros(w_shape, dtype=np.float64)
    for oh in range(oh_n):
        for ow in range(ow_n):
            for i in range(kh):
                ih = _in_pos(oh, i, sh, dh, pt)
                if not 0 <= ih < h:
                    continue
                for j in range(kw):
                    iw = _in_pos(ow, j, sw, dw, pl)
                    if not 0 <= iw < wd:
                        continue
                    # (C, N) @ (N, F): sum over the batch of outer products x * dout.
                    dwt[i, j] += x[:, ih, iw, :].T.astype(np.float64) @ dout[:, oh, ow, :]
    db = dout.astype(np.float64).sum(axis=(0, 1, 2))
    return dwt.astype(dout.dtype), db.astype(dout.dtype)


# -- grouped and depthwise convolution: each group (or channel) a plain convolution ----------


def _group_slices(c, f, groups):
    """(input channels, filters) of each group: group g reads channels g*C/G.. and makes
    filters g*F/G.. (Keras' Conv2D groups)."""
    cg, fg = c // groups, f // groups
    return [(slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)) for g in range(groups)]


def grouped_conv2d_forward(x, w, b, groups, stride, dilation, pad, out_hw):
    """Each group's filters convolve only its own input channels: conv2d per group."""
    f = w.shape[3]
    out = np.empty((x.shape[0], *out_hw, f), dtype=x.dtype)
    for cs, fs in _group_slices(x.shape[3], f, groups):
        out[..., fs] = conv2d_forward(x[..., cs], w[..., fs], b[fs], stride, dilation, pad, out_hw)
    return out


def grouped_conv2d_backward_input(dout, w, groups, x_shape, stride, dilation, pad):
    dx = np.empty(x_shape, dtype=dout.dtype)
    for cs, fs in _group_slices(x_shape[3], w.shape[3], groups):
        shape = (*x_shape[:3], cs.stop - cs.start)
        dx[..., cs] = conv2d_backward_input(dout[..., fs], w[..., fs], shape, stride, dilation, pad)
    return dx


def grouped_conv2d_backward_weights(x, dout, groups, w_shape, stride, dilation, pad):
    dw = np.empty(w_shape, dtype=dout.dtype)
    db = np.empty(w_shape[3], dtype=dout.dtype)
    for cs, fs in _group_slices(x.shape[3], w_shape[3], groups):
        shape = (*w_shape[:3], fs.stop - fs.start)
        dw[..., fs], db[fs] = conv2d_backward_weights(
            x[..., cs], dout[..., fs], shape, stride, dilation, pad
        )
    return dw, db


def depthwise_conv2d_forward(x, w, b, stride, dilation, pad, out_hw):
    """w (KH, KW, C, M): output channel c*M + m is channel c convolved with w[:, :, c, m]."""
    c_n, m_n = w.shape[2], w.shape[3]
    out = np.empty((x.shape[0], *out_hw, c_n * m_n), dtype=x.dtype)
    for c in range(c_n):
        for m in range(m_n):
            k = c * m_n + m
            out[..., k : k + 1] = conv2d_forward(
                x[..., c : c + 1], w[:, :, c : c + 1, m : m + 1], b[k : k + 1],
                stride, dilation, pad, out_hw,
            )  # fmt: skip
    return out


def _pool_windows(h, wd, pool, stride, pad, out_hw):
    """Yield (oh, ow, [(ih, iw), ...]) with the in-range window positions in row-major order."""
    (ph, pw), (sh, sw), (pt, pl), (oh_n, ow_n) = pool, stride, pad, out_hw
    for oh in range(oh_n):
        for ow in range(ow_n):
            pos = []
            for i in range(ph):
                ih = oh * sh - pt + i
                for j in range(pw):
                    iw = ow * sw - pl + j
                    if 0 <= ih < h and 0 <= iw < wd:
                        pos.append((ih, iw))
            yield oh, ow, pos


def maxpool2d_forward(x, pool, stride, pad, out_hw):
    """Returns (out, argmax) with argmax = ih*W + iw of the first maximum in window order."""
    n, h, wd, c = x.shape
    out = np.empty((n, *out_hw, c), dtype=x.dtype)
    argmax = np.empty((n, *out_hw, c), dtype=np.int64)
    for oh, ow, pos in _pool_windows(h, wd, pool, stride, pad, out_hw):
        for b in range(n):
            for ch in range(c):
                vals = [x[b, ih, iw, ch] for ih, iw in pos]
                k = int(np.argmax(vals))  # np.argmax returns the first occurrence on ties
                out[b, oh, ow, ch] = vals[k]
                argmax[b, oh, ow, ch] = pos[k][0] * wd + pos[k][1]
    return out, argmax


def maxpool2d_backward(dout, x, pool, stride, pad):
    """Gradient of max pooling computed from x alone (independent of the kernel's argmax)."""
    n, h, wd, c = x.shape
    out_hw = dout.shape[1:3]
    dx = np.zeros(x.shape, dtype=np.float64)
    for oh, ow, pos in _pool_windows(h, wd, pool, stride, pad, out_hw):
        for b in range(n):
            for ch in range(c):
                vals = [x[b, ih, iw, ch] for ih, iw in pos]
                ih, iw = pos[int(np.argmax(vals))]
                dx[b, ih, iw, ch] += dout[b, oh, ow, ch]
    return dx.astype(dout.dtype)


def avgpool2d_forward(x, pool, stride, pad, out_hw):
    n, h, wd, c = x.shape
    out = np.empty((n, *out_hw, c), dtype=x.dtype)
    for oh, ow, pos in _pool_windows(h, wd, pool, stride, pad, out_hw):
        vals = np.stack([x[:, ih, iw, :].astype(np.float64) for ih, iw in pos])
        out[:, oh, ow, :] = vals.mean(axis=0)  # padding excluded from the count
    return out


def avgpool2d_backward(dout, x_shape, pool, stride, pad):
    n, h, wd, c = x_shape
    out_hw = dout.shape[1:3]
    dx = np.zeros(x_shape, dtype=np.float64)
    for oh, ow, pos in _pool_windows(h, wd, pool, stride, pad, out_hw):
        for ih, iw in pos:
            dx[:, ih, iw, :] += dout[:, oh, ow, :] / len(pos)
    return dx.astype(dout.dtype)


def relu_backward(dy, y):
    """relu's input gradient from its output: dy where the output is positive, else 0."""
    return np.where(y > 0, dy, np.zeros_like(dy))


# -- comparing a kernel with its reference ---------------------------------------------------

DTYPES = [np.float64, np.float32]
RTOL = {np.float64: 1e-10, np.float32: 1e-4}
ATOL = {np.float64: 1e-12, np.float32: 1e-5}


def close(actual, expected, dtype):
    """A kernel's output has the input's dtype and matches the reference within its tolerance."""
    assert actual.dtype == np.dtype(dtype)
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=ATOL[dtype])
