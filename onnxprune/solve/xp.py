"""The NumPy / CuPy switch: the math modules take an array module instead of importing one."""
from __future__ import annotations

import numpy as np

from ..errors import OnnxPruneError


def cupy_or_none():
    """CuPy when it imports and sees a GPU, else None (never raises)."""
    try:
        import cupy  # type: ignore

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # noqa: BLE001 - any failure means "no usable CuPy"
        return None
    return None


def array_module(device: str):
    """numpy for 'cpu'; cupy for 'cuda' (error if unusable); 'auto' picks cupy when usable."""
    if device == "cpu":
        return np
    cupy = cupy_or_none()
    if device == "cuda" and cupy is None:
        raise OnnxPruneError(
            "--device cuda needs CuPy with a visible GPU for the selection math; "
            "install onnxprune[gpu] on a machine with an NVIDIA GPU, or use --device cpu"
        )
    return cupy if cupy is not None else np


def to_numpy(a) -> np.ndarray:
    """Host copy of an array from either module."""
    if isinstance(a, np.ndarray):
        return a
    return a.get()
