"""Inputs for the rehearsal of the paper-scale path (README, "Rehearsal"), made on the spot.

The rehearsal runs the whole workflow with config/imagenet.yaml plus config/rehearsal.yaml at smoke size
on a CPU. What the paper-scale run downloads is replaced by files written here: an RGB image folder in
ILSVRC-2012's layout (class folders of JPEGs of mixed sizes and aspect ratios, with one grey-scale JPEG
and one PNG with alpha among them, as ImageNet has both) and an ADM-format teacher checkpoint with random
weights and the real key layout (what consistency_models' edm_imagenet64_ema.pt holds):

    python -m pagoda.rehearsal config/imagenet.yaml config/rehearsal.yaml   # writes them where the config says
"""

import argparse
import pathlib
import re

import numpy as np
import torch
from PIL import Image

from .networks import UNet, UNetConfig


def wnid(k):
    """A WordNet-id-like class folder name (ILSVRC's are n + 8 digits)."""
    return f"n{1440764 + 1111 * k:08d}"


def _picture(rng, width, height, k, classes):
    """A class-coloured background with a random ellipse: something a judge can tell apart by class."""
    hue = np.array([np.cos(2 * np.pi * (k / classes + s / 3)) for s in range(3)]) * 100 + 128
    y, x = np.mgrid[:height, :width]
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    rx, ry = rng.uniform(0.15, 0.35) * width, rng.uniform(0.15, 0.35) * height
    inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
    img = np.broadcast_to(hue, (height, width, 3)).copy()
    img[inside] = 255 - hue
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def write_image_folder(root, *, classes=4, per_class=8, seed=0, min_side=40, max_side=140):
    """<root>/<wnid>/<wnid>_<i>.JPEG RGB images of random size; class 0's first image is a grey-scale JPEG
    and class 1's first a PNG with an alpha channel. Returns the list of files written."""
    rng = np.random.default_rng(seed)
    files = []
    for k in range(classes):
        folder = pathlib.Path(root) / wnid(k)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = rng.integers(min_side, max_side + 1, size=2)
            img = Image.fromarray(_picture(rng, int(w), int(h), k, classes))
            path = folder / f"{wnid(k)}_{i}.JPEG"
            if (k, i) == (0, 0):
                img = img.convert("L")
            elif (k, i) == (1, 0):
                img = img.convert("RGBA")
                img.putalpha(Image.fromarray(rng.integers(0, 256, (int(h), int(w)), dtype=np.uint8)))
                path = path.with_suffix(".png")
                img.save(path)
                files.append(path)
                continue
            img.save(path, format="JPEG", quality=90)
            files.append(path)
    return files


def adm_state_dict(net):
    """Our UNet's weights in ADM's layout: the same names, attention 1x1 kernels as Conv2d (out, in, 1, 1)."""
    out = {}
    for key, value in net.state_dict().items():
        if re.search(r"\.(qkv|proj_out)\.weight$", key) and value.ndim == 3:
            value = value[..., None]
        out[key] = value.clone()
    return out


def write_adm_checkpoint(path, network, *, resolution, num_classes, channels=3, seed=0):
    """torch.save of an ADM-format state dict with random (perturbed, so no layer is zero) weights."""
    torch.manual_seed(seed)
    cfg = UNetConfig(**{**network, "img_resolution": resolution, "in_channels": channels, "out_channels": channels,
                        "num_classes": num_classes})
    net = UNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(adm_state_dict(net), path)
    return path


def write_inputs(*, train_root, test_root, checkpoint, network, resolution, classes=4, train_per_class=10,
                 test_per_class=4, seed=0):
    """The train and test image folders and the ADM checkpoint, where the rehearsal config names them."""
    write_image_folder(train_root, classes=classes, per_class=train_per_class, seed=seed)
    write_image_folder(test_root, classes=classes, per_class=test_per_class, seed=seed + 1)
    write_adm_checkpoint(checkpoint, network, resolution=resolution, num_classes=classes, seed=seed)


def merged_config(*paths):
    """Config files merged as Snakemake merges several --configfile: later files update earlier ones, key by key."""
    import yaml

    def update(base, new):
        for key, value in new.items():
            base[key] = update(dict(base.get(key) or {}), value) if isinstance(value, dict) else value
        return base
    config = {}
    for path in paths:
        config = update(config, yaml.safe_load(pathlib.Path(path).read_text()))
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configfiles", nargs="+", help="config/imagenet.yaml config/rehearsal.yaml")
    args = parser.parse_args(argv)
    config = merged_config(*args.configfiles)
    write_inputs(train_root=config["data"]["root"], test_root=config["data"]["test_root"],
                 checkpoint=config["teacher"]["import_path"], network=config["teacher"]["network"],
                 resolution=config["resolutions"][0])
    print(f"wrote {config['data']['root']}, {config['data']['test_root']} and {config['teacher']['import_path']}")


if __name__ == "__main__":
    main()
