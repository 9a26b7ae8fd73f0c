"""Which model input marks padding tokens (the *row mask*), and whether it can apply.

Token-wise layers (Gemm/MatMul on [batch, tokens, features]) see one calibration row per
token position; padding positions are not data, so they are left out of the statistics and
of the output comparison when a [samples, tokens] 0/1 mask says where they are.

Where the mask comes from (`resolve`), first match wins:
  option   `--row-mask NAME` (API `row_mask="NAME"`): a bad mask is a one-line error;
  off      `--no-row-mask` (API `row_mask=False`): every token position counts;
  text     the attention mask a `--calib-text` source filled;
  default  the model has an input named exactly `attention_mask` or `input_mask` (TF BERT),
           only one of them, and no other input whose name ends in `attention_mask`
           (encoder-decoder models: which mask fits which tokens is ambiguous).
A text or default mask that is not [samples, tokens] of 0/1 with some 1 is not used, with a
note: the user did not ask for it, so a model that worked without it keeps working.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxPruneError
from ..io.npyfile import chunks

DEFAULT_NAMES = ("attention_mask", "input_mask")


@dataclass(frozen=True)
class RowMask:
    name: str | None          # the model input used as the row mask; None: every row counts
    origin: str               # option | off | text | default | none
    candidate: str | None = None   # the input a default would have used (for the report with --no-row-mask)
    problem: str | None = None     # why a text/default mask was not used (a note)


def default_candidate(names: list) -> tuple:
    """(input name, None) when the model has one unambiguous attention-mask input, else
    (None, why not or None)."""
    exact = [n for n in names if n in DEFAULT_NAMES]
    similar = [n for n in names if n not in exact and n.lower().endswith("attention_mask")]
    if len(exact) == 1 and not similar:
        return exact[0], None
    if exact:
        return None, (f"the model has several attention-mask inputs ({', '.join(exact + similar)}), so none is "
                      "the row mask by default; name one with --row-mask INPUT if it marks the tokens of every "
                      "token-wise layer")
    return None, None


def mask_problem(name: str, calibration) -> str | None:
    """Why input `name` of `calibration` cannot be a row mask, or None when it can."""
    if calibration is None or name not in calibration.arrays:
        have = ", ".join(sorted(calibration.arrays)) if calibration else "none"
        return f"{name} is not a model input with calibration data (inputs: {have})"
    values = calibration.arrays[name]
    if values.ndim != 2:
        return f"{name} must be [samples, tokens], got shape {tuple(values.shape)}"
    bad, real = set(), False
    for part in chunks(values):             # a mask read from disk is scanned a slice at a time
        part = np.asarray(part)
        if part.dtype.kind not in "biuf":
            return f"{name} must be numeric 0 (padding) and 1 (real token), got dtype {part.dtype}"
        bad.update(np.unique(part[(part != 0) & (part != 1)])[:4].tolist())
        real |= bool(np.any(part))
    if bad:
        return (f"{name} must hold only 0 (padding) and 1 (real token), found values such as "
                f"{', '.join(str(v) for v in sorted(bad)[:4])}")
    if not real:
        return f"{name} marks no token as real (all zeros)"
    return None


def resolve(names: list, calibration, requested, text_mask: str | None = None) -> RowMask:
    """The row mask of a run over a model with runtime inputs `names` (see the module doc);
    `requested` is the row_mask option (None: automatic, False: off, or an input name)."""
    if requested is not None and requested is not False and not (isinstance(requested, str) and requested):
        raise OnnxPruneError(f"row_mask must be an input name, False (off) or None (automatic), got {requested!r}")
    candidate, ambiguous = default_candidate(names)
    if isinstance(requested, str):
        problem = mask_problem(requested, calibration)
        if problem:
            raise OnnxPruneError(f"--row-mask {problem}")
        return RowMask(requested, "option")
    if requested is False:
        return RowMask(None, "off", candidate=text_mask or candidate)
    if calibration is None:
        return RowMask(None, "none")
    if text_mask is not None:
        candidate, origin = text_mask, "text"
    elif candidate is not None:
        origin = "default"
    else:
        return RowMask(None, "none", problem=ambiguous)
    problem = mask_problem(candidate, calibration)
    if problem:
        return RowMask(None, "none", candidate=candidate,
                       problem=f"{problem}: it is not used as the row mask, every token position counts")
    return RowMask(candidate, origin)


def report_fields(mask: RowMask, masked: set) -> dict:
    """The calibration keys of the report: nothing when no mask was ever in question."""
    if mask.name is None and mask.candidate is None:
        return {}
    return {"row_mask": mask.name, "row_mask_origin": mask.origin, "masked_consumers": sorted(masked)}


def report_notes(mask: RowMask, masked: set | None, captured: bool = False) -> list:
    """What a user should know about the row mask, one sentence each; `masked` is None for
    a comparison without statistics (eval)."""
    if mask.problem:
        return [mask.problem]
    if mask.origin == "off" and mask.candidate:
        where = "the statistics and the output comparison" if masked is not None else "the output comparison"
        return [f"--no-row-mask: the padding positions of {mask.candidate} count in {where}"]
    if mask.origin not in ("text", "default"):
        return []
    why = ("the attention mask input {} of the calibration text is the row mask" if mask.origin == "text" else
           "the model input {} is the row mask by default (--no-row-mask turns it off)").format(mask.name)
    outputs = "the comparison of [samples, tokens, ...] outputs"
    if masked is None:
        return [f"{why}: padding tokens are left out of {outputs}"]
    if captured and not masked:
        return [f"{why}, but it lines up with no token-wise layer (none has one row per token): no padding "
                "rows were left out of the statistics"]
    return [f"{why}: padding tokens are left out of the statistics of {len(masked)} token-wise layer(s) "
            f"and of {outputs}"]


def check_applied(mask: RowMask, masked: set, captured: bool) -> None:
    """An explicit --row-mask that fitted no layer whose statistics were captured is an error
    (the user asked for masking that did nothing)."""
    if mask.origin == "option" and captured and not masked:
        raise OnnxPruneError(f"--row-mask {mask.name} lines up with no token-wise (Gemm/MatMul) layer: none of the "
                             "captured layers has one input row per token of it; drop --row-mask")
