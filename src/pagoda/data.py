"""Datasets at every resolution of the study, built with one resampling operator.

Images are stored as uint8 arrays (N, C, R, R) with int64 labels, one file per split and resolution;
`to_model` maps them to [-1, 1] floats as ADM does (x / 127.5 - 1).
"""

import gzip
import json
import os
import pathlib
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .plan import FASHION_MNIST_SIZE, check_resolutions

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


class DataNotFoundError(FileNotFoundError):
    pass


class UnreadableImagesError(ValueError):
    pass


# ----------------------------------------------------------------------------
# The project's one resampling operator.

def resize(x, size):
    """Antialiased bicubic resampling of a float batch (N, C, H, W) to (size, size).

    Uses the Keys a = -0.5 kernel widened by the scale factor when shrinking, i.e. PIL's BICUBIC
    filter (PIL rounds to uint8 between its two 1-D passes; this does not). Every downsampled image
    of the study (training data, Stage-3 low-resolution inputs, inverse-problem observations) and every
    bicubic baseline goes through here.
    """
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def resize_uint8(images, size):
    """`resize` on uint8 arrays (N, C, H, W), rounded back to uint8."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    return resize(x, size).round().clamp(0, 255).to(torch.uint8).numpy()


def to_model(images):
    """uint8 (N, C, R, R) array or tensor -> float32 tensor in [-1, 1]."""
    x = torch.as_tensor(images)
    return x.float() / 127.5 - 1


def to_uint8(x):
    """float tensor in [-1, 1] -> uint8 tensor (rounded, clipped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ----------------------------------------------------------------------------
# Fashion-MNIST.

def read_idx(path):
    """Parse an IDX file (optionally gzipped) into a numpy array."""
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder, stem):
    for name in (stem + ".gz", stem):
        p = pathlib.Path(folder) / name
        if p.exists():
            return p
    return None


def _idx_folder_ok(folder):
    return folder is not None and all(_find_idx(folder, s) for pair in FASHION_MNIST_FILES.values() for s in pair)


def locate_fashion_mnist(root=None, *, download_dir=None, debian_dir=FASHION_MNIST_DEBIAN_DIR):
    """Find Fashion-MNIST's IDX files: in `root` when the config names one (there only: a folder the user
    names is never silently replaced), else the Debian package, then torchvision's download.

    Returns the folder holding the four IDX files (gzipped or not).
    """
    if root is not None:
        root = pathlib.Path(root)
        if not root.is_dir():
            raise DataNotFoundError(f"data.root = '{root}' does not exist. Name the folder that holds Fashion-MNIST's "
                                    "IDX files, or set data.root: null to use the Debian package or the download.")
        for folder in (root, root / "FashionMNIST" / "raw", root / "fashion-mnist"):
            if _idx_folder_ok(folder):
                return folder
        raise DataNotFoundError(f"data.root = '{root}' holds no Fashion-MNIST IDX files (looked in it, FashionMNIST/raw "
                                f"and fashion-mnist for {', '.join(s for pair in FASHION_MNIST_FILES.values() for s in pair)}"
                                ", each optionally .gz). Set data.root: null to use the Debian package or the download.")
    tried = []
    if _idx_folder_ok(debian_dir):
        return pathlib.Path(debian_dir)
    tried.append(f"  1. the Debian package dataset-fashion-mnist ({debian_dir}): not installed "
                 "(sudo apt-get install dataset-fashion-mnist)")
    if download_dir is not None:
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(str(download_dir), train=True, download=True)
            FashionMNIST(str(download_dir), train=False, download=True)
            raw = pathlib.Path(download_dir) / "FashionMNIST" / "raw"
            if _idx_folder_ok(raw):
                return raw
            tried.append(f"  2. torchvision's download into {download_dir}: finished without the IDX files")
        except Exception as e:  # network errors come in many types
            tried.append(f"  2. torchvision's download into {download_dir}: failed ({type(e).__name__}: {e})")
    else:
        tried.append("  2. torchvision's download: not attempted (no download folder given)")
    raise DataNotFoundError("Fashion-MNIST was not found. Tried, in order:\n" + "\n".join(tried) +
                            "\nInstall the package, allow the download, or name the folder as data.root, and run again.")


def load_fashion_mnist(folder, split):
    """uint8 images (N, 1, 32, 32) zero-padded from 28x28, and int64 labels."""
    img_stem, lbl_stem = FASHION_MNIST_FILES[split]
    images = read_idx(_find_idx(folder, img_stem))
    labels = read_idx(_find_idx(folder, lbl_stem)).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    pad = (FASHION_MNIST_SIZE - images.shape[-1]) // 2
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))[:, None]
    return images, labels


# ----------------------------------------------------------------------------
# Image folders (users' own data; ADM preprocessing).

def center_crop_arr(pil_image, resolution):
    """ADM preprocessing: BOX-halve while the short side >= 2R, BICUBIC to short side R, centre crop."""
    while min(*pil_image.size) >= 2 * resolution:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = resolution / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.asarray(pil_image)
    top = (arr.shape[0] - resolution) // 2
    left = (arr.shape[1] - resolution) // 2
    return arr[top:top + resolution, left:left + resolution]


def read_error(path):
    """None if PIL decodes the image file, else why not ("ExceptionType: message").

    JPEGs decode at 1/8 scale (PIL's draft mode), which still reads every byte of the stream, so a
    truncated file is caught at an eighth of the cost of a full decode."""
    try:
        with Image.open(path) as img:
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except Exception as e:  # PIL raises many types on a bad file
        return f"{type(e).__name__}: {e}"
    return None


def list_image_folder(root, *, skip_unreadable=False, workers=8):
    """(paths, labels, class_names, skipped): one class per sorted subfolder, files sorted within it.

    Every file is decoded once here, so that a bad one stops the data stage with one message listing
    every unreadable file instead of a training job hours later; with `skip_unreadable` they are left
    out and returned as `skipped` [(path, reason)].
    """
    if root is None:
        raise DataNotFoundError("data.root must name the image folder (<root>/<class>/<image>)")
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataNotFoundError(f"{root} has no class subfolders (expected {root}/<class>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    with ThreadPoolExecutor(max(1, int(workers))) as pool:  # PIL decodes outside the GIL
        errors = list(pool.map(read_error, paths))
    skipped = [(str(p), e) for p, e in zip(paths, errors) if e is not None]
    if skipped and not skip_unreadable:
        raise UnreadableImagesError(f"{len(skipped)} of {len(paths)} image files under {root} cannot be read:\n" +
                                    "\n".join(f"  {p}: {e}" for p, e in skipped) +
                                    "\nReplace or delete them, or set data.skip_unreadable: true to leave them out.")
    if len(skipped) == len(paths):
        raise UnreadableImagesError(f"none of the {len(paths)} image files under {root} can be read (first: "
                                    f"{skipped[0][0]}: {skipped[0][1]}); data.skip_unreadable leaves no image")
    keep = [e is None for e in errors]
    paths = [p for p, k in zip(paths, keep) if k]
    labels = [lbl for lbl, k in zip(labels, keep) if k]
    return paths, np.array(labels, dtype=np.int64), classes, skipped


def load_image(path, resolution, channels=3):
    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        arr = center_crop_arr(img, resolution)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_image_folder(root, resolution, *, channels=3, max_images=None, skip_unreadable=False, workers=8):
    """uint8 images (N, C, R, R) with ADM preprocessing, int64 labels, the class names and the skipped files."""
    paths, labels, classes, skipped = list_image_folder(root, skip_unreadable=skip_unreadable, workers=workers)
    if max_images is not None:
        keep = np.sort(balanced_subset(labels, max_images))
        paths, labels = [paths[i] for i in keep], labels[keep]
    images = np.stack([load_image(p, resolution, channels) for p in paths])
    return images, labels, classes, skipped


# ----------------------------------------------------------------------------
# Streamed image folders (ImageNet): an index on disk, images decoded when a batch asks for them.

class StreamedImages:
    """uint8 images (N, C, R, R) of an image-folder index, decoded on demand.

    Each image gets ADM's preprocessing at R directly from its file (`center_crop_arr`), as the released
    code prepares every resolution of ImageNet; nothing is held in memory. Indexing with an int gives
    one image, with a slice, array or tensor a stacked numpy batch (decoded by `workers` threads),
    so the training stages use it like the in-memory arrays.
    """

    def __init__(self, root, files, resolution, *, channels=3, workers=8):
        self.root, self.files, self.resolution = pathlib.Path(root), list(files), int(resolution)
        self.channels, self.workers = channels, max(1, int(workers))

    def __len__(self):
        return len(self.files)

    @property
    def shape(self):
        return (len(self.files), self.channels, self.resolution, self.resolution)

    def _load(self, i):
        return load_image(self.root / self.files[i], self.resolution, self.channels)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)) or (torch.is_tensor(idx) and idx.ndim == 0):
            return self._load(int(idx))
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx).reshape(-1)
        if len(idx) == 0:
            return np.zeros((0, *self.shape[1:]), dtype=np.uint8)
        with ThreadPoolExecutor(min(self.workers, len(idx))) as pool:  # PIL decodes outside the GIL
            return np.stack(list(pool.map(self._load, idx)))


def as_images(images):
    """Training stages keep in-memory arrays as one tensor and streamed images as they are."""
    return images if isinstance(images, StreamedImages) else torch.as_tensor(images)


def write_stream_index(out_dir, split, root, *, channels=3, skip_unreadable=False, workers=8):
    """{out_dir}/{split}_index.json: every readable image file under root (relative paths), labels, classes,
    and the files left out as unreadable."""
    paths, labels, classes, skipped = list_image_folder(root, skip_unreadable=skip_unreadable, workers=workers)
    root = pathlib.Path(root).resolve()
    index = {"root": str(root), "channels": channels, "classes": list(classes), "labels": labels.tolist(),
             "files": [str(pathlib.Path(p).resolve().relative_to(root)) for p in paths],
             "skipped": [{"file": p, "error": e} for p, e in skipped]}
    path = pathlib.Path(out_dir) / f"{split}_index.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------
# The data stage: every split at every resolution.

def dataset_path(data_dir, split, resolution):
    """The stage's file for (split, R): arrays ({split}_{R}.npz) or a stream description ({split}_{R}.json)."""
    npz = pathlib.Path(data_dir) / f"{split}_{resolution}.npz"
    stream = npz.with_suffix(".json")
    return stream if stream.exists() and not npz.exists() else npz


def check_named_folders(source, root, test_root):
    """Stop before any work if a folder the config names does not exist (no silent fallback)."""
    if source in ("image_folder", "imagenet"):
        for key, folder in (("root", root), ("test_root", test_root)):
            if folder is None:
                raise DataNotFoundError(f"data.{key} must name a folder for source {source!r} (<folder>/<class>/<image>)")
    for key, folder in (("root", root), ("test_root", test_root)):
        if folder is not None and not pathlib.Path(folder).is_dir():
            raise DataNotFoundError(f"data.{key} = '{folder}' does not exist (source {source!r})")


def build_dataset(out_dir, *, resolutions, source="fashion_mnist", root=None, test_root=None,
                  channels=1, max_images=None, download_dir=None, workers=8, skip_unreadable=False):
    """Write {out_dir}/{split}_{R}.npz (images uint8 (N, C, R, R), labels) for every R in `resolutions`.

    Full-size images come from the source; every lower resolution is their `resize` by this project's
    one operator. source="imagenet" streams instead: {split}_index.json lists the files once and
    {split}_{R}.json describes the stream at R (ADM preprocessing per resolution, `StreamedImages`).
    Image folders are checked file by file first (`list_image_folder`); unreadable files stop the stage
    or, with `skip_unreadable`, are left out and counted. Returns {(split, R): path}.
    """
    if source not in ("fashion_mnist", "image_folder", "imagenet"):
        raise ValueError(f"unknown data source {source!r} (fashion_mnist, image_folder or imagenet)")
    check_named_folders(source, root, test_root)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = (("train", root), ("test", test_root))
    if source == "imagenet":
        written = {}
        for split, folder in folders:
            index = write_stream_index(out_dir, split, folder, channels=channels, skip_unreadable=skip_unreadable,
                                       workers=workers)
            _report_skipped(split, folder, json.loads(index.read_text())["skipped"])
            for r in resolutions:
                path = out_dir / f"{split}_{r}.json"
                path.write_text(json.dumps({"index": index.name, "resolution": r, "workers": workers}))
                written[(split, r)] = path
        return written
    if source == "fashion_mnist":
        folder = locate_fashion_mnist(root, download_dir=download_dir)
        splits = {s: load_fashion_mnist(folder, s) for s in ("train", "test")}
        classes = FASHION_MNIST_CLASSES
        size = FASHION_MNIST_SIZE
    else:
        size = max(resolutions)
        splits = {}
        for split, folder in folders:
            images, labels, classes, skipped = load_image_folder(folder, size, channels=channels, max_images=max_images,
                                                                 skip_unreadable=skip_unreadable, workers=workers)
            _report_skipped(split, folder, skipped)
            splits[split] = (images, labels)
    check_resolutions(resolutions, size)
    written = {}
    for split, (images, labels) in splits.items():
        for r in resolutions:
            path = dataset_path(out_dir, split, r)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, images=resize_uint8(images, r), labels=labels, classes=np.array(classes))
            os.replace(tmp, path)
            written[(split, r)] = path
    return written


def _report_skipped(split, folder, skipped):
    if skipped:
        print(f"{split}: left out {len(skipped)} unreadable image files under {folder} (data.skip_unreadable)")


def load_dataset(data_dir, split, resolution):
    """(images uint8 (N, C, R, R), labels int64, class names) as written by `build_dataset`."""
    path = dataset_path(data_dir, split, resolution)
    if not path.exists():
        raise DataNotFoundError(f"{path} does not exist: run the data stage first")
    if path.suffix == ".json":  # a streamed source: images are a StreamedImages
        spec = json.loads(path.read_text())
        index = json.loads((path.parent / spec["index"]).read_text())
        images = StreamedImages(index["root"], index["files"], spec["resolution"], channels=index["channels"],
                                workers=spec["workers"])
        return images, np.array(index["labels"], dtype=np.int64), tuple(index["classes"])
    with np.load(path) as f:
        return f["images"], f["labels"], tuple(str(c) for c in f["classes"])


def describe_dataset(data_dir, resolutions, splits=("train", "test")):
    """One row per (split, resolution): image count, shape, value range and per-class counts."""
    import pandas as pd
    rows = []
    for split in splits:
        for r in resolutions:
            images, labels, classes = load_dataset(data_dir, split, r)
            counts, n = np.bincount(labels, minlength=len(classes)), len(images)
            if isinstance(images, StreamedImages):  # value statistics of a sample, not of the whole stream
                images = images[np.linspace(0, len(images) - 1, min(len(images), 256)).astype(int)]
            rows.append({"split": split, "resolution": r, "images": n,
                         "shape": "x".join(map(str, images.shape[1:])), "min": int(images.min()),
                         "max": int(images.max()), "mean": round(float(images.mean()), 2),
                         "classes": len(classes), "per class": f"{counts.min()}-{counts.max()}"})
    return pd.DataFrame(rows)


def balanced_subset(labels, n, *, seed=0):
    """Indices of min(n, N) items drawn at random without replacement, spread over the classes as evenly as
    their counts allow, in an order whose every prefix is balanced too.

    Image-folder indexes are sorted by class, so their first n items cover only the first classes; every
    subset the study takes goes through here instead. Each class is shuffled, its items ranked 0, 1, ...
    and all items ordered by rank (ties in a random order).
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    order = rng.permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = order[labels[order] == c]  # this class in random order
        rank[members] = np.arange(len(members))
    tiebreak = np.empty(len(labels), dtype=np.int64)
    tiebreak[order] = np.arange(len(labels))
    return np.lexsort((tiebreak, rank))[:n]


def examples_per_class(labels, per_class, num_classes):
    """Indices of the first `per_class` examples of each class, ordered class by class."""
    labels = np.asarray(labels)
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)])
