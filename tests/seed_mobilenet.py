"""The seed article's ``MobileNet`` (MobileNet v1) in PyTorch, re-indented, with its exact parameter names.

Source: ``shared/seeds/000_0158f158d2ed03f3.txt`` section 1.2. The code is the seed's; the only additions are
``width`` (applied with timm's ``round_channels`` rule, to build the 0.75/0.5/0.25 references; 1.0 is the
seed verbatim) and :class:`MobileNetAdaptive`, which swaps the seed's ``AvgPool2d(7)`` (valid only at 224 px,
where the last map is 7x7) for a global average pool so parity can run at small and odd sizes.
"""

import torch
import torch.nn as nn


def _ch(c, width):
    if width == 1.0:
        return c
    new_c = max(8, int(c * width + 4) // 8 * 8)  # timm/torchvision make_divisible(c * width, 8)
    return new_c + 8 if new_c < 0.9 * c * width else new_c


class MobileNet(nn.Module):
    def __init__(self, width=1.0):
        super(MobileNet, self).__init__()
        c = lambda v: _ch(v, width)  # noqa: E731
        self.last = c(1024)

        def conv_bn(inp, oup, stride):
            return nn.Sequential(
                nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
                nn.BatchNorm2d(oup),
                nn.ReLU(inplace=True)
            )

        def conv_dw(inp, oup, stride):
            return nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.ReLU(inplace=True),
                nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
                nn.ReLU(inplace=True),
            )

        self.model = nn.Sequential(
            conv_bn(3, c(32), 2),
            conv_dw(c(32), c(64), 1),
            conv_dw(c(64), c(128), 2),
            conv_dw(c(128), c(128), 1),
            conv_dw(c(128), c(256), 2),
            conv_dw(c(256), c(256), 1),
            conv_dw(c(256), c(512), 2),
            conv_dw(c(512), c(512), 1),
            conv_dw(c(512), c(512), 1),
            conv_dw(c(512), c(512), 1),
            conv_dw(c(512), c(512), 1),
            conv_dw(c(512), c(512), 1),
            conv_dw(c(512), c(1024), 2),
            conv_dw(c(1024), c(1024), 1),
            nn.AvgPool2d(7), )
        self.fc = nn.Linear(self.last, 1000)

    def forward(self, x):
        x = self.model(x)
        x = x.view(-1, self.last)
        x = self.fc(x)
        return x


class MobileNetAdaptive(MobileNet):
    """The seed's MobileNet with ``AdaptiveAvgPool2d(1)`` in place of ``AvgPool2d(7)`` (same keys)."""

    def __init__(self, width=1.0):
        super().__init__(width)
        self.model[14] = nn.AdaptiveAvgPool2d(1)
