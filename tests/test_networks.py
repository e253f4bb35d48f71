"""The ADM U-Net: shapes, conditioning, checkpoints and PaGoDA's growing."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pagoda.checkpoints import load_network, save_network
from pagoda.growth import grow
from pagoda.networks import UNet, UNetConfig, num_params

SMALL = UNetConfig(img_resolution=8, in_channels=1, out_channels=1, model_channels=16, channel_mult=(1, 2),
                   num_res_blocks=1, num_classes=10, norm_groups=8)


def perturbed(net, scale=0.05, seed=0):
    # Zero-initialised layers would make every identity trivially true: give all weights random values.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return net


def inputs(n=3, res=8, ch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, ch, res, res, generator=g), torch.full((n,), 0.7), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("cfg", [
    SMALL,
    dataclasses.replace(SMALL, attention_resolutions=(4,), num_head_channels=8),
    dataclasses.replace(SMALL, resblock_updown=False, use_scale_shift_norm=False),
    dataclasses.replace(SMALL, img_resolution=16, in_channels=3, out_channels=3, channel_mult=(1, 2, 2)),
])
def test_forward_shapes(cfg):
    net = UNet(cfg)
    x, t, y = inputs(res=cfg.img_resolution, ch=cfg.in_channels)
    assert net(x, t, y).shape == x.shape


def test_zero_initialised_output_and_label_conditioning():
    net = UNet(SMALL)
    x, t, y = inputs()
    assert net(x, t, y).abs().max().item() == 0  # ADM zero-initialises the head conv
    perturbed(net)
    out = net(x, t, y)
    assert not torch.allclose(out, net(x, t, (y + 1) % 10))
    assert not torch.allclose(out, net(x, t * 2, y))
    with pytest.raises(ValueError, match="labels"):
        net(x, t)


def test_attention_heads_follow_num_head_channels():
    cfg = dataclasses.replace(SMALL, attention_resolutions=(8, 4), num_head_channels=8)
    net = UNet(cfg)
    heads = [m.num_heads for m in net.modules() if m.__class__.__name__ == "AttentionBlock"]
    assert heads and set(heads) <= {2, 4}


def test_checkpoint_round_trip(tmp_path):
    net = perturbed(UNet(dataclasses.replace(SMALL, growth_head="shared")))
    net = grow(net)
    ema = perturbed(grow(perturbed(UNet(dataclasses.replace(SMALL, growth_head="shared")))), seed=3)
    save_network(tmp_path / "n.pt", net, kind="decoder", ema=ema, meta={"a": 1})
    loaded, meta = load_network(tmp_path / "n.pt", which="ema")
    x, t, y = inputs()
    assert meta == {"a": 1}
    assert loaded.config == net.config
    torch.testing.assert_close(loaded(x, t, y), ema(x, t, y))
    with pytest.raises(ValueError, match="decoder"):
        load_network(tmp_path / "n.pt", expect_kind="teacher")


@pytest.mark.parametrize("factors", [(2,), (2, 2), (4,)])
def test_grown_network_starts_as_nearest_upsampled_copy(factors):
    net = perturbed(UNet(SMALL))
    x, t, y = inputs()
    base = net(x, t, y)
    grown, total = net, 1
    for f in factors:
        grown = grow(grown, factor=f)
        total *= f
    out = grown(x, t, y)
    assert out.shape[-1] == 8 * total == grown.config.out_resolution
    torch.testing.assert_close(out, F.interpolate(base, scale_factor=total, mode="nearest"), rtol=1e-5, atol=1e-6)
    # Once the new layers move away from zero the output is no longer a plain upsampling.
    perturbed(grown, seed=5)
    assert not torch.allclose(grown(x, t, y), F.interpolate(base, scale_factor=total, mode="nearest"), atol=1e-3)


def test_grow_adds_levels_without_touching_old_weights():
    net = perturbed(UNet(SMALL))
    grown = grow(net, factor=4, channels=24, num_res_blocks=1)
    assert len(grown.config.growth) == 2
    assert grown.output_blocks[-1][0].in_layers[-1].out_channels == 24
    old = net.state_dict()
    for name, v in grown.state_dict().items():
        if name in old:
            assert torch.equal(v, old[name]), name
    assert num_params(grown) > num_params(net)
    x, t, y = inputs()
    torch.testing.assert_close(grown(x, t, y), F.interpolate(net(x, t, y), scale_factor=4))


def test_shared_head_is_only_approximately_an_upsampled_copy():
    # The released code moves the 3x3 head to the new resolution; a 3x3 conv does not commute with
    # nearest upsampling, which is why "residual" is the default.
    net = perturbed(UNet(dataclasses.replace(SMALL, growth_head="shared")))
    x, t, y = inputs()
    grown = grow(net)
    assert grown(x, t, y).shape[-1] == 16
    assert not torch.allclose(grown(x, t, y), F.interpolate(net(x, t, y), scale_factor=2), atol=1e-4)
    with pytest.raises(ValueError, match="growth channels"):
        grow(net, channels=24)
    with pytest.raises(ValueError, match="power of two"):
        grow(net, factor=3)
