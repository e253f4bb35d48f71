"""Shared fixtures: a tiny Fashion-MNIST-shaped dataset and a tiny teacher, written by the tests."""

import gzip
import struct

import numpy as np
import pytest
import torch

from pagoda import data
from pagoda.checkpoints import save_network
from pagoda.networks import UNet, UNetConfig

TINY_NET = UNetConfig(img_resolution=8, in_channels=1, out_channels=1, model_channels=16, channel_mult=(1, 2),
                      num_res_blocks=1, num_classes=10, norm_groups=8)


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def blobs(n, rng):
    """28x28 images with one bright rectangle each: structured enough for features to differ."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for im in images:
        y, x = rng.integers(2, 14, 2)
        h, w = rng.integers(6, 14, 2)
        im[y:y + h, x:x + w] = rng.integers(120, 256)
    return images


@pytest.fixture(scope="session")
def tiny_fmnist(tmp_path_factory):
    """A Fashion-MNIST-shaped IDX folder with 40 train and 20 test images."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("fmnist")
    for split, n in (("train", 40), ("test", 20)):
        img_stem, lbl_stem = data.FASHION_MNIST_FILES[split]
        write_idx(folder / (img_stem + ".gz"), blobs(n, rng))
        write_idx(folder / (lbl_stem + ".gz"), np.arange(n) % 10)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tiny_fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_data")
    data.build_dataset(out, resolutions=[8, 16, 32], root=tiny_fmnist)
    return out


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A randomly initialised (and perturbed, so that no layer is zero) teacher checkpoint."""
    torch.manual_seed(0)
    net = UNet(TINY_NET)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_network(path, net, kind="teacher", meta={"classes": [str(i) for i in range(10)]})
    return path
