"""Calibration from text: one text per line (or a .jsonl field), tokenized with a local
Hugging Face `tokenizers` file into the model's input_ids / attention_mask / token_type_ids."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import OnnxPruneError, first_line
from ..calib import from_arrays
from .base import SourceCalibration, Spool, require, sample_limit

ROLES = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_CAP = 512            # longest padded length when neither the model nor the user sets one
BATCH = 64                   # texts tokenized at a time
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def text_calibration(path, specs: list, samples: int | None, *, tokenizer_path, max_length: int | None = None,
                     field: str = "text", input_map: dict | None = None) -> SourceCalibration:
    """The first `samples` texts (None: up to DEFAULT_SAMPLES) of a text file (one per line;
    blank lines skipped) or a .jsonl file (`field` of each line; "a,b" for text pairs).

    `tokenizer_path`: a tokenizer.json (read locally, never downloaded). `input_map`: model input
    -> role (input_ids, attention_mask, token_type_ids); by default from the input names.
    Sequences are padded/truncated to the inputs' static length, else `max_length`, else the
    longest text (at most the tokenizer's truncation length, or 512). `.row_mask` names the
    attention-mask input.
    """
    tokenizers = require("tokenizers", "reading calibration text")
    path = Path(path)
    if not path.is_file():
        raise OnnxPruneError(f"calibration text file not found: {path}" if not path.is_dir()
                             else f"calibration text path {path} is a directory; give a text or .jsonl file")
    roles = _roles(specs, input_map)
    fields = _fields(field, path)
    tokenizer = _load_tokenizer(tokenizers, tokenizer_path)
    limit = sample_limit(samples)
    static = _static_length(specs, max_length)
    length = static or max_length
    if length is not None and length <= 0:
        raise OnnxPruneError(f"--max-length must be positive, got {length}")
    tokenizer.no_padding()
    truncation = tokenizer.truncation
    if length is None:                              # pad to the longest text, within a cap
        cap = truncation["max_length"] if truncation else DEFAULT_CAP
        tokenizer.no_truncation()
        longest = max((len(e.ids) for chunk in _chunks(path, fields, limit) for e in _encode(tokenizer, chunk)),
                      default=0)
        length = max(1, min(longest, cap))
    tokenizer.enable_truncation(length)
    pad_id, pad_token = _pad(tokenizer)
    tokenizer.enable_padding(length=length, pad_id=pad_id, pad_token=pad_token)
    texts = 0
    with Spool({s.name: ((length,), s.dtype) for s in specs}, limit, "texts") as spool:
        for chunk in _chunks(path, fields, limit):
            encodings = _encode(tokenizer, chunk)
            columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                       "token_type_ids": [e.type_ids for e in encodings]}
            batch = {}
            for spec in specs:
                values = np.asarray(columns[roles[spec.name]], dtype=np.int64)
                if spec.dtype.kind in "iu" and values.size and values.max() > np.iinfo(spec.dtype).max:
                    raise OnnxPruneError(f"token ids up to {values.max()} do not fit input '{spec.name}' ({spec.dtype})")
                batch[spec.name] = values.astype(spec.dtype)
            spool.append(batch)
            texts += len(chunk)
        found = spool.rows
        if found == 0:
            raise OnnxPruneError(f"no texts in {path}" + (f" (field '{field}')" if fields else "")
                                 + "; give one text per line")
        if samples is not None and found < samples:
            raise OnnxPruneError(f"{path} has {found} texts, fewer than --samples {samples}; "
                                 f"pass --samples {found} or add texts")
        source = f"text:{path}"
        calib = from_arrays(spool.arrays(), specs, found, source)
    mask = next((name for name, role in roles.items() if role == "attention_mask"), None)
    info = {"kind": "text", "path": str(path), "texts": found, "tokenizer": str(tokenizer_path),
            "sequence_length": length, "inputs": roles}
    return SourceCalibration(calib.arrays, source, row_mask=mask, info=info)


def _roles(specs: list, input_map: dict | None) -> dict:
    """model input name -> role, from the explicit map or the input names."""
    names = [s.name for s in specs]
    if not specs:
        raise OnnxPruneError("the model has no runtime inputs to calibrate")
    for spec in specs:
        if len(spec.dims) != 2 or spec.dtype.kind not in "iuf":
            raise OnnxPruneError(f"text calibration needs [batch, sequence] inputs; '{spec.name}' is {spec.dtype} "
                                 f"{_fmt(spec.dims)}; use a loader script (--calib-script) or a .npz")
    roles = {}
    for name, role in (input_map or {}).items():
        if name not in names:
            raise OnnxPruneError(f"--map {name}={role}: the model has no input '{name}' (inputs: {', '.join(names)})")
        if role not in ROLES:
            raise OnnxPruneError(f"--map {name}={role}: unknown role '{role}'; choose one of {', '.join(ROLES)}")
        roles[name] = role
    for name in names:
        if name not in roles:
            role = _guess(name) or ("input_ids" if len(names) == 1 else None)
            if role is None:
                raise OnnxPruneError(f"cannot tell what model input '{name}' holds; map it with --map {name}=ROLE "
                                     f"(ROLE: {', '.join(ROLES)})")
            roles[name] = role
    return {n: roles[n] for n in names}


def _guess(name: str) -> str | None:
    low = name.lower()
    if "token_type" in low or "segment" in low:
        return "token_type_ids"
    if "mask" in low:
        return "attention_mask"
    if "input_ids" in low or low.endswith("ids") or low in ("ids", "tokens", "input"):
        return "input_ids"
    return None


def _fields(field, path: Path):
    """The .jsonl field(s) to read (None: a plain text file)."""
    if path.suffix.lower() not in JSONL_SUFFIXES:
        return None
    fields = tuple(f.strip() for f in (field.split(",") if isinstance(field, str) else field))
    if not 1 <= len(fields) <= 2 or not all(fields):
        raise OnnxPruneError(f"--text-field must name one field or two (a text pair, 'a,b'); got '{field}'")
    return fields


def _load_tokenizer(tokenizers, tokenizer_path):
    if tokenizer_path is None:
        raise OnnxPruneError("text calibration needs a tokenizer file (--tokenizer tokenizer.json)")
    p = Path(tokenizer_path)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise OnnxPruneError(f"tokenizer file not found: {tokenizer_path}")
    try:
        return tokenizers.Tokenizer.from_file(str(p))
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exceptions
        raise OnnxPruneError(f"{p} is not a tokenizers tokenizer.json file ({first_line(exc)})") from None


def _static_length(specs: list, max_length: int | None) -> int | None:
    lengths = {s.dims[1] for s in specs if s.dims[1] is not None}
    if len(lengths) > 1:
        raise OnnxPruneError(f"the model's text inputs disagree on their sequence length: {sorted(lengths)}")
    static = lengths.pop() if lengths else None
    if static is not None and max_length is not None and max_length != static:
        raise OnnxPruneError(f"the model's inputs have a fixed sequence length of {static}; "
                             f"--max-length {max_length} disagrees (leave it out)")
    return static


def _pad(tokenizer) -> tuple:
    padding = tokenizer.padding
    if padding:
        return padding["pad_id"], padding["pad_token"]
    for token in ("[PAD]", "<pad>", "<|pad|>", "<PAD>"):
        tid = tokenizer.token_to_id(token)
        if tid is not None:
            return tid, token
    return 0, tokenizer.id_to_token(0) or "[PAD]"


def _encode(tokenizer, chunk: list):
    return tokenizer.encode_batch([tuple(t) if isinstance(t, tuple) else t for t in chunk])


def _chunks(path: Path, fields, limit: int):
    """Lists of at most BATCH texts (or pairs), the first `limit` in the file."""
    chunk, seen = [], 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in _lines(fh, path):
            if seen >= limit:
                break
            if not line.strip():
                continue
            text = line.rstrip("\r\n") if fields is None else _record(line, fields, path, lineno)
            chunk.append(text)
            seen += 1
            if len(chunk) == BATCH:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def _lines(fh, path: Path):
    try:
        yield from enumerate(fh, 1)
    except UnicodeDecodeError:
        raise OnnxPruneError(f"{path} is not UTF-8 text; give a UTF-8 text or .jsonl file") from None


def _record(line: str, fields: tuple, path: Path, lineno: int):
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise OnnxPruneError(f"{path}:{lineno} is not a JSON line ({first_line(exc)})") from None
    if not isinstance(record, dict):
        raise OnnxPruneError(f"{path}:{lineno} is not a JSON object")
    values = []
    for f in fields:
        if f not in record:
            raise OnnxPruneError(f"{path}:{lineno} has no field '{f}' (fields: {', '.join(record) or 'none'}); "
                                 "pick one with --text-field")
        if not isinstance(record[f], str):
            raise OnnxPruneError(f"{path}:{lineno}: field '{f}' is not a string")
        values.append(record[f])
    return values[0] if len(values) == 1 else tuple(values)


def _fmt(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
