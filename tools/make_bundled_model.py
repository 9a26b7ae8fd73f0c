"""Train and export the small MNIST CNN bundled with onnxprune (``models/``).

How to run (from the repository root)::

    pip install torch==2.13.0 onnx onnxruntime
    python tools/make_bundled_model.py

Pin torch exactly (``torch==2.13.0``): an unpinned ``pip install torch`` pulls gigabytes of
CUDA packages. The script runs on the CPU only (about 30 s on two cores).

What it does:

* reads ``../shared/data/mnist_calib.npz`` (5000 MNIST *training* images, a seeded sample of
  the official training split) and ``../shared/data/mnist_test.npz`` (the official 10000-image
  test set); both paths are arguments;
* trains, with ``torch.manual_seed(0)``, a small CNN on all 5000 calibration images with their
  labels (conv 1->16 + BN + ReLU + maxpool, conv 16->32 + BN + ReLU + maxpool, fc 1568->128 +
  ReLU + dropout, fc 128->10); input ``x.astype(float32) / 255`` of shape [N,1,28,28], the
  normalisation ``(x - 0.1307) / 0.3081`` is the first part of the model (and of the graph);
* exports ``models/mnist_cnn.onnx`` (opset 17, TorchScript exporter, batch axis dynamic,
  input ``input``, output ``logits``) and checks it with ``onnx.checker`` (full check) and
  onnxruntime (CPU) against the PyTorch outputs;
* writes ``models/mnist_cnn_calib.npz`` (``input``: the first 512 images of mnist_calib) and
  ``models/mnist_cnn_eval.npz`` (``input``, ``label``: the first 1000 images of mnist_test);
* prints the test accuracy of the PyTorch model and of the ONNX model (full test set and the
  1000-image eval subset).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_export import export_onnx

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / ".." / "shared" / "data"

MEAN, STD = 0.1307, 0.3081


class MnistCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Scalar buffers, exported as the initializers "mean" and "std" (Sub, Div first).
        self.register_buffer("mean", torch.tensor(MEAN))
        self.register_buffer("std", torch.tensor(STD))
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        x = self.drop(F.relu(self.fc1(x)))
        return self.fc2(x)


def to_input(x_uint8: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,1,28,28] in [0,1] (the model's input convention)."""
    return (x_uint8.astype(np.float32) / 255)[:, None]


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to +-max_shift pixels (zero fill)."""
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


@torch.no_grad()
def torch_predict(model: nn.Module, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def train(x: np.ndarray, y: np.ndarray, epochs: int, batch: int, lr: float) -> MnistCNN:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(0)
    model = MnistCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (len(x) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y.astype(np.int64))
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        t0 = time.time()
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            xb = random_shift(xt[idx], gen)
            yb = yt[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        print(
            f"epoch {epoch + 1:2d}/{epochs}: loss {loss_sum / total:.4f} "
            f"train acc {correct / total:.4f} ({time.time() - t0:.1f}s)"
        )
    model.eval()
    return model


def export(model: nn.Module, path: Path) -> onnx.ModelProto:
    return export_onnx(model, (torch.zeros(1, 1, 28, 28),), path, ["input"], {"input": {0: "batch"}})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib", type=Path, default=DATA / "mnist_calib.npz")
    ap.add_argument("--test", type=Path, default=DATA / "mnist_test.npz")
    ap.add_argument("--out-dir", type=Path, default=REPO / "models")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-acc", type=float, default=0.97, help="fail below this test accuracy")
    args = ap.parse_args()

    calib = np.load(args.calib)
    test = np.load(args.test)
    x_train, y_train = to_input(calib["x"]), calib["y"]
    x_test, y_test = to_input(test["x"]), test["y"].astype(np.int64)
    print(f"train {x_train.shape}, test {x_test.shape}, torch {torch.__version__}")

    model = train(x_train, y_train, args.epochs, args.batch, args.lr)
    n_params = sum(p.numel() for p in model.parameters())
    torch_logits = torch_predict(model, x_test)
    torch_acc = float((torch_logits.argmax(1) == y_test).mean())
    print(f"parameters: {n_params:,}")
    print(f"torch test accuracy (10000): {torch_acc:.4f}")

    out = args.out_dir
    onnx_path = out / "mnist_cnn.onnx"
    m = export(model, onnx_path)
    print(
        f"exported {onnx_path} (IR {m.ir_version}, opset "
        f"{[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]})"
    )
    print("ops:", dict(Counter(n.op_type for n in m.graph.node)))

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_logits = np.concatenate(
        [sess.run(["logits"], {"input": x_test[i : i + 1000]})[0] for i in range(0, len(x_test), 1000)]
    )
    for n in (1, 3, 17):  # a few batch sizes, checks the dynamic batch axis too
        d = np.abs(sess.run(["logits"], {"input": x_test[:n]})[0] - torch_logits[:n]).max()
        assert d < 1e-4, f"onnxruntime vs torch max abs diff {d} (batch {n})"
    diff = float(np.abs(onnx_logits - torch_logits).max())
    print(f"onnxruntime vs torch: max abs diff {diff:.2e} over the test set")
    assert diff < 1e-4, diff
    onnx_acc = float((onnx_logits.argmax(1) == y_test).mean())
    eval_acc = float((onnx_logits[:1000].argmax(1) == y_test[:1000]).mean())
    print(f"onnx test accuracy (10000): {onnx_acc:.4f}")
    print(f"onnx eval-subset accuracy (first 1000 of test): {eval_acc:.4f}")

    np.savez_compressed(out / "mnist_cnn_calib.npz", input=x_train[:512])
    np.savez_compressed(out / "mnist_cnn_eval.npz", input=x_test[:1000], label=y_test[:1000])
    for f in ("mnist_cnn.onnx", "mnist_cnn_calib.npz", "mnist_cnn_eval.npz"):
        print(f"wrote {out / f} ({(out / f).stat().st_size:,} bytes)")

    if onnx_acc < args.min_acc:
        raise SystemExit(f"test accuracy {onnx_acc:.4f} below --min-acc {args.min_acc}")


if __name__ == "__main__":
    main()
