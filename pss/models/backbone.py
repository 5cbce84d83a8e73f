"""Backbones (torchvision ResNet, timm ResNeXt / Res2Net) and the FPN P3-P7.

``Backbone(cfg)`` maps a normalised image batch [B, 3, H, W] to five FPN maps
P3..P7, each [B, channels, H / s, W / s] for s = 8, 16, 32, 64, 128.

``resnet18_half`` is torchvision's ResNet-18 with every stage at half width
(32, 64, 128, 256 channels): a quarter of the FLOPs, about a third of the time of
a training step on a CPU core, for the smoke runs (it has no pretrained weights).

Options: frozen BatchNorm (or trainable BN / GroupNorm for training from
scratch), frozen stem and early stages, modulated deformable convs (DCNv2,
torchvision's ``deform_conv2d``) in the 3x3 convs of stages C3-C5, pretrained
weights from a local file or a torchvision weights enum name.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FrozenBatchNorm2d as _TorchvisionFrozenBN
from torchvision.ops import deform_conv2d

from pss.config import BackboneConfig
from pss.errors import UserError

TORCHVISION = {"resnet18", "resnet34", "resnet50", "resnet101"}
TIMM = {"resnext101_32x4d", "res2net101_26w_4s"}
HALF_RESNET18 = "resnet18_half"


class ModulatedDeformConv(nn.Module):
    """DCNv2: a 3x3 conv whose sampling offsets and mask come from a small conv.

    Built from an existing ``nn.Conv2d`` (weights copied); the offset conv starts
    at zero, so at initialisation it samples the regular grid with mask 0.5.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        kh, kw = conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.conv_offset = nn.Conv2d(
            conv.in_channels,
            3 * kh * kw,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        o1, o2, mask = self.conv_offset(x).chunk(3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        return deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask.sigmoid(),
        )


class FrozenBatchNorm2d(_TorchvisionFrozenBN):
    """torchvision's frozen BatchNorm (fixed statistics and affine), in its input's dtype.

    torchvision's multiplies by float32 buffers, so under float16 / bfloat16 autocast
    every frozen BN returns float32: the backbone's activations, ReLUs and residual
    sums ran in float32 between half-precision convolutions, each conv casting its
    input back. Here the affine is cast to the input's dtype first (float32: the same
    arithmetic as torchvision's). x [B, C, H, W] -> [B, C, H, W].
    """

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype)[None, :, None, None] + bias.to(x.dtype)[None, :, None, None]


def _replace_norms(module: nn.Module, kind: str) -> None:
    """Swap every BatchNorm2d for FrozenBatchNorm2d (stats copied) or GroupNorm."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            if kind == "frozen_bn":
                new: nn.Module = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(new, key).copy_(getattr(child, key).detach())
            else:  # gn
                groups = 32 if child.num_features % 32 == 0 else 1
                new = nn.GroupNorm(groups, child.num_features)
            setattr(module, name, new)
        else:
            _replace_norms(child, kind)


def _add_dcn(stage: nn.Module) -> None:
    """Make every 3x3 conv of the residual branches of a stage deformable."""
    for block in stage.children():
        for name, child in list(block.named_modules()):
            if "downsample" in name or not isinstance(child, nn.Conv2d):
                continue
            if child.kernel_size == (3, 3):
                parent = block.get_submodule(name.rpartition(".")[0]) if "." in name else block
                setattr(parent, name.rpartition(".")[2], ModulatedDeformConv(child))


def load_state_dict_file(path: str) -> dict[str, Tensor]:
    """A state dict from a .pth/.pt (weights_only) or .safetensors file."""
    file = Path(path)
    if not file.is_file():
        raise UserError("backbone weights file not found", path)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        raise UserError(f"cannot read backbone weights: {exc}", path) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError("backbone weights file holds no state dict", path)
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}


def half_width_resnet18() -> torchvision.models.ResNet:
    """torchvision's ResNet-18 with its stem and four stages at half width (32-256 channels)."""
    net = torchvision.models.resnet18(weights=None)
    widths = (32, 64, 128, 256)
    net.inplanes = widths[0]
    net.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    for i, width in enumerate(widths):
        stage = net._make_layer(BasicBlock, width, 2, stride=1 if i == 0 else 2)
        setattr(net, f"layer{i + 1}", stage)
    net.fc = nn.Linear(widths[-1], net.fc.out_features)
    for m in net.modules():  # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def _load_weights(net: nn.Module, weights: str, name: str) -> None:
    if Path(weights).suffix in {".pth", ".pt", ".bin", ".safetensors"} or "/" in weights:
        state = load_state_dict_file(weights)
        try:
            missing, _ = net.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            detail = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
            raise UserError(f"backbone weights do not fit {name}: {detail}", weights) from None
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing:
            raise UserError(
                f"backbone weights do not fit {name}: {len(missing)} missing keys, "
                f"e.g. {missing[:3]}",
                weights,
            )
        return
    if name == HALF_RESNET18:
        raise UserError(
            f"{name} has no pretrained weights '{weights}': use weights: null or a file path"
        )
    if name not in TORCHVISION:
        raise UserError(
            f"weights '{weights}' for {name}: use a file path (.pth/.safetensors) or DEFAULT "
            "(timm's pretrained weights, downloaded on first use)"
        )
    try:
        enum = torchvision.models.get_model_weights(name)[weights]
    except KeyError:
        options = [w.name for w in torchvision.models.get_model_weights(name)]
        raise UserError(f"unknown weights '{weights}' for {name}; choose from {options}") from None
    net.load_state_dict(enum.get_state_dict(progress=True))


class _Body(nn.Module):
    """ResNet-style trunk: returns [C3, C4, C5]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1 = net.conv1, net.bn1
        self.act = nn.ReLU(inplace=True)
        self.maxpool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


def build_body(cfg: BackboneConfig) -> tuple[nn.Module, list[int]]:
    """The trunk and the channel counts of C3, C4, C5."""
    if cfg.name in TORCHVISION:
        net = getattr(torchvision.models, cfg.name)(weights=None)
    elif cfg.name == HALF_RESNET18:
        net = half_width_resnet18()
    else:
        try:
            import timm
        except ImportError:
            raise UserError(f"backbone {cfg.name} needs timm: pip install 'pss[timm]'") from None
        net = timm.create_model(cfg.name, pretrained=cfg.weights == "DEFAULT")
    if cfg.weights and not (cfg.name in TIMM and cfg.weights == "DEFAULT"):
        _load_weights(net, cfg.weights, cfg.name)
    if cfg.norm != "bn":
        _replace_norms(net, cfg.norm)
    body = _Body(net)
    if cfg.dcn:
        for stage in (body.layer2, body.layer3, body.layer4):
            _add_dcn(stage)
    for module in frozen_modules(body, cfg.frozen_stages):
        module.requires_grad_(False)
    with torch.no_grad():
        channels = [c.shape[1] for c in body.eval()(torch.zeros(1, 3, 64, 64))]
    body.train()
    return body, channels


def frozen_modules(body: _Body, frozen_stages: int) -> list[nn.Module]:
    """Stem (conv1, bn1) for frozen_stages >= 0, then layer1..layer{frozen_stages}."""
    if frozen_stages < 0:
        return []
    stages = [body.layer1, body.layer2, body.layer3, body.layer4]
    return [body.conv1, body.bn1, *stages[:frozen_stages]]


class FPN(nn.Module):
    """Feature pyramid P3-P7; P6/P7 from extra stride-2 convs on P5 (ReLU before P7)."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels
        )
        self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.output, laterals)]
        p6 = self.p6(outs[-1])
        p7 = self.p7(F.relu(p6))
        return outs + [p6, p7]


class Backbone(nn.Module):
    """Trunk + FPN: [B, 3, H, W] -> five maps [B, channels, H/s, W/s], s = 8..128."""

    strides = (8, 16, 32, 64, 128)

    def __init__(self, cfg: BackboneConfig, channels: int) -> None:
        super().__init__()
        self.frozen_stages = cfg.frozen_stages
        self.body, in_channels = build_body(cfg)
        self.fpn = FPN(in_channels, channels)

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.fpn(self.body(images))

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        # Frozen stages stay in eval mode (matters for trainable BN only).
        for module in frozen_modules(self.body, self.frozen_stages):
            module.eval()
        return self
