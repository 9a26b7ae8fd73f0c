"""The `onnxprune` command: a thin layer over the Python API (the only module using click).

User errors print one line on stderr and exit 1; usage errors exit 2 (click); a model with
nothing to prune exits 3; Ctrl-C exits 130. Nothing is written unless the whole run succeeds.
"""
from __future__ import annotations

import json
import sys

import click

from ..version import __version__
from ..graph.analyze import analyze as analyze_model
from ..budget.allocation import ALLOCATIONS, TARGETS
from ..io.atomic import Staged
from ..errors import NothingToPrune, OnnxPruneError
from ..run.evaluate import evaluate, load_eval_data
from ..graph.index import GraphIndex
from ..methods import METHODS
from ..methods.importance import DRAWS
from ..io.modelio import load_model, validate_output_path
from ..run.pipeline import MODES, prune as prune_model
from ..progress import StderrProgress
from ..capture.runtime import resolve_device
from ..capture.shapes import infer_symbolic
from ..run.sweep import headline_column, plot_available, sweep as run_sweep
from ..run.metrics import METRICS, headline, output_line
from .calibration import SOURCE_OPTIONS, source_options, source_request

EXIT_NOTHING_TO_PRUNE = 3


class _Command(click.Command):
    """Turns OnnxPruneError into `error: ...` + exit 1 and Ctrl-C into exit 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NothingToPrune as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_NOTHING_TO_PRUNE)
        except OnnxPruneError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("\ninterrupted: nothing was written", err=True)
            ctx.exit(130)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxprune")
def main():
    """Make trained ONNX models smaller without retraining (structured channel pruning)."""


def _ridge(ctx, param, value):
    """--ridge: a non-negative number or auto."""
    if value == "auto":
        return value
    try:
        ridge = float(value)
    except ValueError:
        raise click.BadParameter(f"give a number >= 0 or auto, not {value!r}") from None
    if not ridge >= 0:
        raise click.BadParameter(f"give a number >= 0 or auto, not {value!r}")
    return ridge


def _row_limit(ctx, param, value):
    """--max-rows: a positive count, auto or all (None)."""
    if value in ("auto", "all"):
        return None if value == "all" else value
    try:
        rows = int(value)
    except ValueError:
        raise click.BadParameter(f"give a positive number of rows, auto or all, not {value!r}") from None
    if rows < 1:
        raise click.BadParameter(f"give a positive number of rows, auto or all, not {value!r}")
    return rows


@main.command(cls=_Command)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--exclude", multiple=True, metavar="NAME", help="Leave this Conv/Gemm/MatMul node alone (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def analyze(model, exclude, as_json):
    """List prunable channel groups and the layers left alone, with reasons."""
    loaded = load_model(model)
    index = GraphIndex.build(loaded)
    notes = infer_symbolic(loaded, index)      # no data here: the measured fallback needs `prune`
    result = analyze_model(loaded, exclude, index)
    if as_json:
        doc = {"schema_version": 1, "input": model, **result.to_dict(index)}
        if notes:
            doc["notes"] = notes
        click.echo(json.dumps(doc, indent=2))
        return
    cov = result.coverage(index)
    click.echo(f"{len(result.groups)} prunable group(s); {len(result.skipped)} layer(s) left alone; "
               f"{cov['prunable_channels']}/{cov['total_channels']} Conv/Gemm/MatMul output channels "
               f"prunable ({100 * cov['share']:.0f}%)")
    for g in result.groups:
        producers = ", ".join(p.node for p in g.producers)
        consumers = ", ".join(f"{c.node} (block {c.block})" for c in g.consumers)
        unit = "channels" if g.heads is None else (
            f"heads of {g.heads.head_dim}" if g.heads.queries_per_unit == 1 else
            f"K/V groups ({g.heads.queries_per_unit} query heads of {g.heads.head_dim} each)")
        click.echo(f"  {g.name}: {g.channels} {unit} of {producers} -> {consumers}")
        if g.passthrough:
            click.echo(f"      through {', '.join(g.passthrough)}")
    for s in result.skipped:
        click.echo(f"  left alone {s.node} ({s.op}): {s.reason}")
    for note in notes:
        click.echo(f"  note: {note}")


def _method_options(f):
    """Options shared by `prune` and `sweep`: how channels are chosen, refitted and budgeted."""
    options = [
        click.option("--mode", type=click.Choice(MODES), default="asym", show_default=True,
                     help="layer: original activations; seq: pruned-model activations; asym: pruned inputs, "
                          "original targets."),
        click.option("--reweight/--no-reweight", default=None,
                     help="Refit consumers by least squares [default: on; off for coreset without --calib]."),
        click.option("--ridge", default="auto", show_default=True, callback=_ridge, metavar="R|auto",
                     help="Ridge of the refit toward the layer's own weights, relative to the mean diagonal of its "
                          "Gram; auto: chosen per layer by generalized cross-validation (only where a layer has "
                          "fewer than 32 calibration rows per input feature; else 1e-6)."),
        click.option("--refit", type=click.Choice(["consumers", "all"]), default=None,
                     help="seq/asym: refit only the consumers of pruned groups, or also every other "
                          "Conv/Gemm/MatMul whose input drifted, to the original layer's output [default: all "
                          "with calibration data and reweighting; layer mode always refits the consumers only, "
                          "from the original activations]."),
        click.option("--residual-target", type=click.Choice(["sum", "branch"]), default=None,
                     help="asym: refit a layer that ends a residual branch to the original sum at its Add "
                          "minus the current skip path (also cancels the skip path's drift), or to its own "
                          "original output [default: sum with --refit all, else branch]."),
        click.option("--search", type=click.Choice(["none", "swap"]), default="none", show_default=True,
                     help="greedy: after the picks, swap one kept channel for a dropped one while that lowers "
                          "the layer's least-squares error (other methods ignore it)."),
        click.option("--allocation", type=click.Choice(ALLOCATIONS), default="uniform", show_default=True,
                     help="uniform: same keep fraction per group; error: balanced greedy reconstruction error."),
        click.option("--target", type=click.Choice(TARGETS), default="params", show_default=True,
                     help="What --compression counts: parameters or FLOPs."),
        click.option("--min-channels", type=int, default=1, show_default=True, help="Keep at least N per group."),
        click.option("--round-to", type=int, default=1, show_default=True,
                     help="Kept counts are multiples of K (groups smaller than K stay whole)."),
        click.option("--min-heads", type=int, default=1, show_default=True,
                     help="Keep at least N heads in every attention block (head groups ignore --min-channels "
                          "and --round-to)."),
        click.option("--heads-keep", type=float, metavar="F",
                     help="Keep this fraction of the heads in every attention block; --keep/--compression then "
                          "apply to the other groups (alone: the other groups stay whole)."),
        click.option("--ffn-keep", type=float, metavar="F",
                     help="Keep this fraction in every group that is not attention heads (FFN units, channels); "
                          "--keep/--compression then apply to the heads (alone: the heads stay whole)."),
        click.option("--coreset-beta", type=float, default=1.0, show_default=True,
                     help="coreset: bound on the input norm (cancels out for ReLU-like activations)."),
        click.option("--draw", type=click.Choice(DRAWS), default="systematic", show_default=True,
                     help="sampling/coreset: exact-k unbiased systematic draw, or the paper's with-replacement draw."),
        click.option("--seed", type=int, default=0, show_default=True),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _data_options(f):
    """Options shared by every command that runs the model on data."""
    options = [
        click.option("--samples", type=int,
                     help="Use the first N calibration samples [default: 512, or all if fewer]."),
        click.option("--batch-size", type=int, default=32, show_default=True, help="Samples per onnxruntime run."),
        click.option("--exclude", multiple=True, metavar="NAME", help="Leave this Conv/Gemm/MatMul node alone "
                     "(repeatable)."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--workers", type=click.IntRange(min=1), metavar="N",
                     help="Capture on N Ray workers (one core or GPU each), splitting the calibration batches "
                          "[default: 1, no Ray; with --ray-address: every CPU/GPU of the cluster]. Needs "
                          "onnxprune[ray]."),
        click.option("--ray-address", metavar="ADDR", help="Capture on the existing Ray cluster at ADDR."),
        click.option("--stats-dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
                     help="Precision of each batch's Gram products (the sums across batches are float64)."),
        click.option("--max-rows", default="auto", show_default=True, callback=_row_limit, metavar="N|auto|all",
                     help="Use at most N rows (output positions / tokens) of each layer per batch, drawn at random "
                          "(seeded) and weighted to stay unbiased; auto: max(4096, 16 x the layer's input "
                          "features), so only layers with far more rows than features are sub-sampled."),
        click.option("--row-mask", metavar="INPUT",
                     help="Model input marking real tokens (1) and padding (0): padding rows are left out of the "
                          "statistics of token-wise (Gemm/MatMul) consumers and of the output comparison "
                          "[default: the input named attention_mask (or input_mask) when the model has one]."),
        click.option("--no-row-mask", is_flag=True, help="Count every token position, padding included."),
        click.option("--metric", type=click.Choice(METRICS), default="auto", show_default=True,
                     help="How outputs are compared with the original's: argmax agreement (classifiers) or cosine "
                          "and relative error (embeddings, hidden states); auto decides per output."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@main.command(cls=_Command)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Where to write the pruned model.")
@click.option("--calib", type=click.Path(), help=".npz (array per input name, or one array) or .npy calibration inputs.")
@click.option("--calib-random", type=int, metavar="N", help="Use N standard-normal samples instead (smoke tests only).")
@source_options
@click.option("--keep", type=float, help="Fraction of channels kept in every group, 0 < F <= 1.")
@click.option("--compression", type=float, help="Target ratio original/pruned (>= 1) of parameters (or FLOPs).")
@click.option("--method", type=click.Choice(METHODS), default="greedy", show_default=True)
@_method_options
@_data_options
@click.option("--force", is_flag=True, help="Overwrite OUTPUT (and --report) if they exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document on stdout.")
@click.option("--report", type=click.Path(), help="Also write the JSON report to this file.")
@click.option("--no-timings", is_flag=True,
              help="Leave wall-clock times out of the report (seconds: null), so reruns give identical reports.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def prune(model, output, calib, calib_random, keep, compression, method, force, as_json, report, no_timings, quiet,
          **options):
    """Prune MODEL and write the smaller model to OUTPUT."""
    options["row_mask"] = row_mask_choice(options.pop("row_mask"), options.pop("no_row_mask"))
    source = source_request(calib, calib_random, **{k: options.pop(k) for k in SOURCE_OPTIONS})
    inputs = [model, calib, getattr(source, "path", None)]
    out = validate_output_path(output, inputs, force)
    if report:
        validate_output_path(report, inputs + [output], force)
    pruned, result = prune_model(model, source, keep=keep, compression=compression, method=method,
                                 calib_random=calib_random, progress=StderrProgress(enabled=not quiet), **options)
    result.output = str(out)
    if no_timings:
        result.seconds = None
    with Staged() as staged:          # model and report appear together, or neither does
        staged.add_model(pruned, out)
        if report:
            staged.add_bytes(report, result.to_json().encode())
    if as_json:
        sys.stdout.write(result.to_json())
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if result.verify.get("warning"):
        click.echo(f"warning: {result.verify['warning']}", err=True)
    extra = headline(result.verify)
    extra = f", {extra}" if extra else ""
    click.echo(f"pruned {model} -> {out}: {result.summary()}{extra}", err=True)


def row_mask_choice(name: str | None, off: bool):
    """The row_mask option from --row-mask NAME / --no-row-mask (None: automatic)."""
    if name is not None and off:
        raise OnnxPruneError("give either --row-mask INPUT or --no-row-mask, not both")
    return False if off else name


def _comma_list(convert):
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            items = [convert(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        if not items:
            raise click.BadParameter("give at least one value")
        return items
    return parse


def _method_name(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return name


@main.command(cls=_Command)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--calib", required=True, type=click.Path(),
              help="Calibration .npz/.npy; the last --holdout samples measure fidelity, never prune.")
@click.option("--compression", required=True, callback=_comma_list(float), metavar="R1,R2,...",
              help="Target ratios, e.g. 2,4,8,16.")
@click.option("--methods", default="greedy", show_default=True, callback=_comma_list(_method_name),
              metavar="M1,M2,...", help=f"Any of {', '.join(METHODS)}.")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder for the models, sweep.csv/json/png.")
@click.option("--eval", "eval_path", type=click.Path(), help="Labelled .npz: adds top-1 accuracy to the table.")
@click.option("--labels", metavar="KEY", help="Name of the label array in --eval [label, labels or y].")
@click.option("--holdout", type=int, default=256, show_default=True, help="Last N calibration samples held out.")
@click.option("--plot/--no-plot", default=None, help="Write sweep.png [default: when matplotlib is installed].")
@_method_options
@_data_options
@click.option("--force", is_flag=True, help="Overwrite existing files in OUT.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as one JSON document on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def sweep(model, calib, compression, methods, out_dir, eval_path, labels, holdout, plot, force, as_json, quiet,
          **options):
    """Prune MODEL with several methods at several ratios and tabulate the results."""
    options["row_mask"] = row_mask_choice(options.pop("row_mask"), options.pop("no_row_mask"))
    if plot is None and not plot_available():
        click.echo("note: matplotlib is not installed, so no sweep.png (pip install 'onnxprune[plot]')", err=True)
    doc = run_sweep(model, calib, compression, methods, out_dir, holdout=holdout, eval_path=eval_path,
                    labels=labels, plot=plot, force=force, progress=StderrProgress(enabled=not quiet), **options)
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    metric = headline_column(doc)
    click.echo(f"{'method':<14} {'target':>6} {'ratio':>7} {'FLOPs':>6} {metric:>17} {'seconds':>8}", err=True)
    for r in doc["rows"]:
        value = "n/a" if r[metric] is None else f"{r[metric]:.4f}"
        flops = "n/a" if r["flops_ratio"] is None else f"{r['flops_ratio']:.2f}"
        click.echo(f"{r['method']:<14} {r['target_ratio']:>6g} {r['compression']:>7.2f} {flops:>6} {value:>17} "
                   f"{r['seconds']:>8.1f}", err=True)
    click.echo(f"wrote {len(doc['rows'])} models and sweep.csv/sweep.json to {out_dir}", err=True)


@main.command("eval", cls=_Command)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--data", required=True, type=click.Path(), help=".npz with one array per model input (and labels).")
@click.option("--labels", metavar="KEY", help="Name of the label array [label, labels or y when present].")
@click.option("--reference", type=click.Path(), help="The original model: argmax agreement and output error.")
@click.option("--samples", type=int, help="Use the first N samples [default: all].")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--row-mask", metavar="INPUT", help="Input marking real tokens (1) and padding (0): padding rows of "
              "[samples, tokens, ...] outputs are not compared [default: attention_mask (or input_mask) when present].")
@click.option("--no-row-mask", is_flag=True, help="Compare every token position, padding included.")
@click.option("--metric", type=click.Choice(METRICS), default="auto", show_default=True,
              help="argmax agreement (classifiers) or cosine and relative error (embeddings); auto decides per output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document on stdout.")
def evaluate_command(model, data, labels, reference, samples, batch_size, device, row_mask, no_row_mask, metric,
                     as_json):
    """Top-1 accuracy of MODEL on labelled data, and/or its agreement with a reference model."""
    if batch_size <= 0:
        raise OnnxPruneError(f"--batch-size must be positive, got {batch_size}")
    row_mask = row_mask_choice(row_mask, no_row_mask)
    candidate = load_model(model)
    ref = load_model(reference) if reference else None
    eval_data = load_eval_data(data, candidate, labels, samples)
    result = evaluate(candidate, eval_data, ref, batch_size, resolve_device(device), row_mask, metric)
    for note in result["notes"]:
        click.echo(f"note: {note}", err=True)
    doc = {"schema_version": 1, "model": model, "data": data, "labels": eval_data.label_key, **result}
    if ref is not None:
        doc["reference"] = {"model": reference, **result["reference"]}
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
        return
    if doc["top1"] is not None:
        click.echo(f"top-1 {doc['top1']:.4f} on {doc['samples']} samples (labels '{eval_data.label_key}')")
    if ref is not None:
        click.echo(f"vs {reference}: {headline(doc['reference']) or 'n/a'}")
        for name, value in doc["reference"]["outputs"].items():
            click.echo(f"  {output_line(name, value)}")

