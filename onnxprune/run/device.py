"""Where a run computes: onnxruntime's provider for capture and the array module for the math.

`auto` means CUDA for both or for neither: a run that captured on the CPU but solved on CuPy
(or the reverse) would copy every batch between host and device for nothing, and the README
promises that auto uses the GPU only when both can load.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..capture import runtime
from ..solve.xp import array_module, cupy_or_none


class Device(NamedTuple):
    name: str       # onnxruntime's: "cpu" or "cuda"
    xp: object      # numpy or cupy


def resolve(device: str) -> Device:
    """`cpu`, `cuda` (both must load, else a user error naming what is missing) or `auto`."""
    name = runtime.resolve_device(device)
    if device == "auto":
        if name == "cuda" and cupy_or_none() is not None:
            return Device("cuda", array_module("cuda"))
        return Device("cpu", np)
    return Device(name, array_module(name))
