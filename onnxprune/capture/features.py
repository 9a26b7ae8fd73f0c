"""Lay a consumer's input out as rows x features (design_rows: plus a constant-1 intercept column).

Pure array code that works with NumPy or CuPy (`xp`). Conv inputs become im2col patches with
the consumer's own kernel, strides, pads and dilations; ConvTranspose inputs the patches of
the equivalent stride-1 convolution (`transposed_cols`); Gemm and MatMul inputs are reshaped.
For speed, Conv patches are built channels-last (features ordered kernel-offset-major);
`canonical_order` maps them to the channel-block order (channel c owns features
[c*block, (c+1)*block)) that everything downstream uses.
"""
from __future__ import annotations

import math

import numpy as np

from ..graph.groups import ConvGeometry, Consumer


def samples_to_axis0(x, c: Consumer):
    """The captured tensor with samples on axis 0 (a transA Gemm reads them on axis 1)."""
    return x.T if (c.op == "Gemm" and c.trans_a) else x


def design_rows(x, c: Consumer, xp, dtype):
    """A sample-major batch as rows x (features + 1), the last column all ones."""
    if c.conv is not None:
        if c.conv.transposed:
            return transposed_cols(x, c.conv, xp, dtype, intercept=True)
        return im2col(x, c.conv, xp, dtype, intercept=True)
    feats, _ = feature_rows(x, c, xp, dtype)
    rows = xp.empty((feats.shape[0], feats.shape[1] + 1), dtype=dtype)
    rows[:, :-1] = feats
    rows[:, -1] = 1
    return rows


def feature_rows(x, c: Consumer, xp, dtype, rows=None) -> tuple:
    """(rows x features without the intercept, whether the array is a fresh copy): im2col
    patches of a Conv, else a reshape (a view of `x` when its dtype is `dtype`). `rows`: only
    these flat row indices (sample-major); a Conv or ConvTranspose gathers their patches
    without building the others."""
    if c.conv is not None:
        if c.conv.transposed:
            return transposed_cols(x, c.conv, xp, dtype, rows=rows), True
        return im2col(x, c.conv, xp, dtype, rows), True
    flat = x.reshape(-1, x.shape[-1])
    if rows is not None:
        flat = flat[xp.asarray(rows)]
        return flat.astype(dtype, copy=False), True
    out = flat.astype(dtype, copy=False)
    return out, out is not flat


def feature_width(batch, c: Consumer) -> int:
    """Features per row (without the intercept) of a sample-major batch."""
    if c.conv is not None:
        return batch.shape[1] * c.kernel_area
    return batch.shape[-1]


def rows_per_sample(batch, c: Consumer) -> int:
    """Design rows one sample of `batch` gives (output positions of a Conv, tokens otherwise)."""
    if c.conv is not None:
        return math.prod(conv_outs(c.conv, tuple(batch.shape[2:])))
    return batch[:1].size // max(1, batch.shape[-1])


def token_rows(c: Consumer, batch, row_mask):
    """Boolean [samples, rows per sample] of the rows to count, when a [samples, tokens] 0/1
    mask lines up with a token-wise (Gemm/MatMul) consumer's rows; None: count every row."""
    if row_mask is None or c.conv is not None:
        return None
    per_sample = batch[:1].size // max(1, batch.shape[-1])
    mask = np.asarray(row_mask).reshape(row_mask.shape[0], -1)
    if mask.shape[0] != batch.shape[0] or mask.shape[1] != per_sample:
        return None
    return mask != 0


def canonical_order(c: Consumer, features: int) -> np.ndarray | None:
    """Permutation taking design_rows' column order to channel-block order (None: identity)."""
    if c.conv is None or c.kernel_area == 1:
        return None
    kernel_area = c.kernel_area
    channels = (features - 1) // kernel_area
    ch, k = np.meshgrid(np.arange(channels), np.arange(kernel_area), indexing="ij")
    return np.append((k * channels + ch).ravel(), features - 1)


def conv_pads(geometry: ConvGeometry, spatial: tuple) -> tuple:
    """Begin and end pads per spatial axis, resolving auto_pad for this input size."""
    n = len(spatial)
    if geometry.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial, geometry.kernel, geometry.strides, geometry.dilations):
            out = math.ceil(size / s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small = total // 2
            first = small if geometry.auto_pad == "SAME_UPPER" else total - small
            begin.append(first)
            end.append(total - first)
        return tuple(begin), tuple(end)
    if geometry.auto_pad == "VALID":
        return (0,) * n, (0,) * n
    pads = geometry.pads or (0,) * (2 * n)
    return tuple(pads[:n]), tuple(pads[n:])


def conv_outs(geometry: ConvGeometry, spatial: tuple) -> tuple:
    """Output size per spatial axis of a Conv (or ConvTranspose) on an input of size `spatial`."""
    rank = len(spatial)
    if geometry.transposed:
        pads, extra = geometry.pads or (0,) * (2 * rank), geometry.output_padding or (0,) * rank
        return tuple(
            (size - 1) * s - b - e + (k - 1) * d + 1 + o
            for size, s, b, e, k, d, o in zip(spatial, geometry.strides, pads[:rank], pads[rank:], geometry.kernel,
                                              geometry.dilations, extra)
        )
    begin, end = conv_pads(geometry, spatial)
    return tuple(
        (p + b + e - (k - 1) * d - 1) // s + 1
        for p, b, e, k, s, d in zip(spatial, begin, end, geometry.kernel, geometry.strides, geometry.dilations)
    )


def im2col(x, geometry: ConvGeometry, xp, dtype, rows=None, intercept: bool = False):
    """[N, C, *spatial] -> [N * prod(out), prod(kernel) * C (+ 1)]: kernel-offset-major
    patches (then a column of ones with `intercept`); `rows`: only these flat (sample, output
    position) rows, gathered without building the others."""
    n, channels = x.shape[:2]
    spatial = tuple(x.shape[2:])
    begin, end = conv_pads(geometry, spatial)
    xt = xp.moveaxis(x, 1, -1)                       # channels last: contiguous copies below
    if any(begin) or any(end):
        xt = xp.pad(xt, [(0, 0)] + list(zip(begin, end)) + [(0, 0)])
    outs = conv_outs(geometry, spatial)
    kernel_area = math.prod(geometry.kernel)
    if rows is not None:
        return _gather_patches(xt, geometry, outs, xp.asarray(rows), xp, dtype)
    cols = xp.empty((n, *outs, kernel_area * channels + intercept), dtype=dtype)
    if intercept:
        cols[..., -1] = 1
    for flat, offset in enumerate(np.ndindex(*geometry.kernel)):
        index = [slice(None)]
        for o, k_off, s, d in zip(outs, offset, geometry.strides, geometry.dilations):
            start = k_off * d
            index.append(slice(start, start + (o - 1) * s + 1, s))
        cols[..., flat * channels:(flat + 1) * channels] = xt[tuple(index)]
    return cols.reshape(n * math.prod(outs), kernel_area * channels + intercept)


def _gather_patches(xt, geometry: ConvGeometry, outs: tuple, rows, xp, dtype):
    """im2col rows `rows` only, read straight from the padded channels-last input."""
    channels = xt.shape[-1]
    where = xp.unravel_index(rows, (xt.shape[0], *outs))      # sample, then each output coordinate
    cols = xp.empty((rows.shape[0], math.prod(geometry.kernel) * channels), dtype=dtype)
    for flat, offset in enumerate(np.ndindex(*geometry.kernel)):
        index = [where[0]]
        for axis, (k_off, s, d) in enumerate(zip(offset, geometry.strides, geometry.dilations)):
            index.append(where[axis + 1] * s + k_off * d)
        cols[:, flat * channels:(flat + 1) * channels] = xt[tuple(index)]
    return cols


def transposed_cols(x, geometry: ConvGeometry, xp, dtype, intercept: bool = False, rows=None):
    """A ConvTranspose's input as rows (output positions) x (kernel tap, channel) (+ 1 with
    `intercept`); `rows`: only these flat (sample, output position) rows (no intercept then).

    ConvTranspose y[o, p] = sum over (c, q, k) with q*s + k*d - pad_begin = p of
    x[c, q] W[c, o, k] is a stride-1 convolution, dilation d, of x with s - 1 zeros between
    its samples, padded by d(K-1) - pad_begin before and d(K-1) - pad_end + output_padding
    after (cropped where negative), with the kernel flipped. Its im2col column block j is
    tap K-1-j of W, so reversing the blocks gives feature (k, c) = what multiplies
    W[c, :, k]: each output position is one linear row y = features @ W[(c, k), o] + b,
    exactly the model the Conv consumer's statistics and refit assume.
    """
    n, channels = x.shape[:2]
    spatial = tuple(x.shape[2:])
    stuffed = xp.zeros((n, channels) + tuple((size - 1) * s + 1 for size, s in zip(spatial, geometry.strides)),
                       dtype=x.dtype)
    stuffed[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in geometry.strides)] = x
    rank = len(spatial)
    reach = [d * (k - 1) for k, d in zip(geometry.kernel, geometry.dilations)]
    begin = [r - p for r, p in zip(reach, geometry.pads[:rank])]
    end = [r - p + o for r, p, o in zip(reach, geometry.pads[rank:], geometry.output_padding or (0,) * rank)]
    stuffed = xp.pad(stuffed, [(0, 0), (0, 0)] + [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)])
    crop = tuple(slice(max(-b, 0), size - max(-e, 0)) for b, e, size in zip(begin, end, stuffed.shape[2:]))
    stuffed = stuffed[(slice(None), slice(None)) + crop]
    flat = ConvGeometry(geometry.kernel, (1,) * rank, (0,) * (2 * rank), geometry.dilations)
    if rows is not None and intercept:
        raise ValueError("gathered rows carry no intercept column")
    cols = im2col(stuffed, flat, xp, dtype, rows=rows, intercept=intercept)
    kernel_area = math.prod(geometry.kernel)
    width = kernel_area * channels
    taps = xp.ascontiguousarray(cols[:, :width].reshape(cols.shape[0], kernel_area, channels)[:, ::-1, :])
    cols[:, :width] = taps.reshape(cols.shape[0], width)
    return cols
