"""resnet18_half, the smoke runs' backbone: ResNet-18 with every stage at half width."""

from __future__ import annotations

import pytest
import torch
import torchvision

from pss.config import BackboneConfig
from pss.errors import UserError
from pss.models.backbone import Backbone, build_body, half_width_resnet18


def test_half_width_stages_and_a_quarter_of_the_weights():
    body, channels = build_body(BackboneConfig(name="resnet18_half", norm="bn", frozen_stages=-1))
    assert channels == [64, 128, 256]  # C3, C4, C5: half of ResNet-18's 128, 256, 512
    full, _ = build_body(BackboneConfig(name="resnet18", norm="bn", frozen_stages=-1))
    ours = sum(p.numel() for p in body.parameters())
    theirs = sum(p.numel() for p in full.parameters())
    assert ours == 2_798_880 and 0.24 < ours / theirs < 0.26  # 3x3 convs: (c/2)^2 = c^2/4


def test_same_blocks_as_torchvision_resnet18():
    half, full = half_width_resnet18(), torchvision.models.resnet18()
    for name in ("layer1", "layer2", "layer3", "layer4"):
        ours, theirs = getattr(half, name), getattr(full, name)
        assert [type(b) for b in ours] == [type(b) for b in theirs]
        assert ours[0].conv1.stride == theirs[0].conv1.stride
        assert ours[0].conv1.out_channels * 2 == theirs[0].conv1.out_channels


def test_fpn_maps_at_strides_8_to_128():
    backbone = Backbone(BackboneConfig(name="resnet18_half", norm="bn", frozen_stages=-1), 32)
    maps = backbone(torch.zeros(2, 3, 128, 128))
    assert [tuple(m.shape) for m in maps] == [
        (2, 32, 16, 16),
        (2, 32, 8, 8),
        (2, 32, 4, 4),
        (2, 32, 2, 2),
        (2, 32, 1, 1),
    ]


def test_pretrained_weights_name_is_a_clear_error():
    with pytest.raises(UserError, match="resnet18_half has no pretrained weights"):
        build_body(BackboneConfig(name="resnet18_half", weights="IMAGENET1K_V1"))


def test_weights_from_a_file_of_the_same_network(tmp_path):
    net = half_width_resnet18()
    torch.save(net.state_dict(), tmp_path / "half.pth")
    body, _ = build_body(
        BackboneConfig(name="resnet18_half", weights=str(tmp_path / "half.pth"), norm="bn")
    )
    assert torch.equal(body.layer3[0].conv1.weight, net.layer3[0].conv1.weight)
