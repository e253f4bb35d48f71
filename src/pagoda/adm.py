"""Import of public ADM-format U-Net checkpoints, e.g. the EDM ImageNet-64 teacher of openai/consistency_models.

That checkpoint (`edm_imagenet64_ema.pt`) is a plain `torch.save(model.state_dict())` of consistency_models'
`cm/unet.py` UNetModel, trained as an EDM denoiser:

    D(x, sigma, y) = c_skip x + c_out F(c_in x, 250 ln sigma, y),

which is `pagoda.edm.denoise` with our `UNetConfig.time_scale = 1000` (t = 1000 * ln(sigma) / 4). Our U-Net
uses ADM's module names, so the import is a name-for-name copy apart from one explicit shape mapping
(`adm_to_pagoda`). Two facts cannot be read from the weights and must be right in the config:
`num_head_channels` (the qkv weight has the same shape for any head count) and the qkv channel order,
which our AttentionBlock shares with consistency_models: (three, heads, head_dim).
"""

import hashlib
import pathlib
import re
from collections.abc import Mapping

import torch

from .checkpoints import save_network
from .networks import UNet, UNetConfig, num_params

# consistency_models scripts/launch.sh, EDM ImageNet-64: --image_size 64 --num_channels 192 --num_res_blocks 3
# --attention_resolutions 32,16,8 --num_head_channels 64 --resblock_updown True --use_scale_shift_norm True
# --class_cond True --dropout 0.1; channel_mult (1, 2, 3, 4) is cm/script_util.py's default for 64 px.
# ADM converts the attention resolutions to downsample factors (64 // res = 2, 4, 8); ours stay in pixels.
ADM_IMAGENET64 = dict(
    img_resolution=64,
    in_channels=3,
    out_channels=3,             # learn_sigma=False
    model_channels=192,
    channel_mult=(1, 2, 3, 4),
    num_res_blocks=3,
    attention_resolutions=(32, 16, 8),
    num_head_channels=64,
    num_classes=1000,
    dropout=0.1,                # inactive in eval mode
    resblock_updown=True,
    use_scale_shift_norm=True,
    time_scale=1000.0,          # ADM's t = 1000 * 0.25 ln(sigma) = 1000 * c_noise
)

_WRAPPER_KEYS = ("ema", "state_dict", "model")  # EMA first: a teacher should use the averaged weights
_DDP_PREFIX = "module."

# ----------------------------------------------------------------------------
# Reading.


def _describe_file(path, head=32):
    """What a file that is not a checkpoint looks like: its size, its first bytes and whether torch wrote it."""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        start = f.read(head)
    kind = ("a torch zip archive" if start.startswith(b"PK\x03\x04") else
            "a pickle" if start.startswith(b"\x80") else "not a file torch.save writes")
    return f"a {path.stat().st_size}-byte file starting with {start!r} ({kind})"


def _load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        # torch's own text suggests weights_only=False, which is unsafe and no help for a file like this one.
        raise ValueError(f"teacher checkpoint {path} is not an ADM/EDM checkpoint (expected a torch.save'd state dict "
                         f"of tensors, e.g. edm_imagenet64_ema.pt); found {_describe_file(path)}; torch.load raised "
                         f"{type(e).__name__}") from e


def _normalise(state):
    """Unwrap {"ema"|"state_dict"|"model": sd}, strip a DDP `module.` prefix, cast floats to float32."""
    while (isinstance(state, Mapping) and not any(torch.is_tensor(v) for v in state.values())
           and any(isinstance(state.get(k), Mapping) for k in _WRAPPER_KEYS)):
        state = next(state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping))
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a state dict, got {type(state).__name__}")
    out = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise ValueError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        key = key[len(_DDP_PREFIX):] if key.startswith(_DDP_PREFIX) else key
        # fp16 training may have stored the torso's convs in half precision; we run in float32.
        out[key] = value.float() if value.is_floating_point() else value
    return out


def read_adm_state_dict(path):
    """An ADM-format checkpoint file as a flat float32 state dict on the CPU (names as ADM's)."""
    if not pathlib.Path(path).exists():
        raise FileNotFoundError(f"teacher checkpoint {path} not found: download edm_imagenet64_ema.pt as "
                                "README.md ('Running at paper scale') describes, or set teacher.import_path")
    state = _load(path)  # a file torch cannot read raises its own message
    try:
        return _normalise(state)
    except ValueError as e:
        raise ValueError(f"teacher checkpoint {path}: {e} (expected an ADM/EDM state dict)") from e


# ----------------------------------------------------------------------------
# Mapping and checking.


def adm_to_pagoda(state):
    """ADM names/shapes -> ours. Names are equal; only the attention 1x1 kernels change shape.

    consistency_models builds AttentionBlock with its default dims=2, so `qkv` and `proj_out` are Conv2d 1x1
    on the image, weight (out, in, 1, 1); guided-diffusion and ours use Conv1d over flattened pixels,
    weight (out, in, 1). Both are the same matrix, so dropping the trailing 1 is exact.
    """
    out = {}
    for key, value in state.items():
        if re.search(r"\.(qkv|proj_out)\.weight$", key) and value.ndim == 4 and value.shape[-2:] == (1, 1):
            value = value[..., 0]
        out[key] = value
    return out


def _block_count(keys, prefix):
    idx = {int(m.group(1)) for k in keys if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _block_prefixes(keys):
    return {m.group(0) for k in keys if (m := re.match(r"(input|output)_blocks\.\d+\.", k))}


def _has_attention(keys):
    return {re.match(r"(.*)\.qkv\.weight$", k).group(1) for k in keys if k.endswith(".qkv.weight")}


def _likely_wrong_fields(ckpt, ours, mismatched):
    """Config fields that would explain the differences, most structural first."""
    if any(_block_count(ckpt, p) != _block_count(ours, p) for p in ("input_blocks", "output_blocks")):
        # Blocks are numbered consecutively: once the counts differ, per-key comparisons mean nothing.
        return ["num_res_blocks", "channel_mult"]
    fields = []

    def add(*names):
        fields.extend(n for n in names if n not in fields)

    if _has_attention(ckpt) != _has_attention(ours):
        add("attention_resolutions (pixels, not ADM's downsample factors)", "img_resolution")
    # Without ResBlock up/down a resampling block has no weights (ours) or ADM's conv_resample `op`/`conv`.
    if any(re.search(r"\.(op|conv)\.weight$", k) for k in ckpt) or _block_prefixes(ckpt) != _block_prefixes(ours):
        add("resblock_updown")
    if ("label_emb.weight" in ckpt) != ("label_emb.weight" in ours):
        add("num_classes")
    width_wrong = "time_embed.0.weight" in {k for k, _, _ in mismatched}
    for key, a, b in mismatched:
        if key == "label_emb.weight" and a[1:] == b[1:]:
            add("num_classes")
        elif width_wrong:
            add("model_channels")
        elif ".emb_layers.1." in key and a[1:] == b[1:] and a[0] in (2 * b[0], b[0] // 2):
            add("use_scale_shift_norm")
        elif key == "input_blocks.0.0.weight" and a[0] == b[0]:
            add("in_channels")
        elif key.startswith("out.2.") and a[1:] == b[1:]:
            add("out_channels (6 would be ADM's learned sigma, unsupported)")
        else:
            add("channel_mult")
    return fields


def _first_per_module(keys, show):
    # One key per module (its weight and bias differ together), in the order given (network order).
    seen, out = set(), []
    for key in keys:
        module = key.rsplit(".", 1)[0]
        if module not in seen:
            seen.add(module)
            out.append(key)
    return out[:show]


def _check_fits(state, net, show=5):
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    ckpt = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in ours if k not in ckpt]
    unexpected = [k for k in ckpt if k not in ours]
    mismatched = [(k, ckpt[k], ours[k]) for k in ours if k in ckpt and ckpt[k] != ours[k]]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"ADM checkpoint does not fit {net.config}:"]
    if missing:
        lines.append(f"  {len(missing)} missing keys: {_first_per_module(missing, show)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys: {_first_per_module(unexpected, show)}")
    if mismatched:
        shown = set(_first_per_module([k for k, _, _ in mismatched], show))
        lines.append(f"  {len(mismatched)} mis-shaped keys (checkpoint vs ours): "
                     + ", ".join(f"{k} {list(a)} vs {list(b)}" for k, a, b in mismatched if k in shown))
    lines.append("  likely wrong config field(s): " + ", ".join(_likely_wrong_fields(ckpt, ours, mismatched)))
    raise ValueError("\n".join(lines))


# ----------------------------------------------------------------------------
# Import.


def import_adm_checkpoint(path_or_state_dict, *, network=ADM_IMAGENET64):
    """Our UNet (eval mode, float32, CPU) holding an ADM-format checkpoint's weights.

    path_or_state_dict: a file as written by `torch.save(model.state_dict())` (optionally wrapped, DDP-prefixed
                        or half precision) or such a state dict.
    network:            UNetConfig fields (a dict) or a UNetConfig; the default is the EDM ImageNet-64 teacher.
    Raises ValueError listing missing / unexpected / mis-shaped keys when the config does not fit.
    """
    if isinstance(path_or_state_dict, Mapping):
        state = _normalise(path_or_state_dict)
    else:
        state = read_adm_state_dict(path_or_state_dict)
    cfg = network if isinstance(network, UNetConfig) else UNetConfig(**network)
    net = UNet(cfg)
    state = adm_to_pagoda(state)
    _check_fits(state, net)
    net.load_state_dict(state, strict=True)
    return net.eval()


def _sha256(path, chunk=1 << 24):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_imported_teacher(adm_path, out_path, *, network=ADM_IMAGENET64):
    """Import an ADM checkpoint and write it as our teacher checkpoint (`kind="teacher"`, net = ema).

    The meta mirrors `train_teacher`'s where it applies (params, classes, resolution) and records the
    source file instead of training statistics. Returns the meta dict.
    """
    adm_path = pathlib.Path(adm_path)
    net = import_adm_checkpoint(adm_path, network=network)
    cfg = net.config
    meta = {"source": adm_path.name, "source_format": "adm", "source_bytes": adm_path.stat().st_size,
            "source_sha256": _sha256(adm_path)[:16], "params": num_params(net),
            "classes": list(range(cfg.num_classes)), "resolution": cfg.img_resolution}
    save_network(out_path, net, kind="teacher", meta=meta)
    return meta
