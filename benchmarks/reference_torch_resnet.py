"""A PyTorch Bottleneck ResNet with torchvision's module structure and state-dict names; the parity oracle.

torchvision does not import beside the CPU torch here (STACK.md), so this is written from torchvision's
documented architecture: ``conv1`` 7x7/2 (padding 3) + ``bn1`` + ``relu`` + ``maxpool`` 3x3/2 (padding 1),
``layer1``..``layer4`` of ``Bottleneck`` blocks (``conv1`` 1x1, ``conv2`` 3x3 with the stride and groups,
``conv3`` 1x1 to 4 x planes, ``bn1..bn3``, ``downsample`` = Sequential(1x1 conv, BN) on the first block of a
stage when the shape changes), ``avgpool`` + ``fc``. Inner width = int(planes * width_per_group / 64) *
groups. A state dict saved from torchvision's ``wide_resnet50_2`` loads into
``TorchResNet(layers=(3, 4, 6, 3), width_per_group=128)`` with strict=True, and vice versa.
"""

from __future__ import annotations

import torch
from torch import nn


class TorchBottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5): stride on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, width_per_group=64):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TorchResNet(nn.Module):
    """torchvision's ResNet with Bottleneck blocks; ``features(x, taps)`` returns the tapped stage outputs."""

    def __init__(self, layers=(3, 4, 6, 3), width_per_group=64, groups=1, base_width=64, num_classes=1000):
        super().__init__()
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for stage, blocks in enumerate(layers):
            planes = base_width * 2**stage
            setattr(
                self,
                f"layer{stage + 1}",
                self._make_layer(planes, blocks, 1 if stage == 0 else 2, groups, width_per_group),
            )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, planes, blocks, stride, groups, width_per_group):
        out = planes * TorchBottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        stack = [TorchBottleneck(self.inplanes, planes, stride, downsample, groups, width_per_group)]
        self.inplanes = out
        stack += [TorchBottleneck(out, planes, 1, None, groups, width_per_group) for _ in range(1, blocks)]
        return nn.Sequential(*stack)

    def features(self, x: torch.Tensor, taps=("layer2", "layer3")) -> tuple[torch.Tensor, ...]:
        """x (B, 3, H, W) -> tapped (B, C, h, w) outputs of layer{k}[-1] (after its ReLU), in taps order."""
        outputs = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            outputs[name] = x
        outputs["logits"] = self.fc(torch.flatten(self.avgpool(x), 1))
        return tuple(outputs[t] for t in taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, ("logits",))[0]


def load_time_bn_update(model: TorchResNet, image_size: int, through: str = "layer3") -> TorchResNet:
    """What the original PatchCore code does to its backbone at load time, with PyTorch's own BatchNorm: the
    model in train mode runs one forward of ``torch.ones(1, 3, S, S)`` (no normalisation) up to the deepest
    extracted stage (its forward hook stops there), which moves the running statistics of every BatchNorm on
    the way by momentum 0.1; then eval mode. Modifies and returns ``model``."""
    stages = ("layer1", "layer2", "layer3", "layer4")
    model.train()
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(torch.ones(1, 3, image_size, image_size)))))
        for name in stages[: stages.index(through) + 1]:
            x = getattr(model, name)(x)
    return model.eval()
