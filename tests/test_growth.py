"""Stage 3: growing the decoder: exact start, freezing, resumption, shapes, placement."""

import pytest
import torch
import torch.nn.functional as F

from pagoda import decoder, encode, loop
from pagoda.checkpoints import load_network, save_network
from pagoda.data import load_dataset
from pagoda.discriminator import ProjectedDiscriminator
from pagoda.features import EfficientNetLite0
from pagoda.losses import ReconstructionDistance


@pytest.fixture(scope="module")
def latents(tiny_teacher, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents")
    encode.encode_dataset(teacher_path=tiny_teacher, data_dir=tiny_data, resolution=8, out_dir=out, n_images=12,
                          num_points=6, shard_size=8, progress=False, device="cpu")
    return out


@pytest.fixture(scope="module")
def base_decoder(tiny_teacher, tiny_data, latents, tmp_path_factory):
    """A Stage-2 decoder after a few steps, so that no layer is at its initial value."""
    run = tmp_path_factory.mktemp("base")
    decoder.train_decoder(data_dir=tiny_data, latents_dir=latents, init_path=tiny_teacher, run_dir=run,
                          out_path=run / "decoder.pt", resolution=8, steps=3, batch_size=8, feature_size=32,
                          device="cpu", progress=False)
    return run / "decoder.pt"


def test_grown_decoder_starts_as_nearest_upsampled_parent(base_decoder):
    parent, _ = load_network(base_decoder)
    z, y = 80 * torch.randn(5, 1, 8, 8), torch.arange(5)
    expected = decoder.generate(parent, z, y)
    for res in (16, 32):  # a 2x and a 4x growth from the same checkpoint
        grown = decoder.init_decoder(base_decoder, resolution=res)
        out = decoder.generate(grown, z, y)
        assert out.shape == (5, 1, res, res)
        torch.testing.assert_close(out, F.interpolate(expected, scale_factor=res // 8, mode="nearest"))


def test_freezing_follows_the_paper_policy_and_its_override(base_decoder):
    grown = decoder.init_decoder(base_decoder, resolution=16)
    nb = grown.num_base_output_blocks  # tiny net: 2 levels x 2 output blocks
    k = decoder.paper_trainable_output_blocks(grown.config)
    assert k == 3  # ADM-64 (3 blocks per level) gives 7, i.e. the released code's output_blocks[9:]
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in grown.named_parameters() if p.requires_grad}
    assert {f"output_blocks.{i}" for i in range(nb - k, len(grown.output_blocks))} <= trainable
    assert f"output_blocks.{nb - k - 1}" not in trainable
    assert not any(p.requires_grad for p in grown.input_blocks.parameters())
    assert not any(p.requires_grad for p in grown.middle_block.parameters())
    assert not any(p.requires_grad for p in grown.time_embed.parameters())
    assert all(p.requires_grad for p in grown.growth_heads.parameters())
    none = decoder.init_decoder(base_decoder, resolution=16, trainable_output_blocks=0)
    assert not any(p.requires_grad for p in none.output_blocks[:nb].parameters())
    with pytest.raises(ValueError, match="trainable_output_blocks"):
        decoder.init_decoder(base_decoder, resolution=16, trainable_output_blocks=nb + 1)


def growth_task(base_decoder, tiny_data, latents, resolution=16):
    torch.manual_seed(0)
    G = decoder.init_decoder(base_decoder, resolution=resolution)
    backbone = EfficientNetLite0(input_size=32)
    images, labels, _ = load_dataset(tiny_data, "train", resolution)
    return decoder.DecoderTask(G, ProjectedDiscriminator(num_classes=10, backbone=backbone),
                               ReconstructionDistance("feature", backbone=backbone),
                               latents=encode.load_latents(latents), targets=images, train_images=images,
                               train_labels=labels, gan_weight=1.0, batch_size=8, lr_g=1e-3)


def test_training_moves_every_trainable_parameter_and_no_frozen_one(base_decoder, tiny_data, latents):
    task = growth_task(base_decoder, tiny_data, latents)
    before = {n: p.detach().clone() for n, p in task.G.named_parameters()}
    ema_before = {n: p.detach().clone() for n, p in task.ema.named_parameters()}
    # RAdam's first ~5 updates are plain momentum steps, too small to move weights behind the new blocks'
    # zero-initialised convs in float32; from then on every trainable weight moves by about lr.
    for s in range(7):
        task.step(s, loop.step_generator(0, s))
    for n, p in task.G.named_parameters():
        if p.requires_grad:
            assert not torch.equal(before[n], p), f"trainable {n} did not move"
        else:
            assert torch.equal(before[n], p), f"frozen {n} changed"
    for n, p in task.ema.named_parameters():
        if n in decoder.frozen_names(task.G):
            assert torch.equal(ema_before[n], p), f"EMA touched frozen {n}"
    frozen = decoder.frozen_names(task.G)
    optimised = {id(p) for group in task.opt_g.param_groups for p in group["params"]}
    assert not optimised & {id(p) for n, p in task.G.named_parameters() if n in frozen}


def test_growth_stage_resumes_and_saves_frozen_weights_once(base_decoder, tiny_data, latents, tmp_path):
    kw = dict(data_dir=tiny_data, latents_dir=latents, init_path=base_decoder, resolution=16, steps=4,
              batch_size=8, gan_weight=1.0, weighting="separate", feature_size=32, checkpoint_every=2,
              device="cpu", progress=False)
    decoder.train_decoder(run_dir=tmp_path / "a", out_path=tmp_path / "a.pt", **kw)
    decoder.train_decoder(run_dir=tmp_path / "b", out_path=tmp_path / "b.pt", max_steps_this_call=2, **kw)
    assert not (tmp_path / "b.pt").exists()
    # A call that ends before the first logged step reports 0 steps instead of failing.
    early = decoder.train_decoder(run_dir=tmp_path / "c", out_path=tmp_path / "c.pt", max_steps_this_call=1,
                                  log_every=3, **kw)
    assert early["steps"] == 0 and not (tmp_path / "c.pt").exists()
    ckpt = torch.load(loop.latest_checkpoint(tmp_path / "b"), weights_only=False)
    G = decoder.init_decoder(base_decoder, resolution=16)
    frozen = decoder.frozen_names(G)
    assert frozen and not frozen & set(ckpt["modules"]["G"]) and not frozen & set(ckpt["modules"]["ema"])
    decoder.train_decoder(run_dir=tmp_path / "b", out_path=tmp_path / "b.pt", **kw)
    a, b = torch.load(tmp_path / "a.pt", weights_only=False), torch.load(tmp_path / "b.pt", weights_only=False)
    for which in ("net", "ema"):
        assert a[which].keys() == b[which].keys()
        for k in a[which]:
            assert torch.equal(a[which][k], b[which][k]), (which, k)
    assert frozen <= set(a["ema"])  # the stage's final checkpoint is complete


def test_two_stage_and_4x_growth_shapes(base_decoder, tmp_path):
    g16 = decoder.init_decoder(base_decoder, resolution=16)
    save_network(tmp_path / "16.pt", g16, kind="decoder")
    g32 = decoder.init_decoder(tmp_path / "16.pt", resolution=32)
    g32_direct = decoder.init_decoder(base_decoder, resolution=32)
    z, y = 80 * torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    assert decoder.generate(g32, z, y).shape == (2, 1, 32, 32)
    assert len(g32.config.growth) == len(g32_direct.config.growth) == 2
    assert [n for n, _ in g32.named_parameters()] == [n for n, _ in g32_direct.named_parameters()]
    with pytest.raises(ValueError, match="integer factor"):
        decoder.init_decoder(tmp_path / "16.pt", resolution=24)


def test_placement_error_is_zero_for_an_upsampled_copy_and_large_for_shuffled_pairs():
    base = F.interpolate(torch.rand(6, 1, 4, 4) * 2 - 1, size=8, mode="bilinear")  # smooth, like images
    high = base.repeat_interleave(4, -1).repeat_interleave(4, -2)
    # Downsampling a nearest-upsampled image with the antialiased bicubic filter is close to the identity.
    assert decoder.placement_error(high, base).max().item() < 0.03
    assert decoder.placement_error(high, base.roll(1, 0)).mean().item() > 0.1


# ----------------------------------------------------------------------------
# growth.grow on a small network built here (no training needed).

def _small_unet(**kw):
    from pagoda.networks import UNet, UNetConfig
    cfg = UNetConfig(img_resolution=8, in_channels=1, out_channels=1, model_channels=16, channel_mult=(1, 2),
                     num_res_blocks=1, num_classes=10, norm_groups=8, **kw)
    return UNet(cfg)


def test_grow_defaults_to_one_2x_level_of_two_resblocks_at_the_heads_width():
    from pagoda.growth import grow
    from pagoda.networks import GrowthLevel
    net = _small_unet()
    grown = grow(net)
    assert grown.config.growth == (GrowthLevel(16, 2),) and grown.config.out_resolution == 16
    assert grown.config.growth[0].channels == net.out[0].num_channels
    assert grow(grown, factor=4, channels=8, num_res_blocks=1).config.growth == (
        GrowthLevel(16, 2), GrowthLevel(8, 1), GrowthLevel(8, 1))  # appended after the existing level


@pytest.mark.parametrize("factor", [0, 1, 3, 6, 12])
def test_grow_rejects_factors_that_are_not_powers_of_two(factor):
    from pagoda.growth import grow
    with pytest.raises(ValueError, match=f"growth factor must be a power of two >= 2, got {factor}"):
        grow(_small_unet(), factor=factor)


def test_grow_by_8_adds_three_levels():
    from pagoda.growth import grow
    assert len(grow(_small_unet(), factor=8, channels=8, num_res_blocks=1).config.growth) == 3


def test_grow_keeps_the_parents_device():
    # On the meta device (a stand-in for a GPU), a grown copy built on the CPU could not take the parent's weights.
    from pagoda.growth import grow
    grown = grow(_small_unet().to("meta"))
    assert {p.device.type for p in grown.parameters()} == {"meta"}
