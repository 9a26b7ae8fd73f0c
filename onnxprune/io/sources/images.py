"""Calibration from a folder (or glob) of images: decoded with Pillow, resized, scaled and
normalised the way the model's training pipeline did, in the model's layout."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from ...errors import OnnxPruneError, first_line
from ..calib import from_arrays
from .base import SourceCalibration, Spool, require, sample_limit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("imagenet", "0-1", "0-255", "-1-1")
RESIZES = ("shorter", "exact")
LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("RGB", "BGR")
GLOB_CHARS = set("*?[")


def images_calibration(path_or_glob, specs: list, samples: int | None, *, size=None, resize: str = "shorter",
                       preset: str = "imagenet", mean=None, std=None, channel_order: str = "RGB",
                       layout: str | None = None, strict: bool = False) -> SourceCalibration:
    """The first `samples` images (sorted by path; None: up to DEFAULT_SAMPLES) of a folder
    (searched recursively) or glob, as the one image input of the model.

    size: int or (height, width); by default the input's static height and width.
    resize: "shorter" scales the image to cover the size and crops the centre; "exact"
        stretches it to the size.
    preset: "imagenet" (x/255, then ImageNet mean/std), "0-1" (x/255), "0-255" (x), "-1-1"
        (x/127.5 - 1); `mean`/`std` (one value or one per channel, in the model's channel
        order) replace the preset's or are applied after its scaling.
    channel_order: "RGB" or "BGR"; layout: "NCHW", "NHWC" or None (from the input's shape).
    Unreadable and non-image files are skipped and counted (`.skipped`), or refused (strict).
    """
    image = require("PIL.Image", "reading calibration images")
    _choice("resize", resize, RESIZES)
    _choice("preset", preset, PRESETS)
    _choice("channel order", channel_order, CHANNEL_ORDERS)
    if layout is not None:
        _choice("layout", layout, LAYOUTS)
    spec = _image_input(specs)
    layout, channels, (height, width) = _geometry(spec, size, layout)
    if channels == 1 and channel_order == "BGR":
        raise OnnxPruneError(f"input '{spec.name}' has one channel; channel order BGR applies to colour images")
    scale, offset = _normalisation(preset, mean, std, channels, channel_order)
    files = _files(path_or_glob)
    limit = sample_limit(samples)
    row = (channels, height, width) if layout == "NCHW" else (height, width, channels)
    skipped = []
    with Spool({spec.name: (row, spec.dtype)}, min(limit, len(files)), "images") as spool:
        for path in files:
            if spool.full:
                break
            try:
                pixels = _decode(image, path, channels, (height, width), resize)
            except _Unreadable as exc:
                if strict:
                    raise OnnxPruneError(f"{path} is not a readable image ({exc}); remove it or drop --strict") from None
                skipped.append(str(path))
                continue
            x = pixels.astype(np.float64)
            if channel_order == "BGR":
                x = x[..., ::-1]
            x = (x * scale + offset).astype(spec.dtype)
            if layout == "NCHW":
                x = x.transpose(2, 0, 1)
            spool.append({spec.name: x[None]})
        found = spool.rows
        if found == 0:
            raise OnnxPruneError(f"no readable images in {path_or_glob} ({len(skipped)} file(s) skipped); "
                                 "JPEG, PNG and WebP files are read")
        if samples is not None and found < samples:
            raise OnnxPruneError(f"{path_or_glob} has {found} readable images ({len(skipped)} file(s) skipped), "
                                 f"fewer than --samples {samples}; pass --samples {found} or add images")
        source = f"images:{path_or_glob}"
        calib = from_arrays(spool.arrays(), specs, found, source)
    info = {"kind": "images", "path": str(path_or_glob), "images": found, "skipped": len(skipped),
            "size": [height, width], "resize": resize, "preset": preset, "layout": layout,
            "channel_order": channel_order, "mean": None if mean is None else list(np.atleast_1d(mean).tolist()),
            "std": None if std is None else list(np.atleast_1d(std).tolist())}
    return SourceCalibration(calib.arrays, source, skipped=len(skipped), skipped_files=tuple(skipped[:20]), info=info)


class _Unreadable(Exception):
    pass


def _choice(what: str, value, allowed) -> None:
    if value not in allowed:
        raise OnnxPruneError(f"unknown {what} '{value}'; choose one of {', '.join(allowed)}")


def _image_input(specs: list):
    if len(specs) != 1:
        raise OnnxPruneError(f"image calibration feeds a model with one image input; this model has "
                             f"{len(specs)} inputs ({', '.join(s.name for s in specs)}); use a loader script "
                             "(--calib-script) or a .npz")
    spec = specs[0]
    if len(spec.dims) != 4 or spec.dtype.kind != "f":
        raise OnnxPruneError(f"image calibration needs a 4-D float input; '{spec.name}' is {spec.dtype} "
                             f"{_fmt(spec.dims)}; use a loader script (--calib-script) or a .npz")
    return spec


def _geometry(spec, size, layout):
    """(layout, channels, (height, width)) from the input's shape and the options."""
    dims = spec.dims
    if layout is None:
        if dims[1] in (1, 3):
            layout = "NCHW"
        elif dims[3] in (1, 3):
            layout = "NHWC"
        else:
            raise OnnxPruneError(f"cannot tell whether input '{spec.name}' {_fmt(dims)} is NCHW or NHWC "
                                 "(no axis of 1 or 3 channels); pass the layout (--layout NCHW|NHWC)")
    c_axis, hw_axes = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    channels = dims[c_axis] if dims[c_axis] is not None else 3
    if channels not in (1, 3):
        raise OnnxPruneError(f"input '{spec.name}' {_fmt(dims)} has {channels} channels on axis {c_axis} "
                             f"({layout}); images give 1 or 3; check the layout")
    static = tuple(dims[a] for a in hw_axes)
    if size is not None:
        want = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
        if len(want) != 2 or min(want) <= 0:
            raise OnnxPruneError(f"image size must be a positive size or height,width; got {size}")
        clash = [(s, w) for s, w in zip(static, want) if s is not None and s != w]
        if clash:
            raise OnnxPruneError(f"input '{spec.name}' {_fmt(dims)} has a fixed image size "
                                 f"{static[0]}x{static[1]}; the image size {want[0]}x{want[1]} disagrees")
        return layout, channels, want
    if None in static:
        raise OnnxPruneError(f"input '{spec.name}' {_fmt(dims)} has no fixed height and width; "
                             "give the image size (--image-size 224 or 224,224)")
    return layout, channels, static


def _normalisation(preset, mean, std, channels, channel_order):
    """(scale, offset) per channel so that x_model = pixel * scale + offset."""
    scale = {"imagenet": 1 / 255, "0-1": 1 / 255, "0-255": 1.0, "-1-1": 1 / 127.5}[preset]
    base = -1.0 if preset == "-1-1" else 0.0
    if preset == "imagenet" and (mean is None or std is None):     # each replaceable on its own
        if channels != 3:
            raise OnnxPruneError("the imagenet preset has a mean and std for 3 colour channels; this input has "
                                 "1 channel: pick another preset (0-1, 0-255, -1-1) or give the mean and std")
        order = slice(None) if channel_order == "RGB" else slice(None, None, -1)
        mean = np.array(IMAGENET_MEAN)[order] if mean is None else mean
        std = np.array(IMAGENET_STD)[order] if std is None else std
    mean = _per_channel("mean", 0.0 if mean is None else mean, channels)
    std = _per_channel("std", 1.0 if std is None else std, channels)
    if np.any(std == 0):
        raise OnnxPruneError(f"std must not be zero, got {std.tolist()}")
    # ((p * scale + base) - mean) / std, folded into one multiply-add (in float64)
    return scale / std, (base - mean) / std


def _per_channel(what, value, channels):
    v = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if v.size == 1:
        v = np.repeat(v, channels)
    if v.size != channels:
        raise OnnxPruneError(f"{what} has {v.size} values; the input has {channels} channel(s)")
    return v


def _files(path_or_glob) -> list:
    text = os.fspath(path_or_glob)
    path = Path(text)
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path))]
    elif path.is_file():
        found = [path]
    elif GLOB_CHARS & set(text):
        found = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()]
        if not found:
            raise OnnxPruneError(f"no files match {text}")
    else:
        raise OnnxPruneError(f"image folder not found: {text}")
    if not found:
        raise OnnxPruneError(f"no images in {text}: the folder is empty")
    return sorted(found, key=lambda p: p.as_posix())


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _decode(image, path: Path, channels: int, size: tuple, resize: str) -> np.ndarray:
    """uint8 [height, width, channels] of one file, resized and centre-cropped."""
    try:
        with image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        raise _Unreadable(first_line(exc)) from None
    im = fit(im, size, resize)
    a = np.asarray(im, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def fit(im, size: tuple, resize: str):
    """Resize a Pillow image to (height, width): exactly, or covering it and cropped in the centre
    (torchvision's Resize + CenterCrop for a square size)."""
    from PIL import Image

    bilinear = getattr(Image, "Resampling", Image).BILINEAR
    height, width = size
    if resize == "exact":
        return im.resize((width, height), bilinear) if im.size != (width, height) else im
    w, h = im.size
    if height * w >= width * h:         # the height limits: it becomes `height`
        new_w, new_h = max(width, int(height * w / h)), height
    else:
        new_w, new_h = width, max(height, int(width * h / w))
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), bilinear)
    top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))
    return im.crop((left, top, left + width, top + height))


def _fmt(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
