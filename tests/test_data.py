"""Data: Fashion-MNIST discovery and parsing, the one resampling operator, image folders, the data stage."""

import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from pagoda import data


def test_idx_parsing_and_padding(tiny_fmnist):
    images, labels = data.load_fashion_mnist(tiny_fmnist, "train")
    raw = data.read_idx(tiny_fmnist / "train-images-idx3-ubyte.gz")
    assert images.shape == (40, 1, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images[:, 0, 2:30, 2:30], raw)
    assert images[:, :, :2].max() == 0 and images[:, :, :, -2:].max() == 0
    assert labels.tolist() == [i % 10 for i in range(40)]


def test_missing_data_error_names_all_three_ways(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("no network")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(data.DataNotFoundError) as e:
        data.locate_fashion_mnist(tmp_path / "nothing", download_dir=tmp_path / "dl",
                                  debian_dir=tmp_path / "no-debian")
    msg = str(e.value)
    assert "data.root" in msg and "dataset-fashion-mnist" in msg and "torchvision" in msg and "no network" in msg


def test_locate_prefers_the_configured_folder(tiny_fmnist):
    assert data.locate_fashion_mnist(tiny_fmnist, debian_dir="/nonexistent") == tiny_fmnist


def test_data_sources_are_tried_in_order(tiny_fmnist, tmp_path, monkeypatch):
    """The config's folder, then the Debian package, then torchvision's download: each only when the ones
    before it have nothing."""
    import shutil

    import torchvision.datasets
    downloads = []

    class FakeDownload:  # writes the IDX files where torchvision would
        def __init__(self, root, train, download):
            downloads.append(train)
            shutil.copytree(tiny_fmnist, pathlib.Path(root) / "FashionMNIST" / "raw", dirs_exist_ok=True)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeDownload)
    debian = tmp_path / "debian"
    shutil.copytree(tiny_fmnist, debian)
    dl = tmp_path / "dl"
    assert data.locate_fashion_mnist(tiny_fmnist, download_dir=dl, debian_dir=debian) == tiny_fmnist
    assert data.locate_fashion_mnist(None, download_dir=dl, debian_dir=debian) == debian
    assert downloads == []  # neither found it by downloading
    found = data.locate_fashion_mnist(None, download_dir=dl, debian_dir=tmp_path / "no-debian")
    assert found == dl / "FashionMNIST" / "raw" and downloads == [True, False]


def test_real_fashion_mnist_counts_shapes_ranges_labels():
    folder = data.locate_fashion_mnist(None)  # the Debian package (CI installs it)
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = data.load_fashion_mnist(folder, split)
        assert images.shape == (n, 1, 32, 32)
        assert np.bincount(labels).tolist() == [n // 10] * 10
        x = data.to_model(images[:1000])
        assert x.min().item() == -1.0 and x.max().item() == 1.0
        assert x[:, :, :2].eq(-1).all()  # zero padding is black


@pytest.mark.parametrize("size", [4, 8, 16])
def test_downsampler_matches_pil_bicubic(size):
    rng = np.random.default_rng(size)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(rng.random((6, 1, 8, 8))), size=32, mode="bilinear")
    images = np.concatenate([(rng.random((6, 1, 32, 32)) * 255), smooth.numpy() * 255]).round().astype(np.uint8)
    ours = data.resize_uint8(images, size).astype(int)
    pil = np.stack([np.asarray(Image.fromarray(im[0]).resize((size, size), Image.BICUBIC))[None] for im in images])
    # PIL rounds to uint8 between its two 1-D passes, so one level of difference is allowed.
    assert np.abs(ours - pil).max() <= 1
    assert np.abs(ours - pil).mean() < 0.25


def test_upsampling_uses_the_same_kernel_as_pil():
    rng = np.random.default_rng(0)
    pil_up = lambda images: np.stack([np.asarray(Image.fromarray(im[0]).resize((32, 32), Image.BICUBIC))[None]  # noqa: E731
                                      for im in images])
    # Mid-grey images, whose bicubic overshoot stays inside [0, 255]: one grey level at most (PIL's rounding
    # between its two passes).
    mid = (64 + rng.random((20, 1, 8, 8)) * 128).round().astype(np.uint8)
    assert np.abs(data.resize_uint8(mid, 32).astype(int) - pil_up(mid)).max() <= 1
    # Full-range noise: PIL also clips its first pass to [0, 255], so single pixels next to an overshoot
    # differ by up to ~20 levels; the typical pixel still agrees.
    noise = (rng.random((20, 1, 8, 8)) * 255).round().astype(np.uint8)
    diff = np.abs(data.resize_uint8(noise, 32).astype(int) - pil_up(noise))
    assert np.median(diff) == 0 and diff.mean() < 0.5 and diff.max() <= 24


def test_resize_is_identity_at_same_size_and_round_trips_uint8():
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert data.resize(x, 8) is x
    u = data.to_uint8(x)
    assert (data.to_model(u) - x).abs().max().item() <= 1 / 127.5


def test_resolutions_that_do_not_divide_the_data_are_rejected():
    data.check_resolutions([8, 16, 32], 32)
    with pytest.raises(ValueError, match="do not divide"):
        data.check_resolutions([8, 12], 32)
    with pytest.raises(ValueError, match="do not divide"):
        data.check_resolutions([8, 64], 32)
    with pytest.raises(ValueError, match="powers of two"):
        data.check_resolutions([6, 12], 24)


def test_build_dataset_writes_every_split_and_resolution(tiny_fmnist, tmp_path):
    written = data.build_dataset(tmp_path / "out", resolutions=[8, 16, 32], root=tiny_fmnist)
    assert len(written) == 6
    x32, y32, classes = data.load_dataset(tmp_path / "out", "train", 32)
    x8, y8, _ = data.load_dataset(tmp_path / "out", "train", 8)
    assert x8.shape == (40, 1, 8, 8) and np.array_equal(y8, y32)
    assert np.array_equal(x8, data.resize_uint8(x32, 8))
    assert classes == data.FASHION_MNIST_CLASSES
    with pytest.raises(ValueError, match="do not divide"):
        data.build_dataset(tmp_path / "bad", resolutions=[12, 32], root=tiny_fmnist)
    with pytest.raises(data.DataNotFoundError, match="data stage"):
        data.load_dataset(tmp_path / "out", "train", 64)


def adm_reference(img, r):
    # ADM's center_crop_arr written out step by step for a known size.
    while min(img.size) >= 2 * r:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), Image.BOX)
    s = r / min(img.size)
    img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.BICUBIC)
    a = np.asarray(img)
    t, l = (a.shape[0] - r) // 2, (a.shape[1] - r) // 2
    return a[t:t + r, l:l + r]


@pytest.fixture
def image_tree(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    sizes = {"zebra": [(100, 60), (61, 90)], "ant": [(40, 40), (130, 70), (50, 33)]}
    for cls, dims in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(dims):
            arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(arr).save(root / cls / f"{i}.{ext}")
    (root / "zebra" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_loader_uses_adm_preprocessing_and_sorted_classes(image_tree):
    images, labels, classes = data.load_image_folder(image_tree, 16)
    assert classes == ["ant", "zebra"]
    assert labels.tolist() == [0, 0, 0, 1, 1]
    assert images.shape == (5, 3, 16, 16) and images.dtype == np.uint8
    paths, _, _ = data.list_image_folder(image_tree)
    for img, path in zip(images, paths):
        expected = adm_reference(Image.open(path).convert("RGB"), 16)
        assert np.array_equal(img.transpose(1, 2, 0), expected)
    grey, _, _ = data.load_image_folder(image_tree, 8, channels=1, max_images=2)
    assert grey.shape == (2, 1, 8, 8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="does not exist"):
        data.list_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataNotFoundError, match="class subfolders"):
        data.list_image_folder(tmp_path / "empty")


def test_build_dataset_from_image_folders(image_tree, tmp_path):
    data.build_dataset(tmp_path / "out", resolutions=[8, 16], source="image_folder", root=image_tree,
                       test_root=image_tree, channels=3)
    x16, y, classes = data.load_dataset(tmp_path / "out", "test", 16)
    x8, _, _ = data.load_dataset(tmp_path / "out", "test", 8)
    assert x16.shape == (5, 3, 16, 16) and classes == ("ant", "zebra")
    assert np.array_equal(x8, data.resize_uint8(x16, 8))


@pytest.fixture
def imagenet_tree(tmp_path):
    """The ILSVRC-2012 train layout in miniature: <wnid>/<wnid>_<n>.JPEG, one folder per class."""
    rng = np.random.default_rng(1)
    root = tmp_path / "ILSVRC" / "train"
    for wnid, dims in {"n01440764": [(80, 60), (45, 70)], "n01443537": [(64, 64)], "n01484850": [(120, 50)]}.items():
        (root / wnid).mkdir(parents=True)
        for i, (w, h) in enumerate(dims):
            Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / wnid / f"{wnid}_{i}.JPEG")
    return root


def test_imagenet_source_streams_adm_preprocessing_at_each_resolution(imagenet_tree, tmp_path, monkeypatch):
    out = tmp_path / "data"
    decoded = []
    real_load = data.load_image
    monkeypatch.setattr(data, "load_image", lambda *a, **k: decoded.append(a[0]) or real_load(*a, **k))
    written = data.build_dataset(out, resolutions=[8, 16], source="imagenet", root=imagenet_tree,
                                 test_root=imagenet_tree, channels=3, workers=2)
    assert decoded == []  # the data stage only indexes: no image is decoded or held in memory
    assert sorted(p.name for p in written.values()) == ["test_16.json", "test_8.json", "train_16.json", "train_8.json"]
    assert not list(out.glob("*.npz")) and data.dataset_path(out, "train", 16).suffix == ".json"

    images, labels, classes = data.load_dataset(out, "train", 16)
    assert isinstance(images, data.StreamedImages) and images.shape == (4, 3, 16, 16) and len(images) == 4
    assert classes == ("n01440764", "n01443537", "n01484850") and labels.tolist() == [0, 0, 1, 2]
    paths, _, _ = data.list_image_folder(imagenet_tree)
    for r in (8, 16):
        stream, _, _ = data.load_dataset(out, "train", r)
        for i, path in enumerate(paths):  # each resolution straight from the JPEG, as the released code does
            assert np.array_equal(stream[i].transpose(1, 2, 0), adm_reference(Image.open(path).convert("RGB"), r))
    batch = images[torch.tensor([3, 0, 3])]
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == np.uint8
    assert np.array_equal(batch[0], images[3]) and np.array_equal(batch[1], images[0])
    assert np.array_equal(images[1:3], np.stack([images[1], images[2]]))
    assert len(decoded) > 0
    table = data.describe_dataset(out, [8, 16])
    assert table["images"].tolist() == [4, 4, 4, 4]
