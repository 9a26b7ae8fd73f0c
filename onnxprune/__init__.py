"""onnxprune: make trained ONNX models smaller without retraining.

Greedy submodular channel selection and least-squares reweighting (El Halabi et al., 2022)
on streaming statistics of a few hundred unlabeled inputs.
"""
from .version import __version__
from .graph.analyze import analyze
from .errors import OnnxPruneError
from .run.pipeline import PruneOptions, prune
from .run.report import Report

__all__ = ["analyze", "prune", "PruneOptions", "Report", "OnnxPruneError", "__version__"]
