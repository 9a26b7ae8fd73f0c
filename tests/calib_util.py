"""Shared by the calibration-source tests: the bundled model's input spec and two checks."""
import numpy as np

from onnxprune.io.calib import InputSpec

MNIST_SPECS = [InputSpec("input", np.dtype(np.float32), (None, 1, 28, 28))]


def one_line(excinfo) -> str:
    """The message of a raised OnnxPruneError, asserted to be one line."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def arrays(calib) -> dict:
    """A calibration's arrays read whole (they are lazy on disk)."""
    return {k: np.asarray(v) for k, v in calib.arrays.items()}
