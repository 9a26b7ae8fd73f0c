"""Export ten small, realistically structured PyTorch models as ONNX test fixtures.

How to run (from the repository root)::

    pip install torch==2.13.0 onnx onnxruntime
    python tools/make_fixtures.py                       # all of them
    python tools/make_fixtures.py --only yolo_c2f       # just these (the others untouched)

Pin torch exactly (``torch==2.13.0``): an unpinned ``pip install torch`` pulls gigabytes of
CUDA packages. torch is used only by this script, never by the ``onnxprune`` package or its
tests: they read the committed files in ``tests/fixtures/``. The script runs on the CPU in a
few seconds and is deterministic (a rerun writes byte-identical files).

The models have random, *untrained* weights (``torch.manual_seed(0)`` before each model is
built); every BatchNorm gets random running statistics and affine parameters so that folding
it is not an identity, and every LayerNorm random affine parameters (with the default ones and
zeros the exporter would deduplicate them into one shared initializer plus Identity nodes).
They are exported in eval mode with the TorchScript exporter (``dynamo=False``), opset 17,
``do_constant_folding=True``, a dynamic batch axis (and a dynamic sequence axis for the token
models); the exporter writes IR version 8 (capped at 10 should a later exporter write more,
so that older onnxruntime releases load the files). Written to ``tests/fixtures/``:

``resnet_proj.onnx``
    narrow ResNet-18-style CNN: stem conv 3->8 + BN + ReLU, three stages of two BasicBlocks
    (widths 8, 16, 32), the first block of stages 2 and 3 with stride 2 and a projection
    shortcut (1x1 conv stride 2 + BN), global average pool, Linear 32->10. Input ``input``
    [N,3,32,32]. (Widths 16, 32, 64 would be 175 K parameters, ~700 KB.)
``mobilenetv2.onnx``
    MobileNetV2-style: stem conv 3->16 stride 2 + BN + ReLU6, four inverted residual blocks
    (expand ratio 4; 16->16 s1, 16->24 s2, 24->24 s1, 24->32 s2; residual when stride 1 and
    in == out), 1x1 conv 32->64 + BN + ReLU6, GAP, Linear 64->10. Input ``input`` [N,3,32,32].
``densenet.onnx``
    DenseNet-style: stem conv 3->16, dense block of 3 bottleneck layers (BN, ReLU, 1x1 conv
    ->32, BN, ReLU, 3x3 conv ->8, concatenated to the block input), transition (BN, ReLU,
    1x1 conv ->20, AvgPool 2), dense block of 2 layers, BN + ReLU + GAP + Linear ->10.
    Input ``input`` [N,3,32,32].
``bert_tiny.onnx``
    2-layer BERT-style encoder, hidden 32, 4 heads of 8, FFN 128 with exact (Erf) GELU,
    post-LayerNorm, vocabulary 200, learned positions (max 32); first-token pooling and a
    Linear 32->2 classifier. Inputs ``input_ids`` and ``attention_mask`` int64 [N,T] (T <= 32),
    output ``logits`` [N,2]. (Hidden 128 / FFN 512 would be ~400 K parameters, ~1.6 MB.)
``swiglu_mlp.onnx``
    token MLP: Linear 64->64, SwiGLU (gate and up Linear 64->128 without bias,
    silu(gate) * up, down Linear 128->64 without bias), residual add, Linear 64->10.
    Input ``x`` [N,T,64].
``nhwc_flatten.onnx``
    tf2onnx-style NHWC flatten: conv 3->8 3x3 pad 1 + ReLU, ``permute(0,2,3,1)`` and
    ``reshape(N, -1)`` (columns ordered h, w, c), Linear 512->32 + ReLU, Linear 32->10.
    Input ``input`` [N,3,8,8].
``yolo_c2f.onnx``
    YOLOv8-style detector piece (ultralytics ``Conv`` = Conv + BN + SiLU): stem 3->16 s2,
    conv 16->32 s2, C2f (cv1 1x1 32->32, ``split((16, 16), 1)``, a Bottleneck of two 3x3
    convs with a residual Add on the second half, Concat of the halves and the Bottleneck
    output, cv2 1x1 48->32), conv s2, a second such C2f, SPPF (1x1 32->16, MaxPool 5 s1 x3,
    Concat, 1x1 64->32), a neck-style C2f without the shortcut, and a decoupled head (box:
    3x3 32->16, 3x3 16->16, 1x1 ->16; cls: the same, 1x1 ->8), concatenated into ``logits``
    [N,24,4,4]. Input ``input`` [N,3,32,32]. The exporter writes the three Splits' sizes as
    one shared ``Constant`` node; it is turned into one shared int64 initializer (and any
    identical int64 initializers merged), as ultralytics exports after onnxslim carry it, and
    the script checks that three Splits read it.
``mobilenetv3_se.onnx``
    MobileNetV3-small-style: stem conv 3->16 s2 + hardswish, five inverted residual blocks
    (torchvision's config narrowed: 16/16/16 k3 SE ReLU s2 without the expand conv,
    16/48/24 k3 ReLU s2, 24/64/24 k3 ReLU s1, 24/96/32 k5 SE hardswish s2, 32/128/32 k5 SE
    hardswish s1; residual Add when stride 1 and in == out), squeeze-excitation
    ``x * HardSigmoid(Conv(Relu(Conv(GlobalAveragePool(x)))))``, 1x1 conv 32->96 + hardswish,
    GAP, Flatten, Linear 96->128, hardswish, Linear 128->10. Input ``input`` [N,3,32,32].
    Also written as ``mobilenetv3_se_dimneg.onnx``: the same file with every graph input and
    output batch dim stored as ``dim_value: -1`` instead of ``dim_param`` (as paddle2onnx
    writes it); it uses ``mobilenetv3_se_calib.npz``.

``resnet_option_a.onnx``, ``unet_decoder.onnx``
    see tools/fixture_models2.py (option-A zero-padded shortcuts; ConvTranspose decoder).

and for each ``<name>_calib.npz``: one float32 / int64 array per model input (float inputs
N(0,1); 32 samples for the 3x32x32 image models, whose 64-sample files would be ~730 KB
even compressed, 64 for the others). Every output is named ``logits``.

Each model is checked with ``onnx.checker.check_model(full_check=True)`` and run with
onnxruntime (CPU) on its calibration data, on a few other batch sizes (and for the token
models a shorter sequence length), against PyTorch (max abs diff < 1e-4), and so is every
``<name>_*.onnx`` variant. The script prints file sizes, parameter counts and the op-type
counts of every graph.

Byte-identical reruns hold on the same kind of CPU: the exporter's BatchNorm folding rounds
the last bit of a few folded weights differently on different x86 CPUs (on an AMD EPYC host
``resnet_proj``, ``mobilenetv2`` and ``densenet`` came out 1 ULP off the committed files, the
calibration files and the BN-free models identical). Use ``--only`` to regenerate just the
fixtures you changed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_export import OPSET, export_onnx
from fixture_models2 import ResNetOptionA, UNetDecoder

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "tests" / "fixtures"

TOL = 1e-4

# bert_tiny dimensions (hidden 128 / FFN 512 / vocab 1000 would be ~1.6 MB of fp32 weights).
BERT_VOCAB = 200
BERT_MAX_POS = 32
BERT_HIDDEN = 32
BERT_HEADS = 4
BERT_FFN = 4 * BERT_HIDDEN
BERT_LAYERS = 2
BERT_CALIB_T = 16

# 64 samples of float32 N(0,1) 3x32x32 images do not compress (~730 KB); 32 is ~365 KB.
IMAGE_CALIB_N = 32
CALIB_N = 64


# ---------------------------------------------------------------------------------------------
# helpers


def randomize_norms(model: nn.Module) -> None:
    """Random BN running stats and BN / LayerNorm affine parameters (as after training).

    BN folding is then not an identity, and no two LayerNorms have identical parameters (the
    exporter would otherwise merge them into one initializer referenced through Identity nodes).
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c) * 0.1)
                m.running_var.copy_(torch.rand(c) + 0.5)
                m.weight.copy_(torch.rand(c) + 0.5)
                m.bias.copy_(torch.randn(c) * 0.1)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape) * 0.1)


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


# ---------------------------------------------------------------------------------------------
# 1. ResNet with projection shortcuts


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:  # option B: projection shortcut
            self.downsample = conv_bn(cin, cout, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNetProj(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (8, 16, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers = []
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# ---------------------------------------------------------------------------------------------
# 2. MobileNetV2


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    CONFIG = ((16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6()
        )
        self.blocks = nn.Sequential(*(InvertedResidual(i, o, s) for i, o, s in self.CONFIG))
        self.head = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


# ---------------------------------------------------------------------------------------------
# 3. DenseNet


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int = 8, bottleneck: int = 32) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bottleneck, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck)
        self.conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.norm(x))))


def dense_block(channels: int, layers: int, growth: int) -> tuple:
    """`layers` DenseLayers in sequence, and the channel count they end with."""
    block = []
    for _ in range(layers):
        block.append(DenseLayer(channels, growth))
        channels += growth
    return nn.Sequential(*block), channels


class DenseNet(nn.Module):
    def __init__(self, growth: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.block1, c = dense_block(16, 3, growth)
        self.trans = Transition(c, 20)
        self.block2, c = dense_block(20, 2, growth)
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.trans(self.block1(self.stem(x))))
        x = F.relu(self.norm(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ---------------------------------------------------------------------------------------------
# 4. BERT-style encoder


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.view(n, t, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + mask_add, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        n, t = ctx.shape[:2]
        return self.out(ctx.view(n, t, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attn = SelfAttention(hidden, heads)
        self.ln1 = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, mask_add))
        h = self.ffn_out(F.gelu(self.ffn_in(x)))  # exact GELU: Div/Erf/Add/Mul/Mul
        return self.ln2(x + h)


class BertTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(BERT_VOCAB, BERT_HIDDEN)
        self.pos_emb = nn.Embedding(BERT_MAX_POS, BERT_HIDDEN)
        self.register_buffer(
            "position_ids", torch.arange(BERT_MAX_POS).unsqueeze(0), persistent=False
        )
        self.emb_ln = nn.LayerNorm(BERT_HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(
            EncoderLayer(BERT_HIDDEN, BERT_HEADS, BERT_FFN) for _ in range(BERT_LAYERS)
        )
        self.classifier = nn.Linear(BERT_HIDDEN, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.tok_emb(input_ids) + self.pos_emb(self.position_ids[:, :t])
        x = self.emb_ln(x)
        mask_add = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_add)
        return self.classifier(x[:, 0])


# ---------------------------------------------------------------------------------------------
# 5. SwiGLU MLP


class SwiGLUMLP(nn.Module):
    def __init__(self, dim: int = 64, hidden: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self.pre = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        h = self.down(F.silu(self.gate(x)) * self.up(x))
        return self.head(x + h)


# ---------------------------------------------------------------------------------------------
# 6. NHWC flatten (tf2onnx style)


class NHWCFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        x = x.permute(0, 2, 3, 1)  # NCHW -> NHWC
        x = x.reshape(x.shape[0], -1)  # columns ordered h, w, c (c fastest)
        return self.fc2(F.relu(self.fc1(x)))


# ---------------------------------------------------------------------------------------------
# 7. YOLOv8-style detector piece (C2f, SPPF, decoupled head)


class ConvBNSiLU(nn.Module):
    """ultralytics ``Conv``: Conv (no bias) + BN + SiLU (exported as Sigmoid + Mul, BN folded)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.bn(self.conv(x)))


class YoloBottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvBNSiLU(c, c, 3)
        self.cv2 = ConvBNSiLU(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """ultralytics C2f: cv1 -> split in halves -> n bottlenecks on the second half -> Concat -> cv2."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBNSiLU(cin, 2 * self.c, 1)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ultralytics C2f.forward_split; .chunk(2, 1) exports as Shape/Gather/Slice with a
        # dynamic batch, .split((c, c), 1) as Split with a sizes initializer
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 5) -> None:
        super().__init__()
        c = cin // 2
        self.cv1 = ConvBNSiLU(cin, c, 1)
        self.cv2 = ConvBNSiLU(4 * c, cout, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class YoloC2f(nn.Module):
    """Stem, two backbone C2f (residual Bottleneck), SPPF, a neck-style C2f without shortcut
    (as YOLOv8's neck), decoupled head. The three C2f are 32 wide: three Splits into [16, 16].

    The residual Add pairs the second half of cv1 with the Bottleneck output, which analysis
    refuses; the neck C2f's cv1 is prunable *through* its Split, so pruning rewrites the split
    sizes that the other two Splits share.
    """

    def __init__(self, box: int = 16, classes: int = 8, head: int = 16) -> None:
        super().__init__()
        self.stem = ConvBNSiLU(3, 16, 3, 2)           # 32 -> 16
        self.down1 = ConvBNSiLU(16, 32, 3, 2)         # 16 -> 8
        self.c2f1 = C2f(32, 32)
        self.down2 = ConvBNSiLU(32, 32, 3, 2)         # 8 -> 4
        self.c2f2 = C2f(32, 32)
        self.sppf = SPPF(32, 32)
        self.c2f3 = C2f(32, 32, shortcut=False)
        self.box = nn.Sequential(ConvBNSiLU(32, head, 3), ConvBNSiLU(head, head, 3), nn.Conv2d(head, box, 1))
        self.cls = nn.Sequential(ConvBNSiLU(32, head, 3), ConvBNSiLU(head, head, 3), nn.Conv2d(head, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c2f1(self.down1(self.stem(x)))
        x = self.c2f3(self.sppf(self.c2f2(self.down2(x))))
        return torch.cat([self.box(x), self.cls(x)], 1)


def share_int64_initializers(m: onnx.ModelProto) -> int:
    """Point every node input at one of each set of identical int64 initializers (as real
    exports do: the exporter may keep one split-sizes constant per Split); returns how many
    duplicates were dropped."""
    keep, rename = {}, {}
    for t in m.graph.initializer:
        if t.data_type == onnx.TensorProto.INT64:
            key = (tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes())
            if key in keep:
                rename[t.name] = keep[key]
            else:
                keep[key] = t.name
    if rename:
        for node in m.graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
        kept = [t for t in m.graph.initializer if t.name not in rename]
        del m.graph.initializer[:]
        m.graph.initializer.extend(kept)
    return len(rename)


def shared_split_sizes(m: onnx.ModelProto) -> dict:
    """split-sizes input name -> the Split nodes reading it."""
    out = {}
    for n in m.graph.node:
        if n.op_type == "Split" and len(n.input) > 1 and n.input[1]:
            out.setdefault(n.input[1], []).append(n.name)
    return out


def constants_to_initializers(m: onnx.ModelProto) -> int:
    """Turn `Constant` nodes (tensor `value`) into initializers, as constant-folded exports and
    onnxsim / onnxslim leave them; returns how many."""
    keep, moved = [], 0
    for node in m.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and list(attrs) == ["value"]:
            t = onnx.TensorProto()
            t.CopyFrom(attrs["value"].t)
            t.name = node.output[0]
            m.graph.initializer.append(t)
            moved += 1
        else:
            keep.append(node)
    if moved:
        del m.graph.node[:]
        m.graph.node.extend(keep)
    return moved


def yolo_postprocess(m: onnx.ModelProto, path: Path) -> None:
    # the TorchScript exporter shares one `Constant` node [16, 16] between the three Splits;
    # real exports (ultralytics, after onnxslim) carry it as one shared initializer
    if constants_to_initializers(m) + share_int64_initializers(m):
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, str(path))
    users = shared_split_sizes(m)
    assert any(len(v) >= 3 for v in users.values()), f"no split-sizes initializer shared by 3 Splits: {users}"


# ---------------------------------------------------------------------------------------------
# 8. MobileNetV3-small-style classifier (squeeze-excitation, hardswish)


class SqueezeExcite(nn.Module):
    """x * HardSigmoid(Conv(Relu(Conv(GlobalAveragePool(x)))))"""

    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.relu(self.fc1(self.pool(x))))
        return x * F.hardsigmoid(s)


class V3Block(nn.Module):
    """Inverted residual: [1x1 expand + BN + act], depthwise kxk + BN + act, [SE], 1x1 + BN."""

    def __init__(self, cin: int, exp: int, cout: int, k: int, se: bool, hs: bool, stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act()]
        layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act()]
        if se:
            layers.append(SqueezeExcite(exp, max(8, exp // 4)))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res else y


class MobileNetV3SE(nn.Module):
    # cin, expanded, cout, kernel, SE, hardswish, stride (torchvision mobilenet_v3_small, narrowed)
    CONFIG = (
        (16, 16, 16, 3, True, False, 2),
        (16, 48, 24, 3, False, False, 2),
        (24, 64, 24, 3, False, False, 1),
        (24, 96, 32, 5, True, True, 2),
        (32, 128, 32, 5, True, True, 1),
    )

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(*(V3Block(*c) for c in self.CONFIG))
        self.last = nn.Sequential(nn.Conv2d(32, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def batch_dim_minus_one(m: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph input/output batch dims are ``dim_value: -1`` (as paddle2onnx writes)."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for v in list(out.graph.input) + list(out.graph.output):
        d = v.type.tensor_type.shape.dim[0]
        d.ClearField("dim_param")
        d.dim_value = -1
    return out


def mobilenetv3_postprocess(m: onnx.ModelProto, path: Path) -> None:
    dimneg = batch_dim_minus_one(m)
    onnx.checker.check_model(dimneg)
    onnx.save(dimneg, str(path.with_name(path.stem + "_dimneg.onnx")))


# ---------------------------------------------------------------------------------------------
# calibration data


def image_calib(seed: int, n: int, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((n, *shape), dtype=np.float32)}


def token_vec_calib(seed: int, n: int = CALIB_N, t: int = 8, d: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, t, d), dtype=np.float32)}


def bert_calib(seed: int, n: int = CALIB_N, t: int = BERT_CALIB_T) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, BERT_VOCAB, size=(n, t), dtype=np.int64)
    lengths = rng.integers(8, t + 1, size=n)  # 8..16 real tokens, the rest padding
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps (byte-identical reruns)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# export and checks


class Fixture:
    def __init__(
        self,
        name: str,
        build: Callable[[], nn.Module],
        calib: Callable[[], dict[str, np.ndarray]],
        dynamic: dict[str, dict[int, str]],
        post: Callable[[onnx.ModelProto, Path], None] | None = None,
    ) -> None:
        self.name, self.build, self.calib, self.dynamic = name, build, calib, dynamic
        self.post = post          # after export: may rewrite the file or write variants


IMAGE_DYN = {"input": {0: "batch"}}
TOKEN_DYN = {0: "batch", 1: "seq"}
IMAGE = (3, 32, 32)

FIXTURES = [
    Fixture("resnet_proj", ResNetProj, lambda: image_calib(1, IMAGE_CALIB_N, IMAGE), IMAGE_DYN),
    Fixture("mobilenetv2", MobileNetV2, lambda: image_calib(2, IMAGE_CALIB_N, IMAGE), IMAGE_DYN),
    Fixture("densenet", DenseNet, lambda: image_calib(3, IMAGE_CALIB_N, IMAGE), IMAGE_DYN),
    Fixture(
        "bert_tiny",
        BertTiny,
        lambda: bert_calib(4),
        {"input_ids": TOKEN_DYN, "attention_mask": TOKEN_DYN},
    ),
    Fixture("swiglu_mlp", SwiGLUMLP, lambda: token_vec_calib(5), {"x": TOKEN_DYN}),
    Fixture("nhwc_flatten", NHWCFlatten, lambda: image_calib(6, CALIB_N, (3, 8, 8)), IMAGE_DYN),
    Fixture("yolo_c2f", YoloC2f, lambda: image_calib(7, IMAGE_CALIB_N, IMAGE), IMAGE_DYN, yolo_postprocess),
    Fixture("mobilenetv3_se", MobileNetV3SE, lambda: image_calib(8, IMAGE_CALIB_N, IMAGE), IMAGE_DYN,
            mobilenetv3_postprocess),
    # issue #16 (tools/fixture_models2.py): 16x16 inputs keep the calibration files small
    Fixture("resnet_option_a", ResNetOptionA, lambda: image_calib(9, IMAGE_CALIB_N, (3, 16, 16)), IMAGE_DYN),
    Fixture("unet_decoder", UNetDecoder, lambda: image_calib(10, IMAGE_CALIB_N, (3, 16, 16)), IMAGE_DYN),
]


def export(model: nn.Module, example: dict[str, np.ndarray], dynamic, path: Path) -> onnx.ModelProto:
    names = list(example)
    # a 2-sample example, so that no batch-size-1 special case is traced
    args = tuple(torch.from_numpy(example[k][:2]) for k in names)
    return export_onnx(model, args, path, names, dynamic)


def run_torch(model: nn.Module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def verify(
    model: nn.Module, sess: ort.InferenceSession, data: dict[str, np.ndarray], dynamic
) -> float:
    """Max abs diff onnxruntime vs torch: all calibration samples, batch 1 and 3, shorter T."""
    cases = [data] + [{k: v[:b] for k, v in data.items()} for b in (1, 3)]
    if any(1 in axes for axes in dynamic.values()):
        # token models: a shorter sequence checks the dynamic T axis
        cases.append({k: v[:5, :7] for k, v in data.items()})
    worst = 0.0
    for feeds in cases:
        ref = run_torch(model, feeds)
        got = sess.run(["logits"], feeds)[0]
        assert got.shape == ref.shape, (got.shape, ref.shape)
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def describe_nhwc(m: onnx.ModelProto) -> str:
    """The op chain from the Transpose to the first Gemm/MatMul (and the Reshape's shape input)."""
    nodes = list(m.graph.node)
    tr = next(n for n in nodes if n.op_type == "Transpose")
    perm = list(next(a for a in tr.attribute if a.name == "perm").ints)
    start = nodes.index(tr)
    end = next(i for i, n in enumerate(nodes) if n.op_type in ("Gemm", "MatMul"))
    chain = [f"{n.op_type}" for n in nodes[start : end + 1]]
    return f"Transpose perm {perm}; nodes from Transpose to first Gemm/MatMul: {chain}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--only", nargs="+", choices=[fx.name for fx in FIXTURES], metavar="NAME",
                    help="regenerate only these fixtures (default: all)")
    args = ap.parse_args()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}")

    for fx in FIXTURES:
        if args.only and fx.name not in args.only:
            continue
        torch.manual_seed(0)
        model = fx.build()
        randomize_norms(model)
        model.eval()
        data = fx.calib()
        path = out / f"{fx.name}.onnx"
        m = export(model, data, fx.dynamic, path)
        if fx.post is not None:
            fx.post(m, path)
        calib_path = out / f"{fx.name}_calib.npz"
        save_npz(calib_path, data)

        variants = [path] + sorted(out.glob(f"{fx.name}_*.onnx"))
        diff = 0.0
        for p in variants:
            sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            diff = max(diff, verify(model, sess, data, fx.dynamic))
        assert diff < TOL, f"{fx.name}: onnxruntime vs torch max abs diff {diff}"

        n_params = sum(p.numel() for p in model.parameters())
        n_init = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
        ops = Counter(n.op_type for n in m.graph.node)
        print(f"\n== {fx.name}")
        print(f"  {path.relative_to(REPO) if path.is_relative_to(REPO) else path}: "
              f"{path.stat().st_size:,} bytes, IR {m.ir_version}, opset {OPSET}")
        print(f"  {calib_path.name}: {calib_path.stat().st_size:,} bytes, "
              + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in data.items()))
        print(f"  torch parameters {n_params:,}; ONNX initializer elements {n_init:,}")
        print(f"  max abs diff onnxruntime vs torch: {diff:.2e}")
        print(f"  ops ({len(m.graph.node)}): {dict(sorted(ops.items()))}")
        if fx.name == "nhwc_flatten":
            print(f"  {describe_nhwc(m)}")
        inits = {t.name: t for t in m.graph.initializer}
        for sizes, users in shared_split_sizes(m).items():
            value = onnx.numpy_helper.to_array(inits[sizes]).tolist() if sizes in inits else "(not an initializer)"
            print(f"  Split sizes {sizes} {value} read by {len(users)} Splits")
        for p in variants[1:]:
            print(f"  variant {p.name}: {p.stat().st_size:,} bytes")

    print("\nsha256:")
    for p in sorted(out.glob("*")):
        if p.suffix in (".onnx", ".npz"):
            print(f"  {hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}")


if __name__ == "__main__":
    main()
