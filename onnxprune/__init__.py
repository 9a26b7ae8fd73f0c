"""onnxprune: make trained ONNX models smaller without retraining.

Greedy submodular channel selection and least-squares reweighting (El Halabi et al., 2022)
on streaming statistics of a few hundred unlabeled inputs.
"""
__version__ = "0.1.0"

from .graph.analyze import analyze  # noqa: E402
from .errors import OnnxPruneError  # noqa: E402
from .run.pipeline import PruneOptions, prune  # noqa: E402
from .run.report import Report  # noqa: E402

__all__ = ["analyze", "prune", "PruneOptions", "Report", "OnnxPruneError", "__version__"]
