"""PyTorch reference 3D-ShuffleNets for the parity tests.

A port of ``models/shufflenet.py`` and ``models/shufflenetv2.py`` from
okankop/Efficient-3DCNNs (Kopuklu et al., ICCVW 2019), which is not pip
installable. Module names (and therefore ``state_dict`` keys, including the
reference's ``banch1``/``banch2`` spelling) and every computation follow the
reference; only the Python 2-era idioms (``Variable``, ``x.data.size()``) are
modernized. It is deliberately independent of ``vkd_jax``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(inp: int, oup: int, stride) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(inp, oup, kernel_size=3, stride=stride, padding=(1, 1, 1), bias=False),
        nn.BatchNorm3d(oup),
        nn.ReLU(inplace=True),
    )


def conv_1x1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm3d(oup), nn.ReLU(inplace=True)
    )


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, t, h, w = x.shape
    x = x.view(b, groups, c // groups, t, h, w)
    return x.permute(0, 2, 1, 3, 4, 5).contiguous().view(b, c, t, h, w)


# ----------------------------------------------------------------- v1 (shufflenet.py)
class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        self.groups = groups
        mid_planes = out_planes // 4
        if self.stride == 2:
            out_planes = out_planes - in_planes
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv3d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm3d(mid_planes)
        self.conv2 = nn.Conv3d(
            mid_planes,
            mid_planes,
            kernel_size=3,
            stride=stride,
            padding=1,
            groups=mid_planes,
            bias=False,
        )
        self.bn2 = nn.BatchNorm3d(mid_planes)
        self.conv3 = nn.Conv3d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm3d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        if stride == 2:
            self.shortcut = nn.AvgPool3d(kernel_size=(2, 3, 3), stride=2, padding=(0, 1, 1))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.groups)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return self.relu(torch.cat([out, self.shortcut(x)], 1))
        return self.relu(out + x)


class ShuffleNet(nn.Module):
    def __init__(self, groups: int = 3, width_mult: float = 1, num_classes: int = 400):
        super().__init__()
        self.groups = groups
        num_blocks = [4, 8, 4]
        out_planes = {
            1: [24, 144, 288, 567],
            2: [24, 200, 400, 800],
            3: [24, 240, 480, 960],
            4: [24, 272, 544, 1088],
            8: [24, 384, 768, 1536],
        }[groups]
        out_planes = [int(i * width_mult) for i in out_planes]
        self.in_planes = out_planes[0]
        self.conv1 = conv_bn(3, self.in_planes, stride=(1, 2, 2))
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(out_planes[1], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[2], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[3], num_blocks[2], groups)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(out_planes[3], num_classes))

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            layers.append(Bottleneck(self.in_planes, out_planes, stride=stride, groups=groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.maxpool(self.conv1(x))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool3d(out, out.shape[-3:])
        return self.classifier(out.view(out.size(0), -1))


# --------------------------------------------------------------- v2 (shufflenetv2.py)
class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int):
        super().__init__()
        self.stride = stride
        oup_inc = oup // 2
        if stride == 2:
            self.banch1 = nn.Sequential(
                nn.Conv3d(inp, inp, 3, stride, 1, groups=inp, bias=False),
                nn.BatchNorm3d(inp),
                nn.Conv3d(inp, oup_inc, 1, 1, 0, bias=False),
                nn.BatchNorm3d(oup_inc),
                nn.ReLU(inplace=True),
            )
        branch_in = oup_inc if stride == 1 else inp
        self.banch2 = nn.Sequential(
            nn.Conv3d(branch_in, oup_inc, 1, 1, 0, bias=False),
            nn.BatchNorm3d(oup_inc),
            nn.ReLU(inplace=True),
            nn.Conv3d(oup_inc, oup_inc, 3, stride, 1, groups=oup_inc, bias=False),
            nn.BatchNorm3d(oup_inc),
            nn.Conv3d(oup_inc, oup_inc, 1, 1, 0, bias=False),
            nn.BatchNorm3d(oup_inc),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        if self.stride == 1:
            c = x.shape[1] // 2
            out = torch.cat((x[:, :c], self.banch2(x[:, c:])), 1)
        else:
            out = torch.cat((self.banch1(x), self.banch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 600, sample_size: int = 112, width_mult: float = 1.0):
        super().__init__()
        assert sample_size % 16 == 0
        self.stage_repeats = [4, 8, 4]
        self.stage_out_channels = {
            0.25: [-1, 24, 32, 64, 128, 1024],
            0.5: [-1, 24, 48, 96, 192, 1024],
            1.0: [-1, 24, 116, 232, 464, 1024],
            1.5: [-1, 24, 176, 352, 704, 1024],
            2.0: [-1, 24, 224, 488, 976, 2048],
        }[width_mult]
        input_channel = self.stage_out_channels[1]
        self.conv1 = conv_bn(3, input_channel, stride=(1, 2, 2))
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        features = []
        for idxstage, numrepeat in enumerate(self.stage_repeats):
            output_channel = self.stage_out_channels[idxstage + 2]
            for i in range(numrepeat):
                features.append(InvertedResidual(input_channel, output_channel, 2 if i == 0 else 1))
                input_channel = output_channel
        self.features = nn.Sequential(*features)
        self.conv_last = conv_1x1x1_bn(input_channel, self.stage_out_channels[-1])
        self.classifier = nn.Sequential(
            nn.Dropout(0.2), nn.Linear(self.stage_out_channels[-1], num_classes)
        )

    def forward(self, x):
        out = self.maxpool(self.conv1(x))
        out = self.conv_last(self.features(out))
        out = F.avg_pool3d(out, out.shape[-3:])
        return self.classifier(out.view(out.size(0), -1))
