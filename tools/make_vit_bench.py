"""A ViT-S/16-shaped ONNX model with random weights, for the speed benchmark (issue 15).

    /path/to/venv-torch/bin/python tools/make_vit_bench.py [--out .bench/vit_s16]

12 pre-LN encoder layers, hidden 384, 6 heads, FFN 1536 (GELU), 224x224 input, patch 16
(196 patches + a class token = 197 tokens), HF-style separate query/key/value Linears. Weights
are random (seeded), so only the shapes and the time/memory of a prune mean anything, not the
accuracy. Writes MODEL.onnx (about 90 MB, under the gitignored .bench/) and calib.npz with 256
structured images (smooth random fields plus edges, normalised like ImageNet inputs).
Tools only: torch is never a dependency of the package.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_export import export_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        return x.reshape(b, t, self.heads, h // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
        y = (att @ v).transpose(1, 2)
        return self.out(y.reshape(y.shape[0], y.shape[1], -1))


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = Attention(hidden, heads)
        self.fc1, self.fc2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, layers=12, hidden=384, heads=6, ffn=1536, image=224, patch=16, classes=1000) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, hidden, patch, stride=patch)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, hidden) * 0.02)
        self.blocks = nn.ModuleList(Block(hidden, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


def images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth random colour fields with a few hard edges, ImageNet-normalised, NCHW float32."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bicubic",
                                        align_corners=False).numpy()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        a, b, c = rng.standard_normal(3)
        x[i] += 1.5 * (a * xx + b * yy > c * size)[None] * rng.standard_normal((3, 1, 1))
    x += 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    return ((x - x.mean()) / x.std()).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / ".bench" / "vit_s16")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    model = ViT()
    x = images(a.samples, 224, a.seed)
    export_onnx(model, (torch.from_numpy(x[:2]),), a.out / "model.onnx", ["input"], {"input": {0: "batch"}})
    np.savez(a.out / "calib.npz", input=x)
    print(a.out / "model.onnx", a.out / "calib.npz")


if __name__ == "__main__":
    main()
