"""`from onnxprune.sweep import sweep`, the import path the README documented before the stages
moved into folders; the code is in run/sweep.py."""
from .run.sweep import sweep  # noqa: F401
