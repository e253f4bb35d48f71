"""Import of ADM-format (openai/consistency_models) checkpoints into our UNet.

The reference below is an independent re-implementation of consistency_models' cm/unet.py UNetModel (the code
that trained and saved `edm_imagenet64_ema.pt`), written only for this test: it does not use pagoda.networks.
A randomly initialised reference, with its zero-initialised layers made nonzero, is saved exactly as
consistency_models saves checkpoints (torch.save of the state dict), imported with pagoda.adm, and both
networks must compute the same function.
"""

import ast
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pagoda import adm, edm
from pagoda.adm import ADM_IMAGENET64, adm_to_pagoda, import_adm_checkpoint, save_imported_teacher
from pagoda.checkpoints import load_network
from pagoda.networks import UNet, UNetConfig, num_params

# ----------------------------------------------------------------------------
# Reference ADM U-Net (structure of consistency_models cm/unet.py, cm/nn.py).


class RefGroupNorm32(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def ref_normalization(channels):
    return RefGroupNorm32(32, channels)


def ref_timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RefTimestepBlock(nn.Module):
    pass


class RefTimestepEmbedSequential(nn.Sequential, RefTimestepBlock):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, RefTimestepBlock) else layer(x)
        return x


class RefUpsample(nn.Module):  # use_conv=False: nearest neighbour only
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class RefDownsample(nn.Module):  # use_conv=False: 2x2 average pooling
    def forward(self, x):
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class RefResBlock(RefTimestepBlock):
    def __init__(self, channels, emb_channels, dropout, out_channels=None, use_scale_shift_norm=False,
                 up=False, down=False):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(ref_normalization(channels), nn.SiLU(),
                                       nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = RefUpsample(), RefUpsample()
        elif down:
            self.h_upd, self.x_upd = RefDownsample(), RefDownsample()
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(ref_normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x, emb):
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.h_upd(in_rest(x)))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        while emb_out.ndim < h.ndim:
            emb_out = emb_out[..., None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def ref_attention(qkv, n_heads, layout):
    """softmax(q^T k / sqrt(d)) v per head; qkv is [B, 3 H D, S].

    layout "flash": QKVFlashAttention's rearrange "b (three h d) s -> b s three h d" (also consistency_models'
    QKVAttentionLegacy). layout "legacy": guided-diffusion's QKVAttentionLegacy, heads split before q/k/v:
    qkv.reshape(B H, 3 D, S).split(D, dim=1), i.e. channels ordered (h, three, d).
    """
    b, width, s = qkv.shape
    d = width // (3 * n_heads)
    if layout == "flash":
        q, k, v = qkv.reshape(b, 3, n_heads, d, s).unbind(1)
    else:
        q, k, v = qkv.reshape(b, n_heads, 3, d, s).unbind(2)
    w = torch.einsum("bhdt,bhds->bhts", q, k) / math.sqrt(d)
    w = torch.softmax(w.double(), dim=-1).to(q.dtype)
    return torch.einsum("bhts,bhds->bhdt", w, v).reshape(b, n_heads * d, s)


class RefAttentionBlock(nn.Module):
    def __init__(self, channels, num_head_channels, layout):
        super().__init__()
        self.num_heads = channels // num_head_channels
        self.layout = layout
        self.norm = ref_normalization(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)       # conv_nd(dims=2, ...): consistency_models' default
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x):
        b, _, *spatial = x.shape
        qkv = self.qkv(self.norm(x)).view(b, -1, math.prod(spatial))
        h = ref_attention(qkv, self.num_heads, self.layout).view(b, -1, *spatial)
        return x + self.proj_out(h)


class RefUNetModel(nn.Module):
    """cm/unet.py UNetModel with resblock_updown=True; `attention_resolutions` are downsample factors."""

    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions,
                 dropout=0.0, channel_mult=(1, 2, 4, 8), num_classes=None, num_head_channels=64,
                 use_scale_shift_norm=True, attention_layout="flash"):
        super().__init__()
        self.model_channels = model_channels
        self.num_classes = num_classes
        rb = dict(use_scale_shift_norm=use_scale_shift_norm)

        def attention(ch):
            return RefAttentionBlock(ch, num_head_channels, attention_layout)

        time_embed_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, time_embed_dim)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([RefTimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [RefResBlock(ch, time_embed_dim, dropout, out_channels=int(mult * model_channels), **rb)]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(RefTimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(RefTimestepEmbedSequential(
                    RefResBlock(ch, time_embed_dim, dropout, out_channels=ch, down=True, **rb)))
                input_block_chans.append(ch)
                ds *= 2

        self.middle_block = RefTimestepEmbedSequential(
            RefResBlock(ch, time_embed_dim, dropout, **rb), attention(ch),
            RefResBlock(ch, time_embed_dim, dropout, **rb))

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = input_block_chans.pop()
                layers = [RefResBlock(ch + ich, time_embed_dim, dropout, out_channels=int(model_channels * mult),
                                      **rb)]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(RefResBlock(ch, time_embed_dim, dropout, out_channels=ch, up=True, **rb))
                    ds //= 2
                self.output_blocks.append(RefTimestepEmbedSequential(*layers))

        self.out = nn.Sequential(ref_normalization(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x, timesteps, y=None):
        hs = []
        emb = self.time_embed(ref_timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def ref_denoise(model, x, sigma, y, sigma_data=0.5):
    """consistency_models KarrasDenoiser.denoise (training_mode="edm")."""
    s = sigma.reshape(-1, 1, 1, 1)
    c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
    c_out = s * sigma_data / (s ** 2 + sigma_data ** 2) ** 0.5
    c_in = 1 / (s ** 2 + sigma_data ** 2) ** 0.5
    rescaled_t = 1000 * 0.25 * torch.log(sigma + 1e-44)
    return c_skip * x + c_out * model(c_in * x, rescaled_t, y)


# ----------------------------------------------------------------------------
# A small configuration that exercises every module kind, in both conventions.

REF_KW = dict(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=2,
              attention_resolutions=(2, 4), dropout=0.1, channel_mult=(1, 2, 2), num_classes=5,
              num_head_channels=16, use_scale_shift_norm=True)     # 64-channel attention: 4 heads
OUR_NET = dict(img_resolution=16, in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2, 2),
               num_res_blocks=2, attention_resolutions=(8, 4), num_head_channels=16, num_classes=5, dropout=0.1,
               resblock_updown=True, use_scale_shift_norm=True, time_scale=1000.0)


def make_reference(seed=0, layout="flash"):
    torch.manual_seed(seed)
    model = RefUNetModel(**REF_KW, attention_layout=layout).eval()
    # Zero-initialised convs (and GroupNorm's identity affine) would hide wiring mistakes: randomise them.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                fan_in = p[0].numel()
                p.uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=g)
            elif p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def batch(n=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    sigma = torch.tensor([0.002, 0.3, 2.5, 80.0])[:n]
    y = torch.randint(0, 5, (n,), generator=g)
    return x, sigma, y


@pytest.fixture(scope="module")
def reference():
    return make_reference()


@pytest.fixture(scope="module")
def adm_file(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("adm") / "edm_tiny_ema.pt"
    torch.save(reference.state_dict(), path)          # as consistency_models' train_util saves
    return path


@pytest.fixture(scope="module")
def imported(adm_file):
    return import_adm_checkpoint(adm_file, network=OUR_NET)


# ----------------------------------------------------------------------------
# Tests.


@torch.no_grad()
def test_reference_is_nontrivial(reference):
    x, sigma, y = batch()
    t = 250 * torch.log(sigma)
    out = reference(x, t, y)
    assert out.abs().mean() > 0.1                                # the randomised output conv is live
    assert not torch.allclose(out, reference(x, t, (y + 1) % 5))  # labels matter
    assert not torch.allclose(out, reference(x, t.flip(0), y))    # time matters


@torch.no_grad()
def test_import_matches_reference(reference, imported):
    x, sigma, y = batch()
    assert not imported.training
    # F: the network itself. t = 250 ln sigma for ADM; ours takes EDM's c_noise = ln(sigma) / 4.
    ref = reference(x, 250 * torch.log(sigma), y)
    ours = imported(x, torch.log(sigma) / 4, y)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # D: the full EDM denoiser, through pagoda.edm against consistency_models' KarrasDenoiser.denoise.
    torch.testing.assert_close(edm.denoise(imported, x, sigma, y), ref_denoise(reference, x, sigma, y),
                               rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_import_from_state_dict_with_conv1d_attention(reference, imported):
    # guided-diffusion stores the attention 1x1 convs as Conv1d (out, in, 1): also accepted, same weights.
    sd = adm_to_pagoda(reference.state_dict())
    assert sd["middle_block.1.qkv.weight"].ndim == 3
    net = import_adm_checkpoint(sd, network=OUR_NET)
    for (k, a), b in zip(net.state_dict().items(), imported.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("wrap", ["plain", "ema_wrapper"])
@torch.no_grad()
def test_ddp_prefixed_fp16_checkpoint(reference, tmp_path, wrap):
    sd = {"module." + k: v.half() for k, v in reference.state_dict().items()}
    path = tmp_path / "fp16.pt"
    torch.save(sd if wrap == "plain" else {"ema": sd, "step": 7}, path)
    net = import_adm_checkpoint(path, network=OUR_NET)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert torch.equal(net.label_emb.weight, reference.label_emb.weight.half().float())
    x, sigma, y = batch()
    ref = reference(x, 250 * torch.log(sigma), y)
    torch.testing.assert_close(net(x, torch.log(sigma) / 4, y), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


@pytest.mark.parametrize("override, field", [
    (dict(num_res_blocks=1), "num_res_blocks"),
    (dict(model_channels=64), "model_channels"),
    (dict(attention_resolutions=(2, 4)), "attention_resolutions"),  # ADM's downsample factors passed as pixels
    (dict(num_classes=0), "num_classes"),
    (dict(use_scale_shift_norm=False), "use_scale_shift_norm"),
    (dict(channel_mult=(1, 2, 3)), "channel_mult"),
    (dict(out_channels=6), "out_channels"),
    (dict(resblock_updown=False), "resblock_updown"),
])
def test_wrong_config_is_reported(adm_file, override, field):
    with pytest.raises(ValueError) as err:
        import_adm_checkpoint(adm_file, network={**OUR_NET, **override})
    msg = str(err.value)
    assert any(word in msg for word in ("missing", "unexpected", "mis-shaped")), msg
    assert field in msg.split("likely wrong")[-1], msg


def test_wrong_config_lists_keys(adm_file):
    with pytest.raises(ValueError) as err:
        import_adm_checkpoint(adm_file, network={**OUR_NET, "num_res_blocks": 3})
    msg = str(err.value)
    for kind in ("missing", "unexpected"):
        shown = re.search(rf"\d+ {kind} keys: (\[.*\])", msg)
        assert shown, msg
        assert 1 <= len(ast.literal_eval(shown.group(1))) <= 5
    assert "input_blocks.4.0.in_layers.2.weight [64, 32, 3, 3] vs [32, 32, 3, 3]" in msg.split("mis-shaped")[1]


@torch.no_grad()
def test_legacy_head_layout_would_not_match(reference, imported):
    # Same weights read with guided-diffusion's (heads, three, d) split: the outputs must differ, so the
    # equality above really pins the (three, heads, d) layout.
    legacy = make_reference(layout="legacy")
    legacy.load_state_dict(reference.state_dict())
    x, sigma, y = batch()
    ours = imported(x, torch.log(sigma) / 4, y)
    diff = (legacy(x, 250 * torch.log(sigma), y) - ours).abs().max()
    assert diff > 1e-2 * ours.abs().max(), diff


@torch.no_grad()
def test_save_imported_teacher_roundtrip(reference, adm_file, tmp_path):
    out = tmp_path / "teacher.pt"
    meta = save_imported_teacher(adm_file, out, network=OUR_NET)
    net, loaded_meta = load_network(out, expect_kind="teacher")
    assert loaded_meta == meta
    assert meta["classes"] == list(range(5)) and meta["resolution"] == 16
    assert meta["params"] == num_params(net) == sum(p.numel() for p in reference.parameters())
    assert meta["source"] == adm_file.name and meta["source_bytes"] == adm_file.stat().st_size
    x, sigma, y = batch()
    ref = reference(x, 250 * torch.log(sigma), y)
    torch.testing.assert_close(net(x, torch.log(sigma) / 4, y), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_imagenet64_config_matches_adm_layout():
    # The released network, built without memory on the meta device, in both conventions: same keys/shapes.
    with torch.device("meta"):
        ref = RefUNetModel(image_size=64, in_channels=3, model_channels=192, out_channels=3, num_res_blocks=3,
                           attention_resolutions=(2, 4, 8), dropout=0.1, channel_mult=(1, 2, 3, 4),
                           num_classes=1000, num_head_channels=64, use_scale_shift_norm=True)
        ours = UNet(UNetConfig(**ADM_IMAGENET64))
    ref_shapes = {k: v.shape for k, v in adm_to_pagoda(ref.state_dict()).items()}
    assert ref_shapes == {k: v.shape for k, v in ours.state_dict().items()}
    assert num_params(ours) == sum(p.numel() for p in ref.parameters())
    assert 290e6 < num_params(ours) < 300e6                        # EDM reports 296M for ADM ImageNet-64
    heads = {m.num_heads for m in ours.modules() if hasattr(m, "num_heads")}
    assert heads == {6, 9, 12}                                      # 384/64, 576/64, 768/64
    assert ours.config.time_scale / 4 == 250.0                    # t = 250 ln sigma = 1000 c_noise


def test_teacher_stage_imports_instead_of_training(tiny_data, tmp_path):
    """train_teacher(import_path=...) (the workflow's import_teacher rule) trains nothing and writes the import."""
    from pagoda import teacher
    from pagoda.checkpoints import load_network
    from pagoda.networks import UNet, UNetConfig
    network = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                   num_head_channels=8)
    src = UNet(UNetConfig(**network, img_resolution=8, in_channels=1, out_channels=1, num_classes=10))
    with torch.no_grad():  # no zero-initialised layer may hide a mismatch
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(src.state_dict(), tmp_path / "adm.pt")
    summary = teacher.train_teacher(data_dir=tiny_data, resolution=8, run_dir=tmp_path / "run",
                                    out_path=tmp_path / "teacher.pt", network=network, import_path=tmp_path / "adm.pt",
                                    device="cpu", progress=False)
    assert summary["imported_from"].endswith("adm.pt") and not (tmp_path / "run" / "checkpoints").exists()
    net, _ = load_network(tmp_path / "teacher.pt", expect_kind="teacher")
    x, c, y = torch.randn(2, 1, 8, 8), torch.tensor([0.1, -0.3]), torch.tensor([1, 7])
    torch.testing.assert_close(net(x, c, y), src.eval()(x, c, y))


def test_a_file_that_is_not_a_checkpoint_is_named_with_what_was_found(tmp_path):
    # What a failed download or a wrong path leaves behind: HTML, an empty file, a pickled non-state-dict.
    html = tmp_path / "edm_imagenet64_ema.pt"
    html.write_bytes(b"<!DOCTYPE html><html>Access denied</html>")
    with pytest.raises(ValueError, match=rf"^teacher checkpoint {html} is not an ADM/EDM checkpoint \(expected a "
                                         r"torch.save'd state dict of tensors, e.g. edm_imagenet64_ema.pt\); found a "
                                         r"41-byte file starting with b'<!DOCTYPE html><html>Access deni' \(not a file "
                                         r"torch.save writes\); torch.load raised UnpicklingError$"):
        adm.read_adm_state_dict(html)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"found a 0-byte file starting with b'' \(not a file torch.save writes\)"):
        adm.read_adm_state_dict(empty)
    torch.save({"model": object}, tmp_path / "pickled.pt")  # a pickled class, not tensors: weights_only refuses it
    with pytest.raises(ValueError, match=r"\(a torch zip archive\); torch.load raised UnpicklingError$"):
        adm.read_adm_state_dict(tmp_path / "pickled.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=rf"^teacher checkpoint {tmp_path}/list.pt: expected a state dict, got list "
                                         r"\(expected an ADM/EDM state dict\)$"):
        adm.read_adm_state_dict(tmp_path / "list.pt")
