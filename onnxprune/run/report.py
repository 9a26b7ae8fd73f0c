"""The report of a pruning run: one JSON document (schema_version 1), and its assembly from
a finished run (`build_report`)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..version import __version__
from ..budget.flops import flops_for_samples
from ..capture.shapes import infer_symbolic, measure
from ..graph.index import GraphIndex, float_param_count
from .rowmask import report_fields as row_mask_fields, report_notes as row_mask_notes

SCHEMA_VERSION = 1


@dataclass
class GroupReport:
    name: str
    channels_before: int
    channels_after: int
    kept: list
    rel_error: float | None          # ||A W - B_S W~||² / ||A W||² on the calibration data
    consumers: list = field(default_factory=list)


@dataclass
class Report:
    input: str | None
    output: str | None
    method: str
    mode: str
    reweight: bool
    seed: int
    device: str
    calibration: dict | None
    budget: dict
    params_before: int
    params_after: int
    flops_before: int | None
    flops_after: int | None
    groups: list
    skipped: list
    verify: dict
    seconds: dict | None          # None with --no-timings (reproducible reports)
    schema_version: int = SCHEMA_VERSION
    tool: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)     # decisions a user should know about, one line each
    refits: list | None = None    # --refit all: every refitted non-consumer layer (absent otherwise)

    @property
    def compression(self) -> float:
        return self.params_before / self.params_after if self.params_after else float("inf")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["compression"] = round(self.compression, 6)
        d["flops_ratio"] = (round(self.flops_before / self.flops_after, 6)
                            if self.flops_before and self.flops_after else None)
        order = ["schema_version", "tool", "input", "output", "method", "mode", "reweight", "seed", "device",
                 "calibration", "budget", "params_before", "params_after", "compression", "flops_before",
                 "flops_after", "flops_ratio", "groups", "refits", "skipped", "verify", "notes", "seconds"]
        return {k: d[k] for k in order if k != "refits" or d[k] is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def summary(self) -> str:
        """The one-line human summary printed on stderr."""
        flops = ""
        if self.flops_before and self.flops_after:
            flops = f", FLOPs {self.flops_before / self.flops_after:.2f}x fewer"
        heads = [f"{g['channels_after']}/{g['channels_before']}" for g in self.groups if g.get("unit") == "head"]
        return (f"params {self.params_before:,} -> {self.params_after:,} ({self.compression:.2f}x){flops}, "
                f"{len([g for g in self.groups if g['channels_after'] < g['channels_before']])}/"
                f"{len(self.groups)} groups pruned"
                + (f", heads kept per attention block {' '.join(heads)}" if heads else "")
                + (f", {self.seconds['total']:.1f} s" if self.seconds else ""))


def build_report(session, opts, pruned, groups: list, verify: dict, seconds: dict, notes: list,
                 masked: set, refits: list | None = None, captured: bool = False) -> Report:
    """The Report of one run over `session` with (resolved) `opts`: `groups` are the
    GroupReport dicts, `masked` the consumers whose padding rows were dropped, `captured`
    whether any statistics were captured."""
    calib = session.calibration
    calibration_info = {"source": calib.source, "samples": calib.samples} if calib else None
    if calib is not None:
        calibration_info.update(getattr(calib, "info", {}))    # images, texts, scripts: how they were read
        calibration_info.update(row_mask_fields(session.mask, masked))
        notes = notes + row_mask_notes(session.mask, masked, captured)
    groups = with_heads(session.groups, groups)
    budget = {"keep": opts.keep, "compression_target": opts.compression,
              "allocation": "ranking" if opts.impl.ranks_globally else opts.allocation,
              "target": opts.target, "min_channels": opts.min_channels, "round_to": opts.round_to}
    if any(g.unit == "head" for g in session.groups):
        budget.update(min_heads=opts.min_heads, heads_keep=opts.heads_keep, ffn_keep=opts.ffn_keep)
    return Report(
        input=session.source, output=None, method=opts.method, mode=opts.mode, reweight=opts.reweight,
        seed=opts.seed, device=session.device,
        calibration=calibration_info,
        budget=budget,
        params_before=float_param_count(session.model), params_after=float_param_count(pruned),
        flops_before=flops_for_samples(session.model, session.index, session.sample_dims),
        flops_after=pruned_flops(pruned, session.sample_dims, calib),
        groups=groups, skipped=[s.to_dict() for s in session.analysis.skipped], verify=verify,
        seconds={k: round(v, 3) for k, v in seconds.items()},
        tool={"name": "onnxprune", "version": __version__}, notes=notes, refits=refits,
    )


def pruned_flops(pruned, sample_dims, calibration=None) -> int | None:
    """The pruned model's FLOPs; where ONNX shape inference stops (com.microsoft ops, shapes
    computed at run time), with the shapes of onnxruntime's symbolic inference and then those
    measured on the calibration samples, as the session had them for the original."""
    flops = flops_for_samples(pruned, None, sample_dims)
    if flops is None:
        index = GraphIndex.build(pruned)
        if index.unknown_shapes():
            infer_symbolic(pruned, index)
            flops = flops_for_samples(pruned, index, sample_dims)
        if flops is None and calibration is not None and index.unknown_shapes():
            measure(pruned, index, calibration)
            flops = flops_for_samples(pruned, index, sample_dims)
    return flops


def with_heads(analysed, groups: list) -> list:
    """The group reports, with what a head group's channels are: `unit` 'head', the head size
    and the Q/K/V projections (channels_before/after then count heads, or KV groups)."""
    heads = {g.name: g.heads for g in analysed if g.unit == "head"}
    out = []
    for d in groups:
        info = heads.get(d["name"])
        if info is not None:
            d = dict(d, unit="head", head_dim=info.head_dim, queries_per_unit=info.queries_per_unit,
                     projections={node: role for role, node in info.streams})
        out.append(d)
    return out
