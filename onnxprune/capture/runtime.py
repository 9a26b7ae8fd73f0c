"""Everything that touches onnxruntime: device choice, sessions, batched runs.

The CUDA provider is only requested once we know it can load, so a CPU-only machine with
the GPU wheel installed never prints CUDA errors.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import os
import re
import tempfile
import time

import numpy as np
import onnx

from ..io.atomic import Staged
from ..errors import InternalError, OnnxPruneError, first_line
from ..graph.index import opset_version
from ..io.largemodel import is_large, skeleton

DEVICES = ("auto", "cpu", "cuda")
MIN_OPSET = 7          # the oldest ai.onnx opset onnxruntime guarantees to run


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


def session(model: onnx.ModelProto, device: str = "cpu", built: str | None = None, threads: int | None = None,
            arena: bool = False):
    """An InferenceSession on `device` ('cpu' or 'cuda'). A model the user gave that onnxruntime
    cannot load is a user error; one onnxprune `built` (described by that string: a pruned
    model, a region cut for capture) is an InternalError, since it is our bug. `threads`:
    onnxruntime's intra-op threads (None: its default, every core; a Ray worker owns fewer).

    No CPU memory arena unless `arena`: a prune holds several sessions at once (two capture
    streams; verify's original and pruned models), and an arena keeps its largest batch's
    activations for the session's life (ViT-S with its decoder at batch 32: 2.5 GB with
    arenas, 1.6 GB without). Without one, every run hands its activations back to the system
    and page-faults them in again (+16% time), so the short-lived sessions that run one
    region over every batch (a seq/asym capture step) keep theirs (docs/RESULTS.md "ViT-S
    speed and memory")."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
    # Our NumPy work runs between onnxruntime calls: spinning threads would steal its cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_cpu_mem_arena = arena
    try:
        if not is_large(model):
            return ort.InferenceSession(model.SerializeToString(), opts, providers=providers(device))
        with tempfile.TemporaryDirectory(prefix="onnxprune-ort-") as tmp:
            path = os.path.join(tmp, "model.onnx")
            with Staged() as staged:
                staged.add_model(model, path)
            return ort.InferenceSession(path, opts, providers=providers(device))
    except OnnxPruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        if built is not None:
            raise InternalError(f"onnxruntime {ort.__version__} rejects {built}: {_strip_location(str(exc))}") from exc
        raise OnnxPruneError(explain_failure(model, exc)) from None


def explain_failure(model: onnx.ModelProto, exc: BaseException) -> str:
    """onnxruntime's reason in one line, saying which version is the problem and what works."""
    import onnxruntime as ort

    ours = f"onnxruntime {ort.__version__}"
    text = _strip_location(str(exc))
    ir = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text)
    if ir:
        return (f"{ours} cannot run models of IR version {ir[1]} (it supports up to IR {ir[2]}); "
                "re-export the model with an older IR version or upgrade onnxruntime")
    opset = re.search(r"Opset (\d+) is under development.*?till opset (\d+)", text)
    if opset:
        return (f"{ours} supports ai.onnx opsets up to {opset[2]}, the model uses opset {opset[1]}; "
                f"re-export it with opset {opset[2]} or lower (or onnx.version_converter) or upgrade onnxruntime")
    default = opset_version(model, default=None)
    if default is not None and default < MIN_OPSET:
        return (f"{ours} cannot run this opset {default} model ({text}); it supports ai.onnx opset "
                f"{MIN_OPSET} and newer: convert the model with onnx.version_converter")
    return f"{ours} cannot run this model: {text}"


def _strip_location(message: str) -> str:
    """First line of an onnxruntime message without its status code, file:line and C++ signature."""
    text = message.strip().splitlines()[0] if message.strip() else "unknown error"
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^Load model from \S+ failed:", "", text)
    if re.match(r"^\S+\.(?:cc|h|cpp|hpp):\d+ ", text):
        depth, start = 0, text.find(" ") + 1
        for i in range(start, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if text[i] == ")" and depth == 0:
                text = text[i + 1:]
                break
    return text.strip()


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library, another system)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# A full garbage collection costs tens of milliseconds in a large process (a test session):
# at most one per this many seconds, so it stays a few percent of any run.
COLLECT_EVERY = 1.0
_last_collect = [float("-inf")]


def release_memory() -> None:
    """Hand the memory that dropped sessions, graphs and batches held back to the system.

    onnx-graphsurgeon graphs are reference cycles (each node and tensor through its own
    input/output lists), holding the TensorProtos they imported, until a full collection
    (ViT-S: 100-300 MB more resident per step without one); and glibc keeps freed blocks for
    reuse and, once a large array has been freed, serves blocks up to that size from the heap
    instead of fresh mappings. Without this a run's resident memory only grows, step after step (ViT-S: 250 MB
    after the frontier probe alone, 1.1 GB more by the fourth block)."""
    if time.monotonic() - _last_collect[0] >= COLLECT_EVERY:
        gc.collect()
        _last_collect[0] = time.monotonic()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def run(sess, feeds: dict, outputs: list) -> list:
    """One run; inputs are already validated and converted (a StoredArray slice is read here)."""
    return sess.run(outputs, {k: np.asarray(v) for k, v in feeds.items()})


def batches(arrays: dict, batch_size: int):
    """Yield feed dicts of consecutive samples (axis 0 of every array)."""
    n = next(iter(arrays.values())).shape[0]
    for start in range(0, n, batch_size):
        yield {k: np.ascontiguousarray(v[start:start + batch_size]) for k, v in arrays.items()}


def symbolic_shapes(model: onnx.ModelProto) -> dict:
    """{tensor: dims} from onnxruntime's symbolic shape inference, dims an int or a symbol
    name (str) each; raises OnnxPruneError with the reason when it cannot run or finish.

    Output ranks are never guessed (guess_output_rank=False): an op it does not know makes
    it give up rather than invent a shape."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError as exc:
        raise OnnxPruneError(f"onnxruntime's symbolic shape inference is unavailable ({first_line(exc)})") from None
    if is_large(model):            # it copies and serialises the model: give it the weightless skeleton
        model = skeleton(model)[0]
    try:
        inferred = _infer_symbolic(SymbolicShapeInference, model)
    except Exception as exc:  # noqa: BLE001 - it raises bare Exception on anything it cannot type
        raise OnnxPruneError(f"symbolic shape inference failed: {first_line(exc) or type(exc).__name__}") from None
    if inferred is None:
        raise OnnxPruneError("symbolic shape inference gave no result")
    found = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape"):
            found[vi.name] = (t.elem_type, tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                                 for d in t.shape.dim))
    return found


def _infer_symbolic(engine, model: onnx.ModelProto):
    """The shapes it found, complete or not. Its `infer_shapes` saves an incomplete result as
    sym_shape_infer_temp.onnx (+ data files) into the working directory and raises; we never
    write into the user's directory, so its loop runs here (the same steps), or, where a
    later onnxruntime renames them, `infer_shapes` runs in a throwaway directory."""
    steps = ("_preprocess", "_infer_impl", "_update_output_from_vi")
    if not all(hasattr(engine, name) for name in steps):
        with tempfile.TemporaryDirectory(prefix="onnxprune-sym-") as tmp, contextlib.chdir(tmp):
            return engine.infer_shapes(model, auto_merge=False, guess_output_rank=False)
    if opset_version(model) < 7:
        return None
    inference = engine(2**31 - 1, False, False, 0)      # int_max, auto_merge, guess_output_rank, verbose
    inference._preprocess(model)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    return inference.out_mp_
