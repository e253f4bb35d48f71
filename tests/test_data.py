"""Data: Fashion-MNIST discovery and parsing, the one resampling operator, image folders, the data stage."""

import gzip
import json
import pathlib
import re
import shutil
import struct
import sys

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


def fake_download(monkeypatch, cls):
    """Stand in `cls` for torchvision's FashionMNIST (no network, and no 10 s torchvision import)."""
    import types
    datasets = types.ModuleType("torchvision.datasets")
    datasets.FashionMNIST = cls
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_missing_data_error_names_both_ways_and_a_named_folder_is_never_replaced(tmp_path, monkeypatch):
    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("no network")
    fake_download(monkeypatch, Offline)
    with pytest.raises(data.DataNotFoundError) as e:
        data.locate_fashion_mnist(None, download_dir=tmp_path / "dl", debian_dir=tmp_path / "no-debian")
    msg = str(e.value)
    assert "data.root" in msg and "dataset-fashion-mnist" in msg and "torchvision" in msg and "no network" in msg


def test_a_named_data_root_must_exist_and_hold_the_files(tiny_fmnist, tmp_path, monkeypatch):
    """A folder the user names is used or the run stops naming it: no fallback to the Debian package."""
    fake_download(monkeypatch, lambda *a, **k: pytest.fail("must not download"))
    debian = tmp_path / "debian"
    shutil.copytree(tiny_fmnist, debian)
    with pytest.raises(data.DataNotFoundError, match="^" + re.escape(
            f"data.root = '{tmp_path}/typo' does not exist. Name the folder that holds Fashion-MNIST's IDX files, "
            "or set data.root: null to use the Debian package or the download.") + "$"):
        data.locate_fashion_mnist(tmp_path / "typo", download_dir=tmp_path / "dl", debian_dir=debian)
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataNotFoundError, match="^" + re.escape(
            f"data.root = '{tmp_path}/empty' holds no Fashion-MNIST IDX files (looked in it, FashionMNIST/raw and "
            "fashion-mnist for train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte, each optionally .gz). Set data.root: null to use the Debian package or the "
            "download.") + "$"):
        data.locate_fashion_mnist(str(tmp_path / "empty"), download_dir=tmp_path / "dl", debian_dir=debian)
    with pytest.raises(data.DataNotFoundError, match=rf"^data.root = '{tmp_path}/typo' does not exist \(source "
                                                     r"'fashion_mnist'\)$"):
        data.build_dataset(tmp_path / "out", resolutions=[8], root=tmp_path / "typo")
    assert not (tmp_path / "out").exists()  # stopped before any work


def test_locate_prefers_the_configured_folder(tiny_fmnist):
    assert data.locate_fashion_mnist(tiny_fmnist, debian_dir="/nonexistent") == tiny_fmnist


def test_data_sources_are_tried_in_order(tiny_fmnist, tmp_path, monkeypatch):
    """The config's folder if named (only it), else the Debian package, then torchvision's download: each only
    when the ones before it have nothing."""
    downloads = []

    class FakeDownload:  # writes the IDX files where torchvision would
        def __init__(self, root, train, download):
            downloads.append(train)
            shutil.copytree(tiny_fmnist, pathlib.Path(root) / "FashionMNIST" / "raw", dirs_exist_ok=True)
    fake_download(monkeypatch, FakeDownload)
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


def test_build_dataset_writes_every_split_and_resolution(tiny_fmnist, tmp_path):
    written = data.build_dataset(tmp_path / "out", resolutions=[8, 16, 32], root=tiny_fmnist)
    assert written == {(s, r): tmp_path / "out" / f"{s}_{r}.npz" for s in ("train", "test") for r in (8, 16, 32)}
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
    images, labels, classes, skipped = data.load_image_folder(image_tree, 16)
    assert classes == ["ant", "zebra"] and skipped == []
    assert labels.tolist() == [0, 0, 0, 1, 1]
    assert images.shape == (5, 3, 16, 16) and images.dtype == np.uint8
    paths, _, _, _ = data.list_image_folder(image_tree)
    for img, path in zip(images, paths):
        expected = adm_reference(Image.open(path).convert("RGB"), 16)
        assert np.array_equal(img.transpose(1, 2, 0), expected)
    grey, y, _, _ = data.load_image_folder(image_tree, 8, channels=1, max_images=2)
    assert grey.shape == (2, 1, 8, 8) and y.tolist() == [0, 1]  # one of each class, not the first two files
    every, labels, _, _ = data.load_image_folder(image_tree, 8, channels=1)
    assert np.array_equal(grey, every[np.sort(data.balanced_subset(labels, 2, seed=0))])  # the same ones each run


def test_image_folder_errors(tmp_path):
    with pytest.raises(data.DataNotFoundError,
                       match=r"^data\.root must name the image folder \(<root>/<class>/<image>\)$"):
        data.list_image_folder(None)
    with pytest.raises(data.DataNotFoundError, match="does not exist"):
        data.list_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataNotFoundError, match="class subfolders"):
        data.list_image_folder(tmp_path / "empty")


@pytest.mark.parametrize("source", ["image_folder", "imagenet"])
def test_folder_sources_stop_before_any_work_unless_both_folders_are_named_and_exist(source, image_tree, tmp_path):
    out = tmp_path / "out"
    for key, folders in (("root", dict(root=None, test_root=image_tree)),
                         ("test_root", dict(root=image_tree, test_root=None))):
        with pytest.raises(data.DataNotFoundError, match="^" + re.escape(
                f"data.{key} must name a folder for source '{source}' (<folder>/<class>/<image>)") + "$"):
            data.build_dataset(out, resolutions=[8], source=source, **folders)
    with pytest.raises(data.DataNotFoundError,
                       match="^" + re.escape(f"data.test_root = '{tmp_path}/typo' does not exist (source '{source}')")):
        data.build_dataset(out, resolutions=[8], source=source, root=image_tree, test_root=tmp_path / "typo")
    assert not out.exists()


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
    paths, _, _, _ = data.list_image_folder(imagenet_tree)
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


# ----------------------------------------------------------------------------
# Exact values on small hand-made inputs.

def test_to_model_and_to_uint8_map_0_255_to_minus_one_one():
    x = data.to_model(np.array([0, 51, 255], dtype=np.uint8))
    assert x.dtype == torch.float32 and torch.allclose(x, torch.tensor([-1.0, -0.6, 1.0]), atol=1e-7)
    # Out-of-range values clip to 0 / 255; (x + 1) * 127.5 is rounded to nearest (0 -> 127.5 -> 128, half to even).
    u = data.to_uint8(torch.tensor([-3.0, -1.0, -0.6, 0.0, 10.7 / 127.5 - 1, 1.0, 2.5]))
    assert u.dtype == torch.uint8 and u.tolist() == [0, 0, 51, 128, 11, 255, 255]


def test_resize_resamples_non_square_inputs_and_keeps_square_ones():
    x = torch.rand(1, 2, 8, 16)
    assert data.resize(x, 8).shape == (1, 2, 8, 8) and data.resize(x.transpose(2, 3), 8).shape == (1, 2, 8, 8)
    same = torch.rand(1, 3, 8, 8)  # channels != size: only the spatial sizes decide
    assert data.resize(same, 8) is same


def test_resize_uint8_saturates_bicubic_overshoot():
    # Upsampling a black/white step overshoots on both sides of the edge (Keys kernel); the uint8 result must
    # clip to [0, 255], so every row stays monotone from 0 to 255 (a wrap-around would break monotonicity).
    step = np.zeros((1, 1, 8, 8), dtype=np.uint8)
    step[..., 4:] = 255
    up = data.resize_uint8(step, 16)
    assert up.dtype == np.uint8 and up.shape == (1, 1, 16, 16)
    rows = up[0, 0].astype(int)
    assert (np.diff(rows, axis=1) >= 0).all()
    assert (rows[:, 0] == 0).all() and (rows[:, -1] == 255).all()
    # The overshoot really is there before clipping, so the test exercises the clip.
    raw = data.resize(torch.from_numpy(step).float(), 16)
    assert raw.max() > 255.5 and raw.min() < -0.5


def test_examples_per_class_takes_the_first_of_each_class_in_class_order():
    labels = [2, 0, 1, 0, 2, 2, 1, 0]
    assert data.examples_per_class(labels, 2, 3).tolist() == [1, 3, 2, 6, 0, 4]
    assert data.examples_per_class(np.array(labels), 1, 2).tolist() == [1, 2]


# ----------------------------------------------------------------------------
# IDX files and Fashion-MNIST discovery.

def write_raw_idx(path, array, *, magic=0, dtype_code=0x08):
    """An uncompressed IDX file, optionally with a wrong magic number or element type."""
    header = struct.pack(">HBB", magic, dtype_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_read_idx_reads_uncompressed_files_and_rejects_other_types(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_raw_idx(tmp_path / "a-idx3-ubyte", a)
    assert np.array_equal(data.read_idx(tmp_path / "a-idx3-ubyte"), a)
    write_raw_idx(tmp_path / "v-idx1-ubyte", np.array([7, 9, 200]))
    assert data.read_idx(str(tmp_path / "v-idx1-ubyte")).tolist() == [7, 9, 200]
    for name, kw in (("float", dict(dtype_code=0x0D)), ("magic", dict(magic=1))):
        write_raw_idx(tmp_path / name, a, **kw)
        with pytest.raises(ValueError, match=f"^{tmp_path / name} is not an unsigned-byte IDX file$"):
            data.read_idx(tmp_path / name)


def copy_idx_folder(src, dst, *, gunzip=False):
    """The tiny IDX files under dst, gzipped as they are or (gunzip) uncompressed."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if gunzip:
            (dst / p.name.removesuffix(".gz")).write_bytes(gzip.decompress(p.read_bytes()))
        else:
            shutil.copy(p, dst / p.name)
    return dst


def test_fashion_mnist_is_found_uncompressed_and_in_the_usual_subfolders(tiny_fmnist, tmp_path):
    plain = copy_idx_folder(tiny_fmnist, tmp_path / "plain", gunzip=True)
    assert data.locate_fashion_mnist(plain, debian_dir=tmp_path / "none") == plain
    images, labels = data.load_fashion_mnist(plain, "test")
    gz_images, _ = data.load_fashion_mnist(tiny_fmnist, "test")
    assert np.array_equal(images, gz_images)
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(20)]
    for sub in ("FashionMNIST/raw", "fashion-mnist"):  # torchvision's layout and the Debian package's name
        root = tmp_path / sub.replace("/", "_")
        copy_idx_folder(tiny_fmnist, root / sub)
        assert data.locate_fashion_mnist(str(root), debian_dir=tmp_path / "none") == root / sub


def test_fashion_mnist_with_mismatched_labels_is_rejected(tiny_fmnist, tmp_path):
    folder = copy_idx_folder(tiny_fmnist, tmp_path / "f")
    img, lbl = data.FASHION_MNIST_FILES["train"]
    write_raw_idx(folder / img, np.zeros((5, 28, 28)))
    (folder / (img + ".gz")).unlink()
    (folder / (lbl + ".gz")).unlink()
    write_raw_idx(folder / lbl, np.arange(4))
    with pytest.raises(ValueError, match="^train: 5 images but 4 labels$"):
        data.load_fashion_mnist(folder, "train")


def test_missing_data_error_lists_each_way_exactly(tmp_path, monkeypatch):
    """The error is the user's guide to providing the data: every line of it, for each situation."""
    calls = []

    class Download:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if fail:
                raise RuntimeError("no network")
    fake_download(monkeypatch, Download)
    head = "Fashion-MNIST was not found. Tried, in order:\n"
    tail = "\nInstall the package, allow the download, or name the folder as data.root, and run again."
    debian = tmp_path / "no-debian"
    line1 = f"  1. the Debian package dataset-fashion-mnist ({debian}): not installed " \
            "(sudo apt-get install dataset-fashion-mnist)"
    dl = tmp_path / "dl"
    for fail, line2 in ((True, f"  2. torchvision's download into {dl}: failed (RuntimeError: no network)"),
                        (False, f"  2. torchvision's download into {dl}: finished without the IDX files")):
        with pytest.raises(data.DataNotFoundError) as e:
            data.locate_fashion_mnist(None, download_dir=dl, debian_dir=debian)
        assert str(e.value) == head + "\n".join([line1, line2]) + tail
    # Both splits are asked for, train first, each time (the first failure stops the attempt).
    assert calls == [(str(dl), True, True), (str(dl), True, True), (str(dl), False, True)]
    with pytest.raises(data.DataNotFoundError) as e:
        data.locate_fashion_mnist(None, debian_dir=debian)
    assert str(e.value) == head + "\n".join([
        line1, "  2. torchvision's download: not attempted (no download folder given)"]) + tail


# ----------------------------------------------------------------------------
# Image folders.

def test_center_crop_halves_with_box_while_the_short_side_is_at_least_twice_r():
    # 48x32 made of 2x2 blocks: the short side is exactly 2R for R = 16, so ADM BOX-halves it to 24x16 (the block
    # values, exactly), needs no bicubic step (scale 1) and crops the centre 16 columns (offset 4).
    blocks = np.random.default_rng(0).integers(0, 256, (16, 24)).astype(np.uint8)
    img = Image.fromarray(np.kron(blocks, np.ones((2, 2), dtype=np.uint8)))
    assert img.size == (48, 32)
    assert np.array_equal(data.center_crop_arr(img, 16), blocks[:, 4:20])


def test_image_folder_without_images_is_rejected(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("no images here")
    with pytest.raises(data.DataNotFoundError,
                       match=rf"^no images \(\.png, \.jpg, \.jpeg, \.gif, \.bmp, \.webp\) under {tmp_path}$"):
        data.list_image_folder(tmp_path)


def test_image_folder_dataset_defaults_to_grey_and_describes_every_split(image_tree, tmp_path):
    (image_tree / "zzz").mkdir()  # a class without images: it still counts, with 0 examples
    out = tmp_path / "a" / "b"  # parent folders are created, and a second build overwrites the first
    for _ in range(2):
        data.build_dataset(out, resolutions=[8, 16], source="image_folder", root=image_tree, test_root=image_tree,
                           max_images=4)
    rows = []
    for split in ("train", "test"):
        for r in (8, 16):
            x, y, classes = data.load_dataset(out, split, r)
            # 4 of 5 images: a balanced subset (2 + 2), not the first four files (3 + 1)
            assert x.shape == (4, 1, r, r) and classes == ("ant", "zebra", "zzz") and y.tolist() == [0, 0, 1, 1]
            rows.append({"split": split, "resolution": r, "images": 4, "shape": f"1x{r}x{r}", "min": int(x.min()),
                         "max": int(x.max()), "mean": round(float(x.mean()), 2), "classes": 3, "per class": "0-2"})
    table = data.describe_dataset(out, [8, 16])
    assert table.to_dict("records") == rows
    with pytest.raises(ValueError, match=r"^unknown data source 'foo' \(fashion_mnist, image_folder or imagenet\)$"):
        data.build_dataset(out, resolutions=[8], source="foo")


def test_build_dataset_passes_root_and_download_folder_to_the_search(tiny_fmnist, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(data, "locate_fashion_mnist", lambda *a, **k: asked.append((a, k)) or tiny_fmnist)
    (tmp_path / "cfg-root").mkdir()
    data.build_dataset(tmp_path / "out", resolutions=[32], root=tmp_path / "cfg-root", download_dir="dl")
    assert asked == [((tmp_path / "cfg-root",), {"download_dir": "dl"})]


def test_dataset_path_prefers_arrays_over_a_stream_description(tmp_path):
    npz, stream = tmp_path / "train_8.npz", tmp_path / "train_8.json"
    assert data.dataset_path(tmp_path, "train", 8) == npz  # neither: the arrays' name, for the error message
    stream.write_text("{}")
    assert data.dataset_path(tmp_path, "train", 8) == stream
    npz.write_bytes(b"")
    assert data.dataset_path(tmp_path, "train", 8) == npz


# ----------------------------------------------------------------------------
# Streams.

def test_stream_index_and_description_on_disk(imagenet_tree, tmp_path):
    (tmp_path / "idx").mkdir()
    path = data.write_stream_index(tmp_path / "idx", "val", imagenet_tree)
    assert path == tmp_path / "idx" / "val_index.json"
    assert [p.name for p in (tmp_path / "idx").iterdir()] == ["val_index.json"]  # no temporary file left
    assert json.loads(path.read_text()) == {
        "root": str(imagenet_tree.resolve()), "channels": 3,
        "classes": ["n01440764", "n01443537", "n01484850"], "labels": [0, 0, 1, 2],
        "files": ["n01440764/n01440764_0.JPEG", "n01440764/n01440764_1.JPEG", "n01443537/n01443537_0.JPEG",
                  "n01484850/n01484850_0.JPEG"], "skipped": []}
    out = tmp_path / "data"
    data.build_dataset(out, resolutions=[8], source="imagenet", root=imagenet_tree, test_root=imagenet_tree,
                       channels=1, workers=3)
    assert json.loads((out / "test_8.json").read_text()) == {"index": "test_index.json", "resolution": 8, "workers": 3}
    stream, labels, _ = data.load_dataset(out, "test", 8)
    assert stream.workers == 3 and stream.shape == (4, 1, 8, 8) and stream[0].shape == (1, 8, 8)
    assert labels.dtype == np.int64


def test_streamed_images_index_like_arrays(imagenet_tree):
    paths, _, _, _ = data.list_image_folder(imagenet_tree)
    stream = data.StreamedImages(imagenet_tree, [p.relative_to(imagenet_tree) for p in paths], 8)
    one = [data.load_image(p, 8) for p in paths]
    assert stream.shape == (4, 3, 8, 8) and one[2].shape == (3, 8, 8)  # RGB by default
    for idx in (2, np.int64(2), torch.tensor(2)):  # a single index gives one image
        assert np.array_equal(stream[idx], one[2])
    assert np.array_equal(stream[[2]], one[2][None])  # a one-element index gives a batch of one
    for empty in ([], slice(2, 2), torch.tensor([], dtype=torch.long)):
        batch = stream[empty]
        assert batch.shape == (0, 3, 8, 8) and batch.dtype == np.uint8
    assert np.array_equal(data.StreamedImages(imagenet_tree, stream.files, 8, workers=0)[::2], np.stack(one[::2]))
    # An index of any shape gives one flat batch, in order.
    assert np.array_equal(stream[np.array([[3, 0], [1, 1]])], np.stack([one[3], one[0], one[1], one[1]]))
    arr = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    assert data.as_images(stream) is stream and isinstance(data.as_images(arr), torch.Tensor)
    assert torch.equal(data.as_images(arr), torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


def test_describe_streamed_dataset_uses_an_evenly_spaced_sample_of_256(tmp_path):
    """Over 256 images, the value statistics come from 256 images spaced evenly from the first to the last."""
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    values = (np.arange(300) * 7 % 256).astype(np.uint8)  # image i is uniform grey values[i]
    for i, v in enumerate(values):
        Image.fromarray(np.full((4, 4), v, dtype=np.uint8)).save(root / "a" / f"{i:03d}.png")
    data.build_dataset(tmp_path / "out", resolutions=[4], source="imagenet", root=root, test_root=root, channels=1)
    row = data.describe_dataset(tmp_path / "out", [4], splits=("test",)).iloc[0]
    sample = values[[int(i * 299 / 255) for i in range(256)]]  # i * (N - 1) / 255, rounded down
    assert row["images"] == 300 and row["shape"] == "1x4x4" and row["per class"] == "300-300"
    assert row["mean"] == round(float(sample.mean()), 2) and row["min"] == sample.min() and row["max"] == sample.max()


def test_unreadable_images_stop_indexing_with_one_list_or_are_skipped_and_counted(imagenet_tree, tmp_path, capsys):
    bad = [imagenet_tree / "n01443537" / "n01443537_9.JPEG", imagenet_tree / "n01484850" / "broken.png"]
    bad[0].write_bytes(b"<html>not found</html>")  # what a failed download leaves
    good = (imagenet_tree / "n01440764" / "n01440764_0.JPEG").read_bytes()
    bad[1].write_bytes(good[:len(good) // 2])  # a truncated file: the header reads, the stream does not
    with pytest.raises(data.UnreadableImagesError) as e:
        data.list_image_folder(imagenet_tree)
    msg = str(e.value)
    assert msg.startswith(f"2 of 6 image files under {imagenet_tree} cannot be read:\n")
    assert f"  {bad[0]}: UnidentifiedImageError" in msg and f"  {bad[1]}: " in msg
    assert msg.endswith("set data.skip_unreadable: true to leave them out.")
    paths, labels, _, skipped = data.list_image_folder(imagenet_tree, skip_unreadable=True)
    assert [p for p, _ in skipped] == [str(b) for b in bad] and len(paths) == 4 and labels.tolist() == [0, 0, 1, 2]
    out = tmp_path / "data"
    with pytest.raises(data.UnreadableImagesError):
        data.build_dataset(out, resolutions=[8], source="imagenet", root=imagenet_tree, test_root=imagenet_tree)
    data.build_dataset(out, resolutions=[8], source="imagenet", root=imagenet_tree, test_root=imagenet_tree,
                       skip_unreadable=True)
    assert f"train: left out 2 unreadable image files under {imagenet_tree} (data.skip_unreadable)" in \
        capsys.readouterr().out
    index = json.loads((out / "train_index.json").read_text())
    assert [s["file"] for s in index["skipped"]] == [str(b) for b in bad] and len(index["files"]) == 4
    stream, _, _ = data.load_dataset(out, "train", 8)
    assert stream[np.arange(4)].shape == (4, 1, 8, 8)  # every indexed file decodes


def test_balanced_subset_is_random_and_covers_classes_evenly_in_every_prefix():
    labels = np.repeat(np.arange(5), [40, 40, 3, 40, 40])  # sorted by class, like an image-folder index
    s = data.balanced_subset(labels, 50, seed=0)
    assert len(set(s.tolist())) == 50
    counts = np.bincount(labels[s], minlength=5)
    assert counts[2] == 3 and sorted(np.delete(counts, 2).tolist()) == [11, 12, 12, 12]  # the small class: all
    for k in (5, 10, 15):  # every prefix is balanced while each class has items left
        assert np.bincount(labels[s[:k]], minlength=5).tolist() == [k // 5] * 5
    assert not np.array_equal(s, data.balanced_subset(labels, 50, seed=1))
    assert np.array_equal(s, data.balanced_subset(labels, 50, seed=0))
    assert sorted(data.balanced_subset(labels, 500).tolist()) == list(range(163))  # all of them at most


def test_read_error_decodes_jpegs_at_an_eighth_of_their_size(tmp_path, monkeypatch):
    """The check asks PIL's draft mode for (max(1, W // 8), max(1, H // 8)), so that a JPEG is decoded at 1/8 of
    its size (the cost the docstring promises), not in full; a file that decodes gives None."""
    from PIL import JpegImagePlugin
    asked, real = [], JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        asked.append(size)
        out = real(self, mode, size)
        asked.append(self.size)  # the size it will decode at
        return out
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    for w, h in ((100, 12), (12, 100)):  # one side under 16 px: the max(1, .) floor; 100 / 8 is not whole
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(tmp_path / f"{w}x{h}.jpg")
        assert data.read_error(tmp_path / f"{w}x{h}.jpg") is None
    # 100 // 8 = 12 and 12 // 8 = 1; PIL then decodes at 1/8 (min(100 // 12, 12 // 1) = 8), rounding up.
    assert asked == [(12, 1), (13, 2), (1, 12), (2, 13)]
    assert all(type(v) is int for size in asked for v in size)


def test_unreadable_files_are_listed_one_per_line_and_skipping_reaches_every_loader(tmp_path, capsys):
    """Every unreadable file on a line of its own between the count and the advice; load_image_folder and
    write_stream_index stop on them by default and pass skip_unreadable on; an index records why each was
    skipped; with every file unreadable, skipping stops with a clear error instead of an empty dataset."""
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
    Image.fromarray(np.full((6, 6, 3), 50, np.uint8)).save(root / "a" / "good.png")
    bad = [root / "a" / "x.jpg", root / "b" / "y.png"]
    for p in bad:
        p.write_bytes(b"<html>404</html>")
    reasons = [f"UnidentifiedImageError: cannot identify image file {str(p)!r}" for p in bad]
    with pytest.raises(data.UnreadableImagesError) as e:
        data.list_image_folder(root)
    assert str(e.value).split("\n") == [
        f"2 of 3 image files under {root} cannot be read:", f"  {bad[0]}: {reasons[0]}", f"  {bad[1]}: {reasons[1]}",
        "Replace or delete them, or set data.skip_unreadable: true to leave them out."]
    with pytest.raises(data.UnreadableImagesError, match="^2 of 3 image files"):
        data.load_image_folder(root, 4)
    with pytest.raises(data.UnreadableImagesError, match="^2 of 3 image files"):
        data.write_stream_index(tmp_path, "train", root)
    images, labels, classes, skipped = data.load_image_folder(root, 4, skip_unreadable=True)
    assert images.shape == (1, 3, 4, 4) and (images == 50).all() and labels.tolist() == [0] and classes == ["a", "b"]
    assert skipped == [(str(bad[0]), reasons[0]), (str(bad[1]), reasons[1])]
    index = json.loads(data.write_stream_index(tmp_path, "train", root, skip_unreadable=True).read_text())
    assert index["files"] == ["a/good.png"] and index["labels"] == [0]
    assert index["skipped"] == [{"file": str(bad[0]), "error": reasons[0]}, {"file": str(bad[1]), "error": reasons[1]}]
    assert labels.dtype == np.int64
    data.build_dataset(tmp_path / "out", resolutions=[4], source="image_folder", root=root, test_root=root,
                       skip_unreadable=True)
    assert capsys.readouterr().out.splitlines() == [
        f"{split}: left out 2 unreadable image files under {root} (data.skip_unreadable)" for split in ("train", "test")]
    (root / "a" / "good.png").unlink()  # nothing readable left: a clear error, not an empty dataset
    for load in (lambda: data.list_image_folder(root, skip_unreadable=True),
                 lambda: data.load_image_folder(root, 4, skip_unreadable=True),
                 lambda: data.write_stream_index(tmp_path, "train", root, skip_unreadable=True)):
        with pytest.raises(data.UnreadableImagesError, match="^" + re.escape(
                f"none of the 2 image files under {root} can be read (first: {bad[0]}: {reasons[0]}); "
                "data.skip_unreadable leaves no image") + "$"):
            load()
