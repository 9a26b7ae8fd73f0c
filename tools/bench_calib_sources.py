"""The same pruning from an image folder as from the equivalent .npz: model bytes, top-1, peak memory.

    python tools/bench_calib_sources.py [--model resnet56_cifar10] [--samples 512] [--compression 2]

Writes the first --samples calibration images of ../shared/data (CIFAR-10 or MNIST, the benchmark
protocol of docs/DESIGN.md §5) as PNG files into .bench/<dataset>_png_<n>/, then prunes the
model twice with the CLI (greedy asym): from the .npz of the same images (x / 255, float32 NCHW)
and from the folder with `--calib-images DIR --preprocess 0-1`. Prints a markdown table (top-1
on the whole test split, prune seconds, peak RSS of the pruning process) and whether the two
pruned models are byte-identical.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import DATASET, ROOT, SHARED, calibration_file, run_prune, top1  # noqa: E402


def png_folder(dataset: str, samples: int, work: Path) -> Path:
    from PIL import Image

    folder = work / f"{dataset}_png_{samples}"
    if not folder.exists() or len(list(folder.glob("*.png"))) != samples:
        folder.mkdir(parents=True, exist_ok=True)
        x = np.load(SHARED / "data" / f"{dataset}_calib.npz")["x"][:samples]
        for i, image in enumerate(x):
            Image.fromarray(image, mode="L" if image.ndim == 2 else "RGB").save(folder / f"{i:05d}.png")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56_cifar10", choices=sorted(DATASET))
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--compression", type=float, default=2.0)
    a = p.parse_args()
    dataset, work = DATASET[a.model], ROOT / ".bench"
    work.mkdir(exist_ok=True)
    model = SHARED / "models" / f"{a.model}.onnx"
    npz, folder = calibration_file(dataset, a.samples, 0, work), png_folder(dataset, a.samples, work)
    args = ["--compression", str(a.compression), "--samples", str(a.samples), "--no-timings"]
    print("| model | calibration | ratio | top-1 | prune s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    outputs = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for label, calib, extra in (("npz", npz, []),
                                    ("PNG folder", None, ["--calib-images", str(folder), "--preprocess", "0-1"])):
            out = Path(tmp) / f"{label.split()[0]}.onnx"
            report, wall, rss = run_prune(model, calib, out, args + extra)
            outputs.append(out.read_bytes())
            print(f"| {a.model} | {label} | {report['compression']:.2f} | {top1(out, dataset):.4f} | {wall:.1f} | "
                  f"{rss:.0f} |", flush=True)
    print(f"\npruned models byte-identical: {outputs[0] == outputs[1]}")


if __name__ == "__main__":
    main()
