"""The `onnxprune` command: a thin layer over the Python API (the only module using click).

User errors print one line on stderr and exit 1; usage errors exit 2 (click); a model with
nothing to prune exits 3; Ctrl-C exits 130. Nothing is written unless the whole run succeeds.
"""
from __future__ import annotations

import json
import sys

import click

from . import __version__
from .analyze import analyze as analyze_model
from .atomic import Staged
from .errors import NothingToPrune, OnnxPruneError
from .graph import GraphIndex
from .modelio import load_model, validate_output_path
from .pipeline import MODES, prune as prune_model
from .progress import StderrProgress
from .reweight import DEFAULT_RIDGE
from .select import METHODS

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


@main.command(cls=_Command)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--exclude", multiple=True, metavar="NAME", help="Leave this Conv/Gemm/MatMul node alone (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def analyze(model, exclude, as_json):
    """List prunable channel groups and the layers left alone, with reasons."""
    loaded = load_model(model)
    index = GraphIndex.build(loaded)
    result = analyze_model(loaded, exclude, index)
    if as_json:
        doc = {"schema_version": 1, "input": model, **result.to_dict(index)}
        click.echo(json.dumps(doc, indent=2))
        return
    cov = result.coverage(index)
    click.echo(f"{len(result.groups)} prunable group(s); {len(result.skipped)} layer(s) left alone; "
               f"{cov['prunable_channels']}/{cov['total_channels']} Conv/Gemm/MatMul output channels "
               f"prunable ({100 * cov['share']:.0f}%)")
    for g in result.groups:
        producers = ", ".join(p.node for p in g.producers)
        consumers = ", ".join(f"{c.node} (block {c.block})" for c in g.consumers)
        click.echo(f"  {g.name}: {g.channels} channels of {producers} -> {consumers}")
        if g.passthrough:
            click.echo(f"      through {', '.join(g.passthrough)}")
    for s in result.skipped:
        click.echo(f"  left alone {s.node} ({s.op}): {s.reason}")


@main.command(cls=_Command)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Where to write the pruned model.")
@click.option("--calib", type=click.Path(), help=".npz (array per input name, or one array) or .npy calibration inputs.")
@click.option("--calib-random", type=int, metavar="N", help="Use N standard-normal samples instead (smoke tests only).")
@click.option("--samples", type=int, help="Use the first N calibration samples [default: 512, or all if fewer].")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Samples per onnxruntime run.")
@click.option("--keep", type=float, help="Fraction of channels kept in every group, 0 < F <= 1.")
@click.option("--compression", type=float, help="Target parameter ratio original/pruned (>= 1).")
@click.option("--method", type=click.Choice(METHODS), default="greedy", show_default=True)
@click.option("--mode", type=click.Choice(MODES), default="asym", show_default=True,
              help="layer: original activations; seq: pruned-model activations; asym: pruned inputs, original targets.")
@click.option("--reweight/--no-reweight", default=True, show_default=True, help="Refit consumers by least squares.")
@click.option("--ridge", type=float, default=DEFAULT_RIDGE, show_default=True, help="Relative ridge of the refit.")
@click.option("--row-mask", metavar="INPUT",
              help="Model input marking real tokens (1) and padding (0), e.g. attention_mask: padding rows are "
                   "left out of the statistics of token-wise (Gemm/MatMul) consumers.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--exclude", multiple=True, metavar="NAME", help="Leave this Conv/Gemm/MatMul node alone (repeatable).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT (and --report) if they exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document on stdout.")
@click.option("--report", type=click.Path(), help="Also write the JSON report to this file.")
@click.option("--no-timings", is_flag=True,
              help="Leave wall-clock times out of the report (seconds: null), so reruns give identical reports.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def prune(model, output, calib, calib_random, samples, batch_size, keep, compression, method, mode, reweight, ridge,
          row_mask, seed, exclude, device, force, as_json, report, no_timings, quiet):
    """Prune MODEL and write the smaller model to OUTPUT."""
    inputs = [model, calib]
    out = validate_output_path(output, inputs, force)
    if report:
        validate_output_path(report, inputs + [output], force)
    pruned, result = prune_model(
        model, calib, keep=keep, compression=compression, method=method, mode=mode, reweight=reweight,
        seed=seed, exclude=exclude, samples=samples, batch_size=batch_size, calib_random=calib_random,
        device=device, ridge=ridge, row_mask=row_mask, progress=StderrProgress(enabled=not quiet),
    )
    result.output = str(out)
    if no_timings:
        result.seconds = None
    with Staged() as staged:          # model and report appear together, or neither does
        staged.add_model(pruned, out)
        if report:
            staged.add_bytes(report, result.to_json().encode())
    if as_json:
        sys.stdout.write(result.to_json())
    agreement = result.verify.get("argmax_agreement")
    extra = f", argmax agreement {agreement:.3f}" if agreement is not None else ""
    click.echo(f"pruned {model} -> {out}: {result.summary()}{extra}", err=True)


if __name__ == "__main__":
    main()
