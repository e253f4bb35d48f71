"""The class-conditional ADM U-Net (Dhariwal & Nichol 2021) used for the teacher and the decoder.

Module names follow the released ADM/consistency-models layout (`time_embed`, `label_emb`,
`input_blocks`, `middle_block`, `output_blocks`, `out`; ResBlock `in_layers`/`emb_layers`/
`out_layers`/`skip_connection`; attention `norm`/`qkv`/`proj_out`) so that public ADM-format
checkpoints map onto it by name. PaGoDA's progressive growing (Sec. 3.2) appends output blocks
at higher resolutions with `grow()`; the hyperparameters live in `UNetConfig`, which every
checkpoint stores. A negative label is classifier-free guidance's null class; with `omega_embedding`
the network also takes the guidance scale omega (PaGoDA Sec. 4).
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

NULL_LABEL = -1     # classifier-free guidance's null class: the label adds nothing (EDM2's zero one-hot)
OMEGA_SCALE = 100   # PaGoDA Sec. 4: omega is embedded like the noise level after scaling by 100


@dataclasses.dataclass(frozen=True)
class GrowthLevel:
    """One 2x level appended by PaGoDA's growing: up-ResBlock + `num_res_blocks` ResBlocks."""
    channels: int
    num_res_blocks: int = 2


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    img_resolution: int = 8            # input (= teacher) resolution
    in_channels: int = 1
    out_channels: int = 1
    model_channels: int = 32
    channel_mult: tuple = (1, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple = ()  # resolutions in pixels that get self-attention
    num_head_channels: int = 64
    dropout: float = 0.0
    num_classes: int = 10              # 0 = unconditional
    resblock_updown: bool = True       # BigGAN-style up/down ResBlocks
    use_scale_shift_norm: bool = True
    norm_groups: int = 32
    time_scale: float = 1000.0         # the network sees t = time_scale * c_noise (ADM: 250 ln sigma)
    growth: tuple = ()                 # GrowthLevel per appended 2x level (PaGoDA Stage 3)
    growth_head: str = "residual"      # "residual": exact upsampled copy at init; "shared": released code
    omega_embedding: bool = False      # takes the guidance scale omega (PaGoDA Sec. 4's guided G)

    @property
    def out_resolution(self):
        return self.img_resolution * 2 ** len(self.growth)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d["channel_mult"] = tuple(d["channel_mult"])
        d["attention_resolutions"] = tuple(d["attention_resolutions"])
        d["growth"] = tuple(GrowthLevel(**g) if isinstance(g, dict) else g for g in d.get("growth", ()))
        return cls(**d)


# ----------------------------------------------------------------------------
# Building blocks.

class GroupNorm32(nn.GroupNorm):
    # Statistics in float32 whatever the activation dtype (as in ADM).
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def normalization(channels, groups):
    # ADM: 32 groups. Narrow networks get the largest group count that divides their channels.
    return GroupNorm32(math.gcd(groups, channels), channels)


def zero_module(module):
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t, dim, max_period=10000):
    """ADM's sinusoidal embedding: [cos(t f_i), sin(t f_i)], f_i = max_period^(-i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class EmbedSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the time/class embedding."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Upsample(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class Downsample(nn.Module):
    def forward(self, x):
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResBlock(nn.Module):
    """GN-SiLU-conv, + embedding (scale-shift or additive), GN-SiLU-dropout-zero-conv, + skip."""

    def __init__(self, channels, emb_channels, *, out_channels=None, dropout=0.0, up=False, down=False,
                 use_scale_shift_norm=True, norm_groups=32):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels, norm_groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        self.resample = Upsample() if up else Downsample() if down else nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels, norm_groups), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        if self.updown:
            in_rest, in_conv = self.in_layers[:-1], self.in_layers[-1]
            h = in_conv(self.resample(in_rest(x)))
            x = self.resample(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            out_norm, out_rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = e.chunk(2, dim=1)
            h = out_rest(out_norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over pixels; qkv channels laid out as (three, heads, head_dim)."""

    def __init__(self, channels, *, num_head_channels=64, norm_groups=32):
        super().__init__()
        self.num_heads = max(1, channels // num_head_channels)
        self.norm = normalization(channels, norm_groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))                     # b, 3c, s
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, -1).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = h.transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj_out(h).reshape(b, c, *spatial)


# ----------------------------------------------------------------------------
# The U-Net.

class UNet(nn.Module):
    """F(x, c_noise, y) of EDM eq. 7; with `growth` its output is 2^k times the input resolution."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.model_channels
        emb_ch = 4 * ch
        rb = dict(dropout=cfg.dropout, norm_groups=cfg.norm_groups)
        attn = dict(num_head_channels=cfg.num_head_channels, norm_groups=cfg.norm_groups)
        ss = cfg.use_scale_shift_norm

        self.time_embed = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.label_emb = nn.Embedding(cfg.num_classes, emb_ch) if cfg.num_classes else None
        # Zero last layer: a guided G made from an unguided network starts as that network at every omega.
        self.omega_embed = nn.Sequential(nn.Linear(ch, emb_ch), nn.SiLU(), zero_module(nn.Linear(emb_ch, emb_ch))) \
            if cfg.omega_embedding else None

        # Encoder path.
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans, res, cur = [ch], cfg.img_resolution, ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(cur, emb_ch, out_channels=mult * ch, use_scale_shift_norm=ss, **rb)]
                cur = mult * ch
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(cur, **attn))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(cur)
            if level != len(cfg.channel_mult) - 1:
                down = ResBlock(cur, emb_ch, down=True, use_scale_shift_norm=ss, **rb) if cfg.resblock_updown \
                    else Downsample()
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(cur)
                res //= 2

        self.middle_block = EmbedSequential(
            ResBlock(cur, emb_ch, use_scale_shift_norm=ss, **rb),
            *([AttentionBlock(cur, **attn)] if cfg.attention_resolutions else []),
            ResBlock(cur, emb_ch, use_scale_shift_norm=ss, **rb))

        # Decoder path with skip connections (the teacher's resolution).
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(cur + skip_chans.pop(), emb_ch, out_channels=mult * ch,
                                   use_scale_shift_norm=ss, **rb)]
                cur = mult * ch
                if res in cfg.attention_resolutions:
                    layers.append(AttentionBlock(cur, **attn))
                if level and i == cfg.num_res_blocks:
                    layers.append(ResBlock(cur, emb_ch, up=True, use_scale_shift_norm=ss, **rb)
                                  if cfg.resblock_updown else Upsample())
                    res *= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.num_base_output_blocks = len(self.output_blocks)

        self.out = nn.Sequential(normalization(cur, cfg.norm_groups), nn.SiLU(),
                                 zero_module(nn.Conv2d(cur, cfg.out_channels, 3, padding=1)))

        # PaGoDA growth levels (Sec. 3.2): up-ResBlock + ResBlocks, no skips, no attention, additive
        # embedding, fed by the previous top feature maps. `level_ends[k]` is the index of level k's
        # last output block.
        if cfg.growth_head not in ("residual", "shared"):
            raise ValueError(f"growth_head must be 'residual' or 'shared', got {cfg.growth_head!r}")
        self.level_ends = []
        self.growth_heads = nn.ModuleList()
        for g in cfg.growth:
            self.output_blocks.append(EmbedSequential(
                ResBlock(cur, emb_ch, out_channels=g.channels, up=True, use_scale_shift_norm=False, **rb)))
            cur = g.channels
            for _ in range(g.num_res_blocks):
                self.output_blocks.append(EmbedSequential(
                    ResBlock(cur, emb_ch, use_scale_shift_norm=False, **rb)))
            self.level_ends.append(len(self.output_blocks) - 1)
            if cfg.growth_head == "residual":
                # The head `out` keeps producing the previous resolution's image; each level adds a
                # zero-initialised image residual on top of its nearest upsampling. A 3x3 head conv
                # does not commute with nearest upsampling, so moving `out` up a level ("shared", as
                # the released code does) only approximately reproduces the previous output at init.
                self.growth_heads.append(nn.Sequential(
                    normalization(cur, cfg.norm_groups), nn.SiLU(),
                    zero_module(nn.Conv2d(cur, cfg.out_channels, 3, padding=1))))
            elif cur != self.out[-1].in_channels:
                raise ValueError("growth_head='shared' reuses the head, so growth channels must equal "
                                 f"{self.out[-1].in_channels}, got {cur}")

    def forward(self, x, c_noise, labels=None, omega=None):
        cfg = self.config
        emb = self.time_embed(timestep_embedding(cfg.time_scale * c_noise.reshape(-1).expand(x.shape[0]),
                                                 cfg.model_channels))
        if self.label_emb is not None:
            if labels is None:
                raise ValueError("this network is class-conditional: pass labels")
            emb = emb + self.label_emb(labels.clamp(min=0)) * (labels >= 0)[:, None].to(emb.dtype)
        if self.omega_embed is not None:
            if omega is None:
                raise ValueError("this network is guidance-conditioned: pass omega")
            omega = torch.as_tensor(omega, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
            emb = emb + self.omega_embed(timestep_embedding(OMEGA_SCALE * omega, cfg.model_channels))
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks[:self.num_base_output_blocks]:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        if cfg.growth_head == "shared":
            for block in self.output_blocks[self.num_base_output_blocks:]:
                h = block(h, emb)
            return self.out(h)
        img = self.out(h)
        start = self.num_base_output_blocks
        for end, head in zip(self.level_ends, self.growth_heads):
            for block in self.output_blocks[start:end + 1]:
                h = block(h, emb)
            img = F.interpolate(img, scale_factor=2, mode="nearest") + head(h)
            start = end + 1
        return img

    def last_layer(self):
        """The weight PaGoDA's adaptive GAN weight differentiates against: the last ResBlock's zero-init conv."""
        return self.output_blocks[-1][0].out_layers[-1].weight


def num_params(net, trainable_only=False):
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)
