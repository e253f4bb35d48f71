"""Evaluation: one record per (method, resolution) with sample quality and generation speed.

Methods (the rows of results/fid_table.csv):
    data_test            held-out real images: the floor of every metric
    teacher_ode          the teacher's Heun sampler at its own resolution
    teacher_ode_bicubic  its samples upsampled (the project's bicubic) to each higher resolution
    pagoda               the one-step decoder at every resolution (Stage 2, then each growth stage)
    stage2_bicubic       the Stage-2 decoder's samples upsampled to each higher resolution
    data_bicubic         held-out real images down to the base resolution and back up: what
                         upsampling alone recovers
Every metric compares the method's images with the real *training* images at that resolution: in the
features of that resolution's judge (`pagoda.judge`, trained on real images only), in pixels (multi-scale
SWD, `pagoda.swd`), and in EfficientNet-lite0 features, the space the decoder was trained against.
"""

import json
import pathlib
import time

import numpy as np

from . import judge, layout, loop, metrics, swd
from .data import balanced_subset, load_dataset, resize_uint8, to_uint8
from .judge import load_judge
from .sampling import class_labels, load_sampler, seeds_for

METHODS = ("data_test", "teacher_ode", "teacher_ode_bicubic", "pagoda", "stage2_bicubic", "data_bicubic")
EVAL_SEED_OFFSET = 1000  # evaluation noise never overlaps the seeds used in training
# The generator behind each *_bicubic row, whose base-resolution samples it upsamples.
BICUBIC_SOURCE = {"teacher_ode_bicubic": "teacher_ode", "stage2_bicubic": "pagoda"}


def applies(method, resolution, resolutions):
    """Whether `method` has a row at `resolution` (base = resolutions[0])."""
    base = resolutions[0]
    if method in ("data_test", "pagoda"):
        return resolution in resolutions
    if method == "teacher_ode":
        return resolution == base
    if method in ("teacher_ode_bicubic", "stage2_bicubic", "data_bicubic"):
        return resolution in resolutions and resolution != base
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")


def rows(resolutions):
    """All (method, resolution) pairs of the table, in table order."""
    return [(m, r) for m in METHODS for r in resolutions if applies(m, r, resolutions)]


# ----------------------------------------------------------------------------
# Reference statistics of the training images.

def reference_statistics(*, data_dir, resolution, out_path, judge_path, n_images=5000, swd_images=2000,
                         feature_size=64, inception_dir=None, seed=0, batch_size=250, device="cpu"):
    """Features of `n_images` random training images at `resolution`, kept for precision/recall and KID, with
    their mean/covariance: in the resolution's judge (the study's independent view) and in EfficientNet-lite0
    (the decoder's training space); Inception statistics if clean-fid's file exists; and `swd_images`
    random images of the same subset as pixels, the real side of the sliced Wasserstein distance."""
    images, labels, _ = load_dataset(data_dir, "train", resolution)
    # A class-balanced random subset, in an order whose prefixes are balanced too (`score` takes the first n).
    idx = balanced_subset(labels, n_images, seed=seed)
    t0 = time.time()
    subset = np.asarray(images[idx])
    judge_net, judge_meta = load_judge(judge_path, device)
    judge_feats = judge.image_features(judge_net, subset)
    feats = metrics.extract_features(subset, metrics.EffNetFeatures(feature_size).to(device),
                                     batch_size=batch_size, device=device)
    mu, sigma = metrics.statistics(feats)
    judge_mu, judge_sigma = metrics.statistics(judge_feats)
    swd_subset = np.random.default_rng(seed + 1).permutation(len(idx))[:swd_images]
    out = {"effnet_features": feats.astype(np.float32), "effnet_mu": mu, "effnet_sigma": sigma,
           "judge_features": judge_feats.astype(np.float32), "judge_mu": judge_mu, "judge_sigma": judge_sigma,
           "swd_images": subset[swd_subset], "judge_test_accuracy": judge_meta["test_accuracy"],
           "n_images": len(idx), "feature_size": feature_size, "resolution": resolution}
    inc = metrics.inception_features(subset, inception_dir=inception_dir, device=device)
    if inc is not None:
        out["inception_mu"], out["inception_sigma"] = metrics.statistics(inc)
    out["seconds"] = time.time() - t0
    pathlib.Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(str(out_path) + ".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(out_path)
    return {k: v for k, v in out.items() if np.ndim(v) == 0}


def load_reference(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------
# Images of each method.

def _timed_samples(sampler, labels, seeds, *, warmup=32):
    """Samples and images/s measured after a warm-up call (same job, same device)."""
    sampler(labels[:warmup], seeds[:warmup])
    t0 = time.time()
    images, nfe = sampler(labels, seeds)
    return images, nfe, len(seeds) / (time.time() - t0)


def method_images(method, resolution, *, base_resolution, n, seed, data_dir, teacher_path=None, decoder_path=None,
                  base_samples=None, num_points=40, batch_size=500, device="cpu"):
    """(uint8 images (n, C, R, R), labels, nfe, images_per_sec) for one row of the table.

    `base_samples`: for the *_bicubic rows of generators, the record of the method at the base
    resolution ({"images", "labels", "nfe", "images_per_sec"}) whose images are upsampled here.
    """
    seeds = seeds_for(n, EVAL_SEED_OFFSET + seed)
    if method in ("data_test", "data_bicubic"):
        src = resolution if method == "data_test" else base_resolution
        images, labels, _ = load_dataset(data_dir, "test", src)
        subset = balanced_subset(labels, n, seed=seed)  # the same images at every resolution
        images, labels = np.asarray(images[subset]), labels[subset]
        if method == "data_bicubic":
            images = resize_uint8(images, resolution)
        return images, labels, None, None
    if method in ("teacher_ode", "pagoda"):
        path = teacher_path if method == "teacher_ode" else decoder_path
        sampler, meta = load_sampler(path, device=device, num_points=num_points, batch_size=batch_size)
        labels = class_labels(n, meta["num_classes"])
        images, nfe, ips = _timed_samples(sampler, labels, seeds)
        return to_uint8(images).numpy(), (labels.numpy() if labels is not None else None), nfe, ips
    if method in ("teacher_ode_bicubic", "stage2_bicubic"):
        t0 = time.time()
        images = resize_uint8(base_samples["images"], resolution)
        per_image = len(images) / base_samples["images_per_sec"] + (time.time() - t0)
        return images, base_samples["labels"], base_samples["nfe"], len(images) / per_image
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")


def save_samples(path, images, labels, nfe, images_per_sec):
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(str(path) + ".tmp.npz")
    np.savez(tmp, images=images, labels=labels if labels is not None else np.zeros(0),
             nfe=np.nan if nfe is None else nfe, images_per_sec=np.nan if images_per_sec is None else images_per_sec)
    tmp.replace(path)


def load_samples(path):
    with np.load(path) as f:
        return {"images": f["images"], "labels": f["labels"] if len(f["labels"]) else None,
                "nfe": float(f["nfe"]), "images_per_sec": float(f["images_per_sec"])}


# ----------------------------------------------------------------------------
# One record.

def score(images, reference, *, judge_net, feature_size=64, k=3, swd_min_resolution=16,
          swd_descriptors_per_image=128, swd_projections=512, inception_dir=None, seed=0, batch_size=250,
          device="cpu"):
    """Every metric of one row: in the judge's features (fd_judge, kid_judge, precision/recall/density/
    coverage_judge, k-NN with k = `k`), in pixels (swd: mean over the Laplacian levels, swd_finest), in the
    training space (fd_effnet, precision, recall, density, coverage) and fid_inception or None."""
    if int(reference["feature_size"]) != feature_size:
        raise ValueError(f"reference features were computed at {int(reference['feature_size'])} px, not {feature_size}")
    images = np.asarray(images)
    n = len(images)
    judge_feats = judge.image_features(judge_net, images)
    out = {"fd_judge": metrics.frechet_distance(metrics.statistics(judge_feats),
                                                (reference["judge_mu"], reference["judge_sigma"])),
           "kid_judge": metrics.kernel_distance(judge_feats, reference["judge_features"], seed=seed)}
    prdc = metrics.precision_recall(reference["judge_features"][:n].astype(np.float64), judge_feats, k=k)
    out.update({f"{key}_judge": v for key, v in prdc.items()})
    levels = swd.multiscale_swd(images[:len(reference["swd_images"])], reference["swd_images"], min_resolution=swd_min_resolution,
                                descriptors_per_image=swd_descriptors_per_image, n_projections=swd_projections,
                                seed=seed)
    out["swd"], out["swd_finest"] = levels.pop("swd"), levels.pop("swd_finest")
    out["swd_levels"] = {str(r): v for r, v in levels.items()}
    feats = metrics.extract_features(images, metrics.EffNetFeatures(feature_size).to(device), batch_size=batch_size,
                                     device=device)
    out["fd_effnet"] = metrics.frechet_distance(metrics.statistics(feats),
                                                (reference["effnet_mu"], reference["effnet_sigma"]))
    out.update(metrics.precision_recall(reference["effnet_features"][:n].astype(np.float64), feats, k=k))
    out["fid_inception"] = None
    if "inception_mu" in reference:
        inc = metrics.inception_features(images, inception_dir=inception_dir, device=device)
        if inc is not None:
            out["fid_inception"] = metrics.frechet_distance(metrics.statistics(inc),
                                                            (reference["inception_mu"], reference["inception_sigma"]))
    return out


def evaluate(method, resolution, *, resolutions, reference_path, judge_path, out_path, samples_path, n_samples=2000,
             seed=0, data_dir, teacher_path=None, decoder_path=None, base_samples_path=None, num_points=40,
             feature_size=64, k=3, swd_min_resolution=16, swd_descriptors_per_image=128, swd_projections=512,
             inception_dir=None, batch_size=500, device="auto"):
    """Make (or upsample) the method's images, score them, write the JSON record and the samples."""
    if not applies(method, resolution, resolutions):
        raise ValueError(f"{method} has no row at resolution {resolution} (resolutions {resolutions})")
    device = loop.resolve_device(device)
    base_samples = load_samples(base_samples_path) if base_samples_path else None
    images, labels, nfe, ips = method_images(method, resolution, base_resolution=resolutions[0], n=n_samples,
                                             seed=seed, data_dir=data_dir, teacher_path=teacher_path,
                                             decoder_path=decoder_path, base_samples=base_samples,
                                             num_points=num_points, batch_size=batch_size, device=device)
    save_samples(samples_path, images, labels, nfe, ips)
    record = {"method": method, "resolution": resolution, "nfe": nfe, "n_samples": int(len(images)),
              **score(images, load_reference(reference_path), judge_net=load_judge(judge_path, device)[0],
                      feature_size=feature_size, k=k, swd_min_resolution=swd_min_resolution,
                      swd_descriptors_per_image=swd_descriptors_per_image, swd_projections=swd_projections,
                      inception_dir=inception_dir, seed=seed, device=device),
              "images_per_sec": ips, "device": loop.device_name(device) if ips is not None else None,
              "feature_size": feature_size}
    loop.atomic_write_json(record, out_path)
    return record


def evaluate_row(method, resolution, *, eval_dir, judges_dir, decoder_dir, teacher_path, resolutions, **kwargs):
    """`evaluate` with every path taken from the results layout (`pagoda.layout`), as the workflow names them."""
    source = BICUBIC_SOURCE.get(method)
    return evaluate(method, resolution, resolutions=resolutions,
                    reference_path=layout.reference_path(eval_dir, resolution),
                    judge_path=layout.judge_path(judges_dir, resolution),
                    out_path=layout.record_path(eval_dir, method, resolution),
                    samples_path=layout.samples_path(eval_dir, method, resolution),
                    teacher_path=teacher_path if method == "teacher_ode" else None,
                    decoder_path=layout.decoder_path(decoder_dir, resolution) if method == "pagoda" else None,
                    base_samples_path=layout.samples_path(eval_dir, source, resolutions[0]) if source else None,
                    **kwargs)


def read_records(paths):
    return [json.loads(pathlib.Path(p).read_text()) for p in paths]
