"""A calibration source named before the model is loaded (the CLI's --calib-images,
--calib-text, --calib-script, or `prune(model, calib=ImageFolder(...))`): the source is read
once the model's inputs are known, with the run's --samples."""
from __future__ import annotations

from dataclasses import dataclass, field

from .base import SourceCalibration
from .feeds import script_calibration
from .images import images_calibration
from .text import text_calibration

_READERS = {"images": images_calibration, "text": text_calibration, "script": script_calibration}


@dataclass(frozen=True)
class SourceRequest:
    kind: str                   # images | text | script
    path: str                   # folder or glob, text file, or FILE.py[:FUNC]
    options: dict = field(default_factory=dict)     # keyword options of the reader

    def load(self, specs: list, samples: int | None) -> SourceCalibration:
        return _READERS[self.kind](self.path, specs, samples, **self.options)


def ImageFolder(path, **options) -> SourceRequest:           # noqa: N802 - reads like a type at call sites
    """Images of a folder or glob; options as `images_calibration`."""
    return SourceRequest("images", str(path), options)


def TextFile(path, tokenizer, **options) -> SourceRequest:   # noqa: N802
    """Texts of a file through a tokenizer.json; options as `text_calibration`."""
    return SourceRequest("text", str(path), dict(options, tokenizer_path=str(tokenizer)))


def LoaderScript(script) -> SourceRequest:                   # noqa: N802
    """Feed dicts yielded by FILE.py[:FUNC] (default load_data)."""
    return SourceRequest("script", str(script))
