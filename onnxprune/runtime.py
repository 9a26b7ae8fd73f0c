"""Everything that touches onnxruntime: device choice, sessions, batched runs.

The CUDA provider is only requested once we know it can load, so a CPU-only machine with
the GPU wheel installed never prints CUDA errors.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import tempfile

import numpy as np
import onnx

from .errors import OnnxPruneError

DEVICES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=None)
def _driver_has_gpu() -> bool:
    """True when the NVIDIA driver library loads and reports at least one device."""
    name = "nvcuda.dll" if os.name == "nt" else (ctypes.util.find_library("cuda") or "libcuda.so.1")
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return False
    count = ctypes.c_int(0)
    try:
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except AttributeError:
        return False


@functools.lru_cache(maxsize=None)
def cuda_provider_usable() -> bool:
    """Whether onnxruntime's CUDA provider actually loads here (probed once, silently)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers() or not _driver_has_gpu():
        return False
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - libraries may come from the system instead
            pass
    probe = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 13)],
    )
    probe.ir_version = 7
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
    except Exception:  # noqa: BLE001
        return False
    return "CUDAExecutionProvider" in sess.get_providers()


def resolve_device(device: str) -> str:
    """'cpu' or 'cuda' for onnxruntime; errors when 'cuda' is asked for and cannot load."""
    if device not in DEVICES:
        raise OnnxPruneError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    usable = cuda_provider_usable()
    if device == "cuda" and not usable:
        raise OnnxPruneError(
            "--device cuda: onnxruntime's CUDA provider cannot load here (no NVIDIA GPU/driver, or CUDA "
            "libraries missing; install onnxprune[gpu]); use --device cpu or auto"
        )
    return "cuda" if usable else "cpu"


def providers(device: str) -> list:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]


def session(model: onnx.ModelProto, device: str = "cpu"):
    """An InferenceSession on `device` ('cpu' or 'cuda'); user-facing errors on failure."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Our NumPy work runs between onnxruntime calls: spinning threads would steal its cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        if model.ByteSize() < 2_000_000_000:
            return ort.InferenceSession(model.SerializeToString(), opts, providers=providers(device))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            onnx.save_model(model, path, save_as_external_data=True, location="model.data")
            return ort.InferenceSession(path, opts, providers=providers(device))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxPruneError(f"onnxruntime cannot run this model: {msg}") from None


def run(sess, feeds: dict, outputs: list) -> list:
    """One run; float inputs are passed as-is (already validated and converted)."""
    return sess.run(outputs, feeds)


def batches(arrays: dict, batch_size: int):
    """Yield feed dicts of consecutive samples (axis 0 of every array)."""
    n = next(iter(arrays.values())).shape[0]
    for start in range(0, n, batch_size):
        yield {k: np.ascontiguousarray(v[start:start + batch_size]) for k, v in arrays.items()}
