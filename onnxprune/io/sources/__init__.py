"""Calibration sources beyond .npz files: image folders, text files, loader scripts and
Python feed objects. Each gives a `SourceCalibration` (a `Calibration` whose arrays are read
from a temporary file a batch at a time; see base.py for why)."""
from .base import SourceCalibration
from .feeds import from_feeds, is_feeds, script_calibration
from .images import PRESETS, images_calibration
from .request import ImageFolder, LoaderScript, SourceRequest, TextFile
from .text import ROLES, text_calibration

__all__ = ["SourceCalibration", "from_feeds", "is_feeds", "script_calibration", "images_calibration", "text_calibration",
           "PRESETS", "ROLES", "SourceRequest", "ImageFolder", "TextFile", "LoaderScript"]
