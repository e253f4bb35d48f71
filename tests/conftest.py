"""Shared fixtures: a tiny Fashion-MNIST-shaped dataset and a tiny teacher, written by the tests."""

import gzip
import json
import os
import pathlib
import struct

# Each of the 2 xdist workers, and the notebook kernels it starts, computes on one thread. On two cores, one
# machine: one process 367 s, two workers of one thread 317 s, two workers of two threads 573 s. Set before
# numpy and torch load their BLAS and OpenMP pools, which read these once: numpy's and scipy's OpenBLAS ran
# on 2 threads beside torch's 1 (test_inception_path_runs_with_a_stand_in_model: 17 s alone, 64 s in the suite).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")

import numpy as np  # noqa: E402 (after the thread settings above)
import pytest
import torch
from xdist.scheduler import LoadScopeScheduling

from pagoda import data, decoder, encode
from pagoda.checkpoints import save_network
from pagoda.discriminator import ProjectedDiscriminator
from pagoda.features import EfficientNetLite0
from pagoda.losses import ReconstructionDistance
from pagoda.networks import UNet, UNetConfig

TINY_NET = UNetConfig(img_resolution=8, in_channels=1, out_channels=1, model_channels=16, channel_mult=(1, 2),
                      num_res_blocks=1, num_classes=10, norm_groups=8)


class NotebooksInOrder(LoadScopeScheduling):
    """pytest-xdist scheduling (pyproject: `-n 2`): the notebooks are one unit of work, run in order on one worker,
    since each reads what the one before it wrote in results/smoke; every other test is a unit of its own."""

    def _split_scope(self, nodeid):
        return "notebooks" if nodeid.startswith("notebooks/") else nodeid


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent under `-p no:xdist`
def pytest_xdist_make_scheduler(config, log):
    return NotebooksInOrder(config, log)


# Under mutmut (README, "Mutation testing") the tests run from mutants/, beside mutmut's record of each test's
# duration: a mutant's covering tests then run fastest first, file by file, so that `-x` stops a killed mutant
# at its cheapest failing test (mutmut passes them in no fixed order).
_MUTMUT_STATS = pathlib.Path(__file__).resolve().parents[1] / "mutmut-stats.json"
_DURATIONS = json.loads(_MUTMUT_STATS.read_text())["duration_by_test"] if _MUTMUT_STATS.exists() else None


def pytest_collection_modifyitems(items):
    """The rehearsal, the longest test, starts first; under mutmut, the fastest tests do."""
    if _DURATIONS is None:
        items.sort(key=lambda item: item.path.name != "test_rehearsal.py")
        return
    seconds = {item: _DURATIONS.get(item.nodeid, float("inf")) for item in items}
    first = {}
    for item in items:
        first[item.path] = min(first.get(item.path, float("inf")), seconds[item])
    items.sort(key=lambda item: (first[item.path], str(item.path), seconds[item]))


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


@pytest.fixture(scope="session")
def latents(tiny_teacher, tiny_data, tmp_path_factory):
    """Encoded latents of 12 tiny images and their flips, plus 16 noise -> teacher-sample pairs."""
    out = tmp_path_factory.mktemp("latents")
    encode.encode_dataset(teacher_path=tiny_teacher, data_dir=tiny_data, resolution=8, out_dir=out, n_images=12,
                          num_points=6, shard_size=8, progress=False, device="cpu")
    encode.teacher_pairs(teacher_path=tiny_teacher, out_dir=out, n_pairs=16, num_points=6, progress=False,
                         device="cpu")
    return out


def make_task(tiny_teacher, tiny_data, latents, *, resolution=8, objective="reconstruction",
              weighting="adaptive", targets=None, latent_arrays=None, gan_weight=0.2):
    """A Stage-2 DecoderTask on the tiny teacher and data (batch 8)."""
    torch.manual_seed(0)
    G = decoder.init_decoder(tiny_teacher, resolution=resolution)
    backbone = EfficientNetLite0(input_size=32)
    images, labels, _ = data.load_dataset(tiny_data, "train", resolution)
    pairs = encode.load_latents(latents, prefix="pairs") if objective != "reconstruction" else None
    return decoder.DecoderTask(G, ProjectedDiscriminator(num_classes=10, backbone=backbone),
                               ReconstructionDistance("feature", backbone=backbone),
                               latents=latent_arrays or encode.load_latents(latents),
                               targets=images if targets is None else targets,
                               train_images=images if targets is None else targets, train_labels=labels,
                               pairs=pairs, objective=objective, weighting=weighting, batch_size=8, lr_g=1e-3,
                               gan_weight=gan_weight)
