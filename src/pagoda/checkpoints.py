"""Network checkpoints: the weights together with the UNetConfig that builds them."""

import pathlib

import torch

from .loop import atomic_save
from .networks import UNet, UNetConfig


def save_network(path, net, *, kind, ema=None, meta=None):
    """Write {kind, config, net, ema, meta}; `kind` is 'teacher' or 'decoder'."""
    atomic_save({
        "kind": kind,
        "config": net.config.to_dict(),
        "net": net.state_dict(),
        "ema": (ema if ema is not None else net).state_dict(),
        "meta": meta or {},
    }, path)


def load_checkpoint(path, device="cpu"):
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location=device, weights_only=False)


def load_network(path, *, which="ema", device="cpu", expect_kind=None):
    """(UNet in eval mode with the `which` weights, checkpoint meta dict)."""
    ckpt = load_checkpoint(path, device)
    if expect_kind is not None and ckpt["kind"] != expect_kind:
        raise ValueError(f"{path} holds a {ckpt['kind']} network, expected a {expect_kind}")
    net = UNet(UNetConfig.from_dict(ckpt["config"])).to(device)
    net.load_state_dict(ckpt[which])
    return net.eval().requires_grad_(False), ckpt["meta"]


def save_small_network(path, net, meta):
    """Write {hparams, state, meta} for a network built from keyword hyperparameters (judge, omega estimator)."""
    atomic_save({"hparams": net.hparams, "state": net.state_dict(), "meta": meta}, path)


def load_small_network(path, cls, device="cpu"):
    """(cls(**hparams) with the saved weights, in eval mode and frozen; the saved meta)."""
    ckpt = load_checkpoint(path, device)
    net = cls(**ckpt["hparams"]).to(device)
    net.load_state_dict(ckpt["state"])
    return net.eval().requires_grad_(False), ckpt["meta"]
