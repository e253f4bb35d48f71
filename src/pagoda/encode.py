"""Stage 2, encoder: PF-ODE inversion of training images (and their flips) to noise latents.

The frozen teacher maps each clean image at the base resolution, taken as the state at sigma_min, to
z at sigma_max with the Heun solver (METHOD.md, "Stage 2"). Latents are written in shards; an
interrupted run resumes at the first missing shard, and separate processes (SLURM jobs) can each
write a subset of the shards (`python -m pagoda.encode --shard K PARAMS.json`). Optionally the stage also draws noise -> teacher
sample pairs for the L_dstl ablation (paper Fig. 5).
"""

import argparse
import json
import pathlib
import struct
import time
import zipfile

import numpy as np
import torch
from tqdm import tqdm

from . import edm, loop
from .checkpoints import load_network
from .data import dataset_path, load_dataset, to_model
from .plan import num_shards
from .sampling import image_noise


def encoding_plan(num_train, n_images, *, flips=True, seed=0):
    """(index, flip) pairs to encode: `n_images` random training images, each followed by its flip."""
    if n_images > num_train:
        raise ValueError(f"asked to encode {n_images} images but the training set has {num_train}")
    idx = np.random.default_rng(seed).permutation(num_train)[:n_images]
    flip = np.zeros(n_images, dtype=bool)
    if flips:
        idx, flip = np.repeat(idx, 2), np.tile([False, True], n_images)
    return idx, flip


def shard_path(out_dir, k, prefix="shard"):
    return pathlib.Path(out_dir) / f"{prefix}-{k:05d}.npz"


def _write_npz(path, **arrays):
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def encoding_omegas(n_latents, omega_range, *, seed=0):
    """One guidance scale per latent, uniform on `omega_range` = (low, high) (PaGoDA Sec. 4; T2I: (2, 10))."""
    low, high = omega_range
    if not 0 <= low <= high:
        raise ValueError(f"omega_range must be (low, high) with 0 <= low <= high, got {omega_range}")
    return np.random.default_rng([seed, 1]).uniform(low, high, n_latents).astype(np.float32)


def encode_dataset(*, teacher_path, data_dir, resolution, out_dir, n_images, flips=True, num_points=40,
                   clamp=True, omega_range=None, shard_size=1024, batch_size=512, seed=0, device="auto",
                   progress=True, shards=None, max_shards_this_call=None):
    """Write {out_dir}/shard-*.npz: z float32 (n, C, R, R), labels, index (into the training set), flip.

    With `omega_range` the latents come from the classifier-free-guided PF-ODE at a scale drawn per latent
    (`encoding_omegas`), stored as `omega` (PaGoDA Sec. 4); the teacher needs a null class (label dropout).
    Shards that already exist are kept, so a killed run continues where it stopped; `shards` limits
    this call to some shard numbers (one SLURM job per shard). Each shard records the seconds it took.
    Returns a summary: latent count, NFE per image, images/s of this call, latent statistics (the
    latter two only once every shard exists).
    """
    device = loop.resolve_device(device)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net, meta = load_network(teacher_path, device=device, expect_kind="teacher")
    if omega_range is not None and not meta.get("label_dropout"):
        raise ValueError(f"{teacher_path} was trained without label dropout: it has no null class to guide with")
    images, labels, _ = load_dataset(data_dir, "train", resolution)
    idx, flip = encoding_plan(len(images), n_images, flips=flips, seed=seed)
    omegas = None if omega_range is None else encoding_omegas(len(idx), omega_range, seed=seed)
    fingerprint = {"omega_range": list(omega_range)} if omega_range is not None else {}  # unguided runs keep theirs
    loop.prepare_run_dir(out_dir, {"stage": "encode", "n_images": n_images, "flips": flips, "num_points": num_points,
                                   "clamp": clamp, "shard_size": shard_size, "seed": seed, **fingerprint,
                                   "teacher": loop.file_fingerprint(teacher_path),
                                   "data": loop.file_fingerprint(dataset_path(data_dir, "train", resolution))},
                         stale=("shard-*.npz", "pairs-*.npz", "timing.json"))
    n_shards = num_shards(n_images, shard_size, flips=flips)
    todo = [k for k in (range(n_shards) if shards is None else shards) if not shard_path(out_dir, k).exists()]
    if any(not 0 <= k < n_shards for k in todo):
        raise ValueError(f"shard numbers must lie in [0, {n_shards}), got {sorted(todo)}")
    if max_shards_this_call is not None:
        todo = todo[:max_shards_this_call]
    encoded, seconds, nfe = 0, 0.0, 2 * (num_points - 1) * (1 if omegas is None else 2)
    for k in tqdm(todo, desc="encode shards", disable=not progress):
        sl = slice(k * shard_size, min((k + 1) * shard_size, len(idx)))
        x = to_model(images[idx[sl]])
        x = torch.where(torch.as_tensor(flip[sl]).view(-1, 1, 1, 1), x.flip(-1), x)
        y = torch.as_tensor(labels[idx[sl]])
        omega = None if omegas is None else torch.as_tensor(omegas[sl])
        t0 = time.time()
        zs = []
        for b in range(0, len(x), batch_size):
            z, nfe = edm.ode_to_noise(net, x[b:b + batch_size].to(device), y[b:b + batch_size].to(device),
                                      num_points=num_points, clamp=clamp,
                                      omega=None if omega is None else omega[b:b + batch_size].to(device))
            zs.append(z.cpu())
        shard_seconds = time.time() - t0
        seconds += shard_seconds
        encoded += len(x)
        guided = {} if omegas is None else {"omega": omegas[sl]}
        _write_npz(shard_path(out_dir, k), z=torch.cat(zs).numpy().astype(np.float32), labels=y.numpy(),
                   index=idx[sl], flip=flip[sl], seconds=np.float64(shard_seconds), **guided)
    complete = all(shard_path(out_dir, k).exists() for k in range(n_shards))
    summary = {"nfe_per_image": nfe, "num_points": num_points, "clamp": clamp, "resolution": resolution,
               "device": loop.device_name(device), "shards": n_shards, "complete": complete}
    if complete:
        summary.update(latent_summary(out_dir))
        # The stage's compute time is the sum over shards, whichever processes wrote them.
        total = sum(float(np.load(shard_path(out_dir, k))["seconds"]) for k in range(n_shards))
        loop.atomic_write_json({"seconds": total, "attempts": 1, "device": loop.device_name(device)},
                               out_dir / "timing.json")
    if encoded:
        summary.update(images_per_sec=encoded / seconds, seconds_this_call=seconds, encoded_this_call=encoded)
    return summary


def list_shards(out_dir, prefix="shard"):
    return sorted(pathlib.Path(out_dir).glob(f"{prefix}-*.npz"))


def memmap_npz(path, key):
    """Array `key` of an uncompressed .npz (np.savez) as a read-only np.memmap: nothing is read until indexed.

    np.load ignores mmap_mode for .npz files; a stored zip member is one contiguous .npy file, so the array
    starts after the member's local header and its .npy header.
    """
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: {key} is compressed and cannot be memory-mapped (write shards with np.savez)")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the local file header: name and extra-field lengths at bytes 26-29
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{path}: {key} has .npy format version {version}, not 1.0 or 2.0")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class ShardedArray:
    """Several arrays (memory-mapped shards) as one (N, ...) array: indexing reads only the rows asked for.

    Indices may be ints, slices, numpy arrays or CPU tensors; the result is a numpy array, one flat batch
    in index order for an index of any shape (as `data.StreamedImages`).
    """

    def __init__(self, parts):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:])
        self.dtype = self.parts[0].dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = np.arange(len(self))[idx]
        idx = np.asarray(idx)
        scalar, idx = idx.ndim == 0, idx.reshape(-1).astype(np.int64)
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for s in np.unique(shard):
            rows = shard == s
            out[rows] = self.parts[s][idx[rows] - self.offsets[s]]
        return out[0] if scalar else out

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)


def load_latents(out_dir, prefix="shard"):
    """All shards as one set: {'z', 'labels', 'index', 'flip'} (or the pair arrays for prefix='pairs').

    The large arrays (z; x of the pairs) stay on disk as a `ShardedArray` of memory maps, so memory per
    training process does not grow with the dataset (ImageNet: 2.5M latents, 126 GB) and DDP ranks share
    the page cache; the per-latent scalars (labels, index, flip) are concatenated in memory.
    """
    shards = list_shards(out_dir, prefix)
    if not shards:
        raise FileNotFoundError(f"no {prefix}-*.npz in {out_dir}: run the encode stage first")
    with np.load(shards[0]) as f:
        keys = [k for k in f.files if f[k].ndim]
        images = [k for k in keys if f[k].ndim == 4]
    out = {}
    for k in keys:
        if k in images:
            out[k] = ShardedArray([memmap_npz(p, k) for p in shards])
        else:
            out[k] = np.concatenate([np.load(p)[k] for p in shards])
    return out


def latent_summary(out_dir):
    """Statistics of the stored latents (std near sigma_max for a good teacher), one shard in memory at a time."""
    lat = load_latents(out_dir)
    z = lat["z"]
    n, s1, s2 = 0, 0.0, 0.0
    for part in z.parts:
        part = np.asarray(part, dtype=np.float64)
        n, s1, s2 = n + part.size, s1 + part.sum(), s2 + np.square(part).sum()
    mean = s1 / n
    std = float(np.sqrt(max(s2 / n - mean * mean, 0.0)))
    return {"latents": int(len(z)), "images": int(len(np.unique(lat["index"]))), "z_std": std,
            "z_mean": float(mean), "z_std_over_sigma_max": std / edm.SIGMA_MAX}


@torch.no_grad()
def teacher_pairs(*, teacher_path, out_dir, n_pairs, num_points=40, clamp=True, batch_size=512, seed=0,
                  device="auto", progress=True):
    """Noise -> teacher-sample pairs (z = sigma_max n, x = ODE(z)) for the L_dstl ablation, in one file."""
    device = loop.resolve_device(device)
    net, meta = load_network(teacher_path, device=device, expect_kind="teacher")
    cfg = net.config
    path = shard_path(out_dir, 0, prefix="pairs")
    if path.exists() and len(np.load(path)["z"]) == n_pairs:
        return path
    labels = torch.arange(n_pairs) % max(1, cfg.num_classes)
    seeds = np.arange(n_pairs) + 10 ** 6 * (seed + 1) + 7  # disjoint from evaluation seeds
    z = edm.SIGMA_MAX * image_noise(seeds, (cfg.in_channels, cfg.img_resolution, cfg.img_resolution))
    xs = []
    for b in tqdm(range(0, n_pairs, batch_size), desc="teacher pairs", disable=not progress):
        x, _ = edm.ode_to_data(net, z[b:b + batch_size].to(device), labels[b:b + batch_size].to(device),
                               num_points=num_points, clamp=clamp)
        xs.append(x.cpu())
    pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
    _write_npz(path, z=z.numpy(), x=torch.cat(xs).numpy(), labels=labels.numpy())
    return path


def psnr(x, y):
    """Peak signal-to-noise ratio in dB per image, for images in [-1, 1] (peak-to-peak 2)."""
    mse = (x - y).flatten(1).square().mean(1).clamp_min(1e-20)
    return 10 * torch.log10(4 / mse)


@torch.no_grad()
def round_trip(*, teacher_path, data_dir, resolution, out_dir, n=200, num_points=40, clamp=True, batch_size=500,
               device="auto"):
    """x -> z (stored latent) -> teacher ODE -> x' for the first n stored latents: PSNR and the images."""
    device = loop.resolve_device(device)
    net, _ = load_network(teacher_path, device=device, expect_kind="teacher")
    lat = {k: v[:n] for k, v in load_latents(out_dir).items()}
    images, _, _ = load_dataset(data_dir, "train", resolution)
    x = to_model(images[lat["index"]])
    x = torch.where(torch.as_tensor(lat["flip"]).view(-1, 1, 1, 1), x.flip(-1), x)
    z, y = torch.as_tensor(lat["z"]), torch.as_tensor(lat["labels"])
    back = torch.cat([edm.ode_to_data(net, z[b:b + batch_size].to(device), y[b:b + batch_size].to(device),
                                      num_points=num_points, clamp=clamp)[0].cpu()
                      for b in range(0, len(z), batch_size)])
    p = psnr(back, x)
    return {"x": x, "x_back": back, "psnr": p, "psnr_mean": float(p.mean()), "psnr_min": float(p.min())}


def save_summary(path, summary, round_trip=None):
    """The stage's record (the workflow's output file): encoding summary plus round-trip PSNR."""
    record = dict(summary)
    if round_trip is not None:
        record.update(round_trip_psnr_mean=round_trip["psnr_mean"], round_trip_psnr_min=round_trip["psnr_min"],
                      round_trip_images=len(round_trip["psnr"]))
    loop.atomic_write_json(record, path)
    return record


def main(argv=None):
    """One encoding job of the workflow: `python -m pagoda.encode --shard K PARAMS.json` (or JSON text)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--shard", type=int, action="append", required=True, help="shard number (repeatable)")
    parser.add_argument("params", help="encode_dataset keyword arguments: a JSON file or JSON text")
    args = parser.parse_args(argv)
    text = pathlib.Path(args.params).read_text() if args.params.endswith(".json") else args.params
    summary = encode_dataset(**json.loads(text), shards=args.shard, progress=False)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
