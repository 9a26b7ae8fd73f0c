"""Models of the second batch of real-world fixtures (issue #16); make_fixtures.py exports them.

``resnet_option_a``
    CIFAR ResNet (He et al. 2016, the ResNet-20/56 family) narrowed: stem conv 3->8 + BN +
    ReLU, three stages of two BasicBlocks (widths 8, 16, 32; stride 2 into stages 2 and 3),
    *option-A* shortcuts into stages 2 and 3: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``
    with p = planes // 4 zero channels before and after (channel c of a stage is channel c+p of
    the next), GAP, Linear 32->10. Input ``input`` [N,3,16,16].
``unet_decoder``
    U-Net-like encoder/decoder: enc conv 3->8 + BN + ReLU, down conv 8->16 s2 + BN + ReLU, mid
    conv 16->16 + ReLU, ConvTranspose 16->8 (k2 s2) + BN + ReLU, Concat with the encoder
    output, fuse conv 16->8 + ReLU, ConvTranspose 8->4 (k3 s2 pad 1 output_padding 1) + ReLU,
    1x1 conv 4->10, GAP -> ``logits`` [N,10]. Input ``input`` [N,3,16,16].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class OptionABlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if (stride != 1 or cin != cout) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad is None:
            shortcut = x
        else:   # option A: subsample, then zero channels before and after
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)
        return F.relu(out + shortcut)


class ResNetOptionA(nn.Module):
    def __init__(self, widths: tuple = (8, 16, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(OptionABlock(cin, w, stride), OptionABlock(w, w, 1)))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class UNetDecoder(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, stride=2), nn.BatchNorm2d(8), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.up2 = nn.Sequential(nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        h = self.up(self.mid(self.down(e)))
        h = self.up2(self.fuse(torch.cat([h, e], 1)))
        return F.adaptive_avg_pool2d(self.head(h), 1).flatten(1)
