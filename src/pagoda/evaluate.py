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

import pathlib
import time

import numpy as np

from . import judge, layout, loop, metrics, swd
from .data import balanced_subset, load_dataset, resize_uint8, to_model, to_uint8
from .judge import load_judge
from .plan import BICUBIC_SOURCE, METHODS, applies
from .sampling import class_labels, load_sampler, seeds_for

EVAL_SEED_OFFSET = 1000  # evaluation noise never overlaps the seeds used in training


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

class ImageStream:
    """One row's uint8 images (n, C, R, R), made `chunk` at a time when iterated: a 512-px row of 50k images
    (39 GB) never sits in memory. `np.asarray` gives them all at once (small sets). The time spent making them
    (generating, upsampling) is measured while iterating, plus `seconds_before` spent elsewhere (the base
    samples a bicubic row upsamples); `timed=False` for real images, which have no speed."""

    def __init__(self, make, n, *, chunk, timed=True, seconds_before=0.0):
        self.make, self.n, self.chunk, self.timed = make, n, max(1, int(chunk)), timed
        self.seconds = seconds_before

    def __len__(self):
        return self.n

    def __iter__(self):
        for b in range(0, self.n, self.chunk):
            t0 = time.time()
            images = self.make(b, min(b + self.chunk, self.n))
            self.seconds += time.time() - t0
            yield images

    def __array__(self, dtype=None, copy=None):
        images = np.concatenate(list(self))
        return images if dtype is None else images.astype(dtype)

    def images_per_sec(self):
        """Images per second of making them (None for real images); valid once the stream has been iterated."""
        return self.n / self.seconds if self.timed else None


def method_images(method, resolution, *, base_resolution, n, seed, data_dir, teacher_path=None, decoder_path=None,
                  base_samples=None, num_points=40, omega=None, batch_size=500, warmup=32, device="cpu"):
    """(uint8 images as an `ImageStream` of chunks of `batch_size`, labels, nfe) for one row of the table.

    `base_samples`: for the *_bicubic rows of generators, the record of the method at the base
    resolution ({"images", "labels", "nfe", "images_per_sec"}) whose images are upsampled here.
    `omega`: the guidance scale of a guided generator (the teacher's CFG, a guided decoder's input).
    Generators are warmed up on `warmup` images first, so that the speed excludes one-time costs.
    """
    seeds = seeds_for(n, EVAL_SEED_OFFSET + seed)
    if method in ("data_test", "data_bicubic"):
        src = resolution if method == "data_test" else base_resolution
        images, labels, _ = load_dataset(data_dir, "test", src)
        subset = balanced_subset(labels, n, seed=seed)  # the same images at every resolution
        up = (lambda x: x) if method == "data_test" else (lambda x: resize_uint8(x, resolution))  # noqa: E731
        make = lambda b, e: up(np.asarray(images[subset[b:e]]))  # noqa: E731
        return ImageStream(make, len(subset), chunk=batch_size, timed=False), labels[subset], None
    if method in ("teacher_ode", "pagoda"):
        path = teacher_path if method == "teacher_ode" else decoder_path
        sampler, meta = load_sampler(path, device=device, num_points=num_points, omega=omega, batch_size=batch_size)
        labels = class_labels(n, meta["num_classes"])
        chunk_labels = (lambda b, e: None) if labels is None else (lambda b, e: labels[b:e])  # noqa: E731
        _, nfe = sampler(chunk_labels(0, warmup), seeds[:warmup])
        make = lambda b, e: to_uint8(sampler(chunk_labels(b, e), seeds[b:e])[0]).numpy()  # noqa: E731
        return ImageStream(make, n, chunk=batch_size), (labels.numpy() if labels is not None else None), nfe
    if method in ("teacher_ode_bicubic", "stage2_bicubic"):
        base = base_samples["images"]
        make = lambda b, e: resize_uint8(base[b:e], resolution)  # noqa: E731
        return (ImageStream(make, len(base), chunk=batch_size, seconds_before=len(base) / base_samples["images_per_sec"]),
                base_samples["labels"], base_samples["nfe"])
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
    training space (fd_effnet, precision, recall, density, coverage) and fid_inception or None.

    `images`: one uint8 array or an iterable of such chunks (an `ImageStream`): only features, and as many
    images as the reference keeps for the SWD, are held across chunks."""
    if int(reference["feature_size"]) != feature_size:
        raise ValueError(f"reference features were computed at {int(reference['feature_size'])} px, not {feature_size}")
    chunks = [np.asarray(images)] if isinstance(images, np.ndarray) else images
    effnet = metrics.EffNetFeatures(feature_size).to(device)
    judge_feats, feats, inc_feats, swd_images = [], [], [], []
    for chunk in _keeping(chunks, len(reference["swd_images"]), swd_images):
        judge_feats.append(judge.image_features(judge_net, chunk))
        feats.append(metrics.extract_features(chunk, effnet, batch_size=batch_size, device=device))
        if "inception_mu" in reference:
            inc_feats.append(metrics.inception_features(chunk, inception_dir=inception_dir, device=device))
    judge_feats, feats = np.concatenate(judge_feats), np.concatenate(feats)
    n = len(feats)
    fd_and_knn = judge_scores(judge_feats, reference, k=k)
    out = {"fd_judge": fd_and_knn.pop("fd_judge"),
           "kid_judge": metrics.kernel_distance(judge_feats, reference["judge_features"], seed=seed), **fd_and_knn}
    levels = swd.multiscale_swd(np.concatenate(swd_images), reference["swd_images"], min_resolution=swd_min_resolution,
                                descriptors_per_image=swd_descriptors_per_image, n_projections=swd_projections,
                                seed=seed)
    out["swd"], out["swd_finest"] = levels.pop("swd"), levels.pop("swd_finest")
    out["swd_levels"] = {str(r): v for r, v in levels.items()}
    out["fd_effnet"] = metrics.frechet_distance(metrics.statistics(feats),
                                                (reference["effnet_mu"], reference["effnet_sigma"]))
    out.update(metrics.precision_recall(reference["effnet_features"][:n].astype(np.float64), feats, k=k))
    out["fid_inception"] = None
    if inc_feats and inc_feats[0] is not None:  # None: no Inception weights at hand
        out["fid_inception"] = metrics.frechet_distance(metrics.statistics(np.concatenate(inc_feats)),
                                                        (reference["inception_mu"], reference["inception_sigma"]))
    return out


def judge_scores(judge_feats, reference, *, k):
    """fd_judge and precision/recall/density/coverage_judge of images with judge features `judge_feats`
    against the reference's (its first len(judge_feats) for the k-NN metrics)."""
    fd = metrics.frechet_distance(metrics.statistics(judge_feats), (reference["judge_mu"], reference["judge_sigma"]))
    prdc = metrics.precision_recall(reference["judge_features"][:len(judge_feats)].astype(np.float64), judge_feats,
                                    k=k)
    return {"fd_judge": fd, **{f"{key}_judge": v for key, v in prdc.items()}}


def learning_curve(snapshot_paths, *, reference_path, judge_path, n_samples=2000, k=3, seed=0, batch_size=500,
                   device="cpu"):
    """`judge_scores` of each decoder snapshot (run_dir/snapshots/step-*.pt) on the evaluation's noise: one
    record per snapshot with its training step, the numbers the table's pagoda row gives (KID left out: it
    takes longer than the other judge metrics together)."""
    reference, judge_net = load_reference(reference_path), load_judge(judge_path, device)[0]
    records = []
    for path in snapshot_paths:
        images, _, _ = method_images("pagoda", None, base_resolution=None, n=n_samples, seed=seed, data_dir=None,
                                     decoder_path=path, batch_size=batch_size, device=device)
        feats = np.concatenate([judge.image_features(judge_net, chunk) for chunk in images])
        records.append({"step": int(pathlib.Path(path).stem.split("-")[1]), "n_samples": n_samples,
                        **judge_scores(feats, reference, k=k)})
    return records


def _keeping(chunks, n, kept):
    """Pass the chunks on, appending the first `n` images to `kept` on the way."""
    for chunk in chunks:
        have = sum(map(len, kept))
        if have < n:
            kept.append(chunk[:n - have])
        yield chunk


def evaluate(method, resolution, *, resolutions, reference_path, judge_path, out_path, samples_path, n_samples=2000,
             seed=0, data_dir, teacher_path=None, decoder_path=None, base_samples_path=None, num_points=40,
             feature_size=64, k=3, swd_min_resolution=16, swd_descriptors_per_image=128, swd_projections=512,
             inception_dir=None, omega=None, keep_samples=2000, batch_size=500, device="auto"):
    """Make (or upsample) the method's images chunk by chunk, score them, write the JSON record and the samples.

    The samples file keeps every image at the base resolution (the bicubic rows upsample them) and the first
    `keep_samples` above it (sample grids, the placement check): memory stays at one chunk of images. With
    `omega` (guided generators) the record also has omega and the judge's accuracy on the intended classes."""
    if not applies(method, resolution, resolutions):
        raise ValueError(f"{method} has no row at resolution {resolution} (resolutions {resolutions})")
    device = loop.resolve_device(device)
    base_samples = load_samples(base_samples_path) if base_samples_path else None
    images, labels, nfe = method_images(method, resolution, base_resolution=resolutions[0], n=n_samples, seed=seed,
                                        data_dir=data_dir, teacher_path=teacher_path, decoder_path=decoder_path,
                                        base_samples=base_samples, num_points=num_points, omega=omega,
                                        batch_size=batch_size, device=device)
    keep = len(images) if resolution == resolutions[0] else min(len(images), keep_samples)
    kept = []
    judge_net = load_judge(judge_path, device)[0]
    scores = score(_keeping(images, keep, kept), load_reference(reference_path),
                   judge_net=judge_net, feature_size=feature_size, k=k,
                   swd_min_resolution=swd_min_resolution, swd_descriptors_per_image=swd_descriptors_per_image,
                   swd_projections=swd_projections, inception_dir=inception_dir, seed=seed, device=device)
    ips = images.images_per_sec()
    save_samples(samples_path, np.concatenate(kept), labels[:keep] if labels is not None else None, nfe, ips)
    record = {"method": method, "resolution": resolution, "nfe": nfe, "n_samples": int(len(images)), **scores,
              "images_per_sec": ips, "device": loop.device_name(device) if ips is not None else None,
              "feature_size": feature_size}
    if omega is not None:  # how strongly guidance binds: the judge recognises the class asked for
        predicted = judge.predict(judge_net, to_model(np.concatenate(kept)))
        record.update(omega=omega, class_accuracy_judge=float((predicted.numpy() == labels[:keep]).mean()))
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
