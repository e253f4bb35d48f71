"""Evaluation: the rows of the table, the images of each method, the scores against direct computations,
and the records and samples as written to disk (tiny judge, tiny teacher, tiny data)."""

import dataclasses
import inspect
import json
import types

import numpy as np
import pytest
import threadpoolctl
import torch

from conftest import TINY_NET

from pagoda import decoder, evaluate, judge, loop, metrics, sampling, swd
from pagoda.checkpoints import load_network, save_network
from pagoda.data import balanced_subset, load_dataset, resize_uint8, to_model, to_uint8
from pagoda.networks import UNet

SWD_KW = dict(swd_min_resolution=8, swd_descriptors_per_image=4, swd_projections=16)


class StandInEffNet(torch.nn.Module):
    """EfficientNet-lite0's place in the tests: mean pixels over an (input_size / 16)^2 grid, so that the
    features depend on the images and on `input_size` but stay small (exact Frechet distances in ms)."""

    def __init__(self, input_size=64):
        super().__init__()
        self.grid = input_size // 16

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, self.grid).flatten(1)


@pytest.fixture(scope="module", autouse=True)
def small_and_single_threaded():
    """The stand-in feature network, and one thread: tiny tensors on a shared CPU run far faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp, threadpoolctl.threadpool_limits(1):
        mp.setattr(metrics, "EffNetFeatures", StandInEffNet)
        yield
    torch.set_num_threads(threads)


def spy_on_savez(monkeypatch):
    """Where np.savez writes (the temporary file, which must sit beside the output for an atomic rename)."""
    written, real = [], np.savez

    def savez(path, **arrays):
        written.append(path)
        return real(path, **arrays)
    monkeypatch.setattr(np, "savez", savez)
    return written


def fake_clock(*times):
    """A stand-in for the `time` module whose time() returns `times` in turn (exact images/s)."""
    return types.SimpleNamespace(time=iter(times).__next__)


def fake_inception(images, *, inception_dir=None, device="cpu"):
    """Stand-in Inception features: per-image mean and std of the pixels and the first pixel."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    return np.stack([x.mean(1), x.std(1), x[:, 0]], 1)


@pytest.fixture(scope="module")
def judges(tiny_data, tmp_path_factory):
    """Judges of 8 and 16 px laid out as the workflow names them (judges_dir/R/judge.pt)."""
    out = tmp_path_factory.mktemp("judges")
    for r in (8, 16):
        judge.train_judge(data_dir=tiny_data, resolution=r, run_dir=out / str(r), out_path=out / str(r) / "judge.pt",
                          steps=3, batch_size=8, width=4, feature_dim=8, progress=False, device="cpu")
    return out


@pytest.fixture(scope="module")
def eval_dir(tiny_data, judges, tmp_path_factory):
    """Reference statistics at 8 and 16 px (feature network at 32 px; and at the default 64 px with few SWD
    images, which keeps the default 128 x 512 SWD fast) in an evaluation folder."""
    out = tmp_path_factory.mktemp("eval")
    for r in (8, 16):
        for size, swd_images, name in ((32, 20, f"reference_{r}.npz"), (64, 4, f"reference_{r}_64.npz")):
            evaluate.reference_statistics(data_dir=tiny_data, resolution=r, out_path=out / name,
                                          judge_path=judges / str(r) / "judge.pt", n_images=30,
                                          swd_images=swd_images, feature_size=size)
    return out


@pytest.fixture(scope="module")
def decoder_dir(tiny_teacher, tmp_path_factory):
    """A Stage-2 decoder (initialised from the tiny teacher, untrained) at decoder_dir/8/decoder.pt."""
    out = tmp_path_factory.mktemp("decoders")
    torch.manual_seed(0)
    save_network(out / "8" / "decoder.pt", decoder.init_decoder(tiny_teacher, resolution=8), kind="decoder")
    return out


# ----------------------------------------------------------------------------
# Samples on disk.

def test_samples_round_trip_with_and_without_labels_and_speed(tmp_path, monkeypatch):
    images = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    path = tmp_path / "deep" / "samples" / "m_4.npz"
    written = spy_on_savez(monkeypatch)
    evaluate.save_samples(path, images, np.array([3, 7]), 5, 12.5)
    assert [str(p) for p in written] == [str(path) + ".tmp.npz"]
    s = evaluate.load_samples(path)
    assert np.array_equal(s["images"], images) and s["images"].dtype == np.uint8
    assert s["labels"].tolist() == [3, 7] and s["nfe"] == 5.0 and s["images_per_sec"] == 12.5
    assert [p.name for p in path.parent.iterdir()] == ["m_4.npz"]  # no temporary file left behind
    # Real images have no labels, NFE or speed: None and NaN on the way back.
    evaluate.save_samples(path, images, None, None, None)
    s = evaluate.load_samples(path)
    assert s["labels"] is None and np.isnan(s["nfe"]) and np.isnan(s["images_per_sec"])
    assert np.array_equal(s["images"], images)


# ----------------------------------------------------------------------------
# Images of each method.

def test_image_stream_makes_chunks_on_demand_and_times_only_their_making(monkeypatch):
    made = []

    def make(b, e):
        made.append((b, e))
        return np.full((e - b, 1, 2, 2), b, np.uint8)
    monkeypatch.setattr(evaluate, "time", fake_clock(10.0, 12.0, 20.0, 21.0, 30.0, 31.0))
    stream = evaluate.ImageStream(make, 10, chunk=4, seconds_before=1.0)
    assert len(stream) == 10 and made == []  # nothing is made before it is asked for
    chunks = list(stream)
    assert made == [(0, 4), (4, 8), (8, 10)] and [len(c) for c in chunks] == [4, 4, 2]
    assert stream.seconds == 1.0 + 2 + 1 + 1 and stream.images_per_sec() == 10 / 5.0
    monkeypatch.setattr(evaluate, "time", fake_clock(0.0, 0.0, 0.0, 0.0))
    real = evaluate.ImageStream(make, 3, chunk=2, timed=False)
    assert np.asarray(real).shape == (3, 1, 2, 2) and real.images_per_sec() is None


def test_image_stream_defaults_and_dtype(monkeypatch):
    """With no `seconds_before` only the chunks' own making is timed; a chunk of 1 (or 0, floored to 1) makes one
    image at a time; `__array__` gives the uint8 images, or converts them to the dtype the caller asks for."""
    made = []

    def make(b, e):
        made.append((b, e))
        return np.full((e - b, 1, 2, 2), 200 + b, np.uint8)
    monkeypatch.setattr(evaluate, "time", fake_clock(1.0, 1.5, 2.0, 3.0, 5.0, 5.5))
    stream = evaluate.ImageStream(make, 3, chunk=1)
    assert [c[:, 0, 0, 0].tolist() for c in stream] == [[200], [201], [202]]
    assert made == [(0, 1), (1, 2), (2, 3)] and stream.images_per_sec() == 3 / (0.5 + 1.0 + 0.5)
    monkeypatch.setattr(evaluate, "time", fake_clock(*[0.0] * 12))
    assert [len(c) for c in evaluate.ImageStream(make, 2, chunk=0)] == [1, 1]
    stream = evaluate.ImageStream(make, 3, chunk=2)
    as_float = stream.__array__(np.float32)  # the array protocol as a consumer may call it, with a dtype
    assert as_float.dtype == np.float32 and as_float[:, 0, 0, 0].tolist() == [200.0, 200.0, 202.0]
    as_is = stream.__array__()
    assert as_is.dtype == np.uint8 and as_is.shape == (3, 1, 2, 2)


def test_generators_warm_up_on_32_images_and_pair_each_label_with_its_seed(decoder_dir, monkeypatch):
    """Unless told otherwise, the warm-up runs on 32 images, before any timed chunk; the sampler is handed the
    labels of exactly the seeds it draws (class i % 10 for image i), in the warm-up and in every chunk."""
    calls = []
    real = evaluate.load_sampler

    def spy(*a, **k):
        sampler, meta = real(*a, **k)
        return (lambda labels, seeds: calls.append((labels.tolist(), list(seeds))) or sampler(labels, seeds)), meta
    monkeypatch.setattr(evaluate, "load_sampler", spy)
    stream, labels, _ = evaluate.method_images("pagoda", 8, base_resolution=8, n=34, seed=0, data_dir=None,
                                               decoder_path=decoder_dir / "8" / "decoder.pt", batch_size=20)
    seeds = (np.arange(34) + 1000 * 1_000_000).tolist()
    assert calls == [([i % 10 for i in range(32)], seeds[:32])]
    assert len(np.asarray(stream)) == 34 and labels.tolist() == [i % 10 for i in range(34)]
    assert calls[1:] == [([i % 10 for i in range(20)], seeds[:20]), ([i % 10 for i in range(20, 34)], seeds[20:])]


def test_unconditional_generator_rows_have_no_labels(tmp_path):
    """A teacher without classes samples with labels None, and its row carries no labels."""
    torch.manual_seed(0)
    net = UNet(dataclasses.replace(TINY_NET, num_classes=0))
    save_network(tmp_path / "teacher.pt", net, kind="teacher")
    stream, labels, nfe = evaluate.method_images("teacher_ode", 8, base_resolution=8, n=3, seed=0, data_dir=None,
                                                 teacher_path=tmp_path / "teacher.pt", num_points=3, batch_size=2,
                                                 warmup=2)
    expected, _ = sampling.sample_teacher(net, None, seeds=sampling.seeds_for(3, 1000), num_points=3)
    assert labels is None and nfe == 5 and np.array_equal(np.asarray(stream), to_uint8(expected).numpy())


def test_evaluate_defaults_keep_2000_samples_above_the_base_and_score_with_karras_swd(tmp_path, monkeypatch):
    """Above the base resolution the samples file keeps the first 2000 images by default (labels None for an
    unconditional generator), while every image is scored; score gets evaluate's defaults: SWD from 16 px with
    128 descriptors per image and 512 projections (Karras et al.), k = 3, 64-px features, seed 0."""
    base = np.random.default_rng(0).integers(0, 256, (2001, 1, 4, 4), dtype=np.uint8)
    evaluate.save_samples(tmp_path / "base.npz", base, None, 1, 1000.0)
    scored = {}

    def score(images, reference, **kw):
        scored.update(kw, n=sum(len(c) for c in images), reference=reference)
        return {"fd_judge": 1.5}
    monkeypatch.setattr(evaluate, "score", score)
    made, method_images = {}, evaluate.method_images
    monkeypatch.setattr(evaluate, "method_images", lambda *a, **kw: made.update(
        n=kw["n"], num_points=kw["num_points"]) or method_images(*a, **kw))
    monkeypatch.setattr(evaluate, "load_reference", lambda path: {"path": path})
    monkeypatch.setattr(evaluate, "load_judge", lambda path, device: ("judge net", {}))
    record = evaluate.evaluate("stage2_bicubic", 8, resolutions=[4, 8], reference_path="ref.npz", judge_path="j.pt",
                               out_path=tmp_path / "r.json", samples_path=tmp_path / "s.npz", data_dir=None,
                               base_samples_path=tmp_path / "base.npz", device="cpu")
    samples = evaluate.load_samples(tmp_path / "s.npz")
    assert np.array_equal(samples["images"], resize_uint8(base[:2000], 8)) and samples["labels"] is None
    assert record["n_samples"] == 2001 and record["nfe"] == 1 and record["fd_judge"] == 1.5
    assert scored == {"n": 2001, "reference": {"path": "ref.npz"}, "judge_net": "judge net", "feature_size": 64,
                      "k": 3, "swd_min_resolution": 16, "swd_descriptors_per_image": 128, "swd_projections": 512,
                      "inception_dir": None, "seed": 0, "device": torch.device("cpu")}
    assert made == {"n": 2000, "num_points": 40}  # 2000 asked for; the base has 2001


def test_generators_are_warmed_up_before_the_timed_chunks(tiny_teacher, decoder_dir, monkeypatch):
    calls = []
    real = evaluate.load_sampler

    def spy(*a, **k):
        sampler, meta = real(*a, **k)
        return (lambda labels, seeds: calls.append(len(seeds)) or sampler(labels, seeds)), meta
    monkeypatch.setattr(evaluate, "load_sampler", spy)
    images, _, nfe = evaluate.method_images("pagoda", 8, base_resolution=8, n=10, seed=0, data_dir=None,
                                            decoder_path=decoder_dir / "8" / "decoder.pt", batch_size=4, warmup=3)
    assert calls == [3] and nfe == 1  # the warm-up call, before any timed one
    np.asarray(images)
    assert calls == [3, 4, 4, 2] and images.images_per_sec() > 0


def test_real_image_rows_are_the_test_images(tiny_data):
    test8, labels8, _ = load_dataset(tiny_data, "test", 8)
    test16, labels16, _ = load_dataset(tiny_data, "test", 16)
    images, labels, nfe = evaluate.method_images("data_test", 16, base_resolution=8, n=5, seed=0, data_dir=tiny_data)
    images, ips = np.asarray(images), images.images_per_sec()
    subset = balanced_subset(labels16, 5, seed=0)  # random and class-balanced, not the first 5 of the folder
    assert np.array_equal(images, test16[subset]) and np.array_equal(labels, labels16[subset])
    assert len(set(labels.tolist())) == 5 and nfe is None and ips is None
    # data_bicubic: the same images at the base resolution, upsampled back.
    images, labels, nfe = evaluate.method_images("data_bicubic", 16, base_resolution=8, n=5, seed=0, data_dir=tiny_data)
    images, ips = np.asarray(images), images.images_per_sec()
    assert np.array_equal(images, resize_uint8(test8[subset], 16)) and images.shape == (5, 1, 16, 16)
    assert np.array_equal(labels, labels8[subset]) and nfe is None and ips is None
    with pytest.raises(ValueError, match=r"unknown method 'vae'; known: \('data_test'"):
        evaluate.method_images("vae", 8, base_resolution=8, n=5, seed=0, data_dir=tiny_data)


def test_generator_rows_draw_the_evaluation_seeds(tiny_data, tiny_teacher, decoder_dir):
    decoder_path = decoder_dir / "8" / "decoder.pt"
    kw = dict(base_resolution=8, n=4, seed=2, data_dir=tiny_data, teacher_path=tiny_teacher, decoder_path=decoder_path)
    seeds = sampling.seeds_for(4, 1002)  # evaluation seeds sit EVAL_SEED_OFFSET above the training ones
    labels = torch.arange(4)
    stream, lab, nfe = evaluate.method_images("teacher_ode", 8, num_points=3, batch_size=3, **kw)
    images, ips = np.asarray(stream), stream.images_per_sec()
    net, _ = load_network(tiny_teacher)
    expected, _ = sampling.sample_teacher(net, labels, seeds=seeds, num_points=3)
    assert images.dtype == np.uint8 and np.array_equal(images, to_uint8(expected).numpy())
    assert lab.tolist() == [0, 1, 2, 3] and nfe == 5 and ips > 0  # Heun on 3 points: 2 * 3 - 1 evaluations
    images, lab, nfe = evaluate.method_images("pagoda", 8, **kw)
    images = np.asarray(images)
    G, meta = load_network(decoder_path)
    expected, _ = sampling.sample_decoder(G, labels, seeds=seeds)
    assert np.array_equal(images, to_uint8(expected).numpy()) and lab.tolist() == [0, 1, 2, 3] and nfe == 1


def test_bicubic_rows_upsample_the_base_samples_and_add_their_time(monkeypatch):
    base = {"images": np.random.default_rng(0).integers(0, 256, (10, 1, 8, 8), dtype=np.uint8),
            "labels": np.arange(10), "nfe": 79.0, "images_per_sec": 5.0}
    monkeypatch.setattr(evaluate, "time", fake_clock(100.0, 102.0))
    stream, labels, nfe = evaluate.method_images("teacher_ode_bicubic", 16, base_resolution=8, n=10, seed=0,
                                                 data_dir=None, base_samples=base)
    images = np.asarray(stream)
    assert np.array_equal(images, resize_uint8(base["images"], 16)) and labels is base["labels"] and nfe == 79.0
    assert stream.images_per_sec() == 2.5  # 10 images: 2 s to generate at 5/s, then 2 s to upsample
    monkeypatch.setattr(evaluate, "time", fake_clock(0.0, 0.0))
    stream = evaluate.method_images("stage2_bicubic", 32, base_resolution=8, n=10, seed=0, data_dir=None,
                                    base_samples=base)[0]
    assert np.asarray(stream).shape == (10, 1, 32, 32) and stream.images_per_sec() == 5.0


# ----------------------------------------------------------------------------
# Reference statistics and scores.

def test_reference_statistics_of_a_random_subset(tiny_data, judges, tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "inception_features", fake_inception)
    monkeypatch.setattr(evaluate, "time", fake_clock(100.0, 103.5))
    out = tmp_path / "new" / "eval" / "reference_8.npz"
    written = spy_on_savez(monkeypatch)
    summary = evaluate.reference_statistics(data_dir=tiny_data, resolution=8, out_path=out,
                                            judge_path=judges / "8" / "judge.pt", n_images=25, swd_images=10,
                                            feature_size=32, seed=3)
    ref = evaluate.load_reference(out)
    assert [p.name for p in out.parent.iterdir()] == ["reference_8.npz"]
    assert [str(p) for p in written] == [str(out) + ".tmp.npz"]
    images, labels, _ = load_dataset(tiny_data, "train", 8)
    idx = balanced_subset(labels, 25, seed=3)  # class-balanced, and so is every prefix score takes
    subset = images[idx]
    net, meta = judge.load_judge(judges / "8" / "judge.pt")
    jf = judge.image_features(net, subset)
    ef = metrics.extract_features(subset, metrics.EffNetFeatures(32))
    assert np.allclose(ref["judge_features"], jf, atol=1e-5) and ref["judge_features"].dtype == np.float32
    assert np.allclose(ref["effnet_features"], ef, atol=1e-5) and ref["effnet_features"].dtype == np.float32
    for name, feats in (("judge", jf), ("effnet", ef), ("inception", fake_inception(subset))):
        mu, sigma = metrics.statistics(feats)
        assert np.allclose(ref[f"{name}_mu"], mu, atol=1e-5) and np.allclose(ref[f"{name}_sigma"], sigma, atol=1e-5)
    assert np.array_equal(ref["swd_images"], subset[np.random.default_rng(4).permutation(25)[:10]])
    assert (ref["n_images"], ref["feature_size"], ref["resolution"]) == (25, 32, 8)
    assert ref["judge_test_accuracy"] == meta["test_accuracy"]
    # The return value is the summary: the scalars only.
    assert sorted(summary) == ["feature_size", "judge_test_accuracy", "n_images", "resolution", "seconds"]
    assert summary["n_images"] == 25 and summary["seconds"] == ref["seconds"] == 3.5  # the clock read twice


def test_reference_statistics_defaults_take_every_image_of_a_small_set(tiny_data, judges, tmp_path, monkeypatch):
    asked, subset = [], evaluate.balanced_subset
    monkeypatch.setattr(evaluate, "balanced_subset", lambda labels, n, **kw: asked.append(n) or subset(labels, n, **kw))
    evaluate.reference_statistics(data_dir=tiny_data, resolution=8, out_path=tmp_path / "r.npz",
                                  judge_path=judges / "8" / "judge.pt", inception_dir=tmp_path)
    assert asked == [5000]  # config's n_reference; this set has 40
    ref = evaluate.load_reference(tmp_path / "r.npz")
    images, labels, _ = load_dataset(tiny_data, "train", 8)
    images = images[balanced_subset(labels, 40, seed=0)]  # all 40, in balanced order
    assert ref["n_images"] == 40 and ref["feature_size"] == 64 and "inception_mu" not in ref
    assert np.array_equal(ref["swd_images"], images[np.random.default_rng(1).permutation(40)])
    ef = metrics.extract_features(images, metrics.EffNetFeatures(64))
    assert np.allclose(ref["effnet_features"], ef, atol=1e-5)


def test_keeping_passes_every_chunk_on_and_keeps_exactly_the_first_n_images():
    chunks = [np.arange(i, i + 3) for i in range(0, 12, 3)]
    for n, first in ((5, 5), (6, 6), (0, 0), (20, 12)):
        kept = []
        assert [c.tolist() for c in evaluate._keeping(iter(chunks), n, kept)] == [c.tolist() for c in chunks]
        assert np.concatenate(kept or [np.zeros(0, int)]).tolist() == list(range(first)), n


def direct_scores(images, ref, net, *, k, seed, feature_size, swd_kw, inception=None):
    """Every metric of `score`, computed here straight from the metric functions."""
    n = len(images)
    jf = judge.image_features(net, images)
    ef = metrics.extract_features(images, metrics.EffNetFeatures(feature_size))
    levels = swd.multiscale_swd(images[:len(ref["swd_images"])], ref["swd_images"], seed=seed, **swd_kw)
    out = {"fd_judge": metrics.frechet_distance(metrics.statistics(jf), (ref["judge_mu"], ref["judge_sigma"])),
           "kid_judge": metrics.kernel_distance(jf, ref["judge_features"], seed=seed),
           **{f"{key}_judge": v for key, v in metrics.precision_recall(ref["judge_features"][:n].astype(np.float64), jf, k=k).items()},
           "swd": levels["swd"], "swd_finest": levels["swd_finest"],
           "fd_effnet": metrics.frechet_distance(metrics.statistics(ef), (ref["effnet_mu"], ref["effnet_sigma"])),
           **metrics.precision_recall(ref["effnet_features"][:n].astype(np.float64), ef, k=k),
           "fid_inception": None if inception is None else metrics.frechet_distance(
               metrics.statistics(inception(images)), (ref["inception_mu"], ref["inception_sigma"]))}
    return out, {str(r): v for r, v in levels.items() if r not in ("swd", "swd_finest")}


def assert_scores_equal(got, expected, expected_levels):
    assert got.pop("swd_levels") == pytest.approx(expected_levels, rel=1e-6)
    assert sorted(got) == sorted(expected)
    for key, v in expected.items():
        assert got[key] == (None if v is None else pytest.approx(v, rel=1e-4, abs=1e-6)), key


def spy_on_metric_arguments(monkeypatch):
    """Record the k, seed and min_resolution that reach each metric: on the tests' few images the k-NN metrics,
    KID's subsets and the SWD's levels can come out the same for other values."""
    calls = []
    for module, name in ((evaluate, "judge_scores"), (metrics, "precision_recall"), (metrics, "kernel_distance"),
                         (swd, "multiscale_swd")):
        def spy(*args, _name=name, _real=getattr(module, name), **kwargs):
            calls.append((_name, {k: v for k, v in kwargs.items() if k in ("k", "seed", "min_resolution")}))
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, name, spy)
    return calls


def expected_metric_arguments(*, k, seed, min_resolution):
    return [("judge_scores", {"k": k}), ("precision_recall", {"k": k}), ("kernel_distance", {"seed": seed}),
            ("multiscale_swd", {"min_resolution": min_resolution, "seed": seed}), ("precision_recall", {"k": k})]


def test_score_is_each_metric_against_the_reference(tiny_data, judges, eval_dir, monkeypatch):
    ref = evaluate.load_reference(eval_dir / "reference_8.npz")
    net = judge.load_judge(judges / "8" / "judge.pt")[0]
    images = 255 - load_dataset(tiny_data, "train", 8)[0][:25]  # 25 images: fewer than the reference, more pixels
    calls = spy_on_metric_arguments(monkeypatch)
    got = evaluate.score(images, ref, judge_net=net, feature_size=32, k=2, seed=1, **SWD_KW)
    assert calls == expected_metric_arguments(k=2, seed=1, min_resolution=8)
    expected, levels = direct_scores(images, ref, net, k=2, seed=1, feature_size=32, swd_kw=dict(
        min_resolution=8, descriptors_per_image=4, n_projections=16))
    assert list(levels) == ["8"] and expected["fid_inception"] is None
    assert_scores_equal(got, expected, levels)
    with pytest.raises(ValueError, match="reference features were computed at 32 px, not 64"):
        evaluate.score(images, ref, judge_net=net)


def test_score_defaults_and_the_inception_view(tiny_data, judges, eval_dir, monkeypatch):
    monkeypatch.setattr(metrics, "inception_features", fake_inception)
    ref = evaluate.load_reference(eval_dir / "reference_16_64.npz")
    images = load_dataset(tiny_data, "test", 16)[0][:12]
    ref["inception_mu"], ref["inception_sigma"] = metrics.statistics(fake_inception(ref["swd_images"]))
    net = judge.load_judge(judges / "16" / "judge.pt")[0]
    calls = spy_on_metric_arguments(monkeypatch)
    got = evaluate.score(images, ref, judge_net=net)
    assert calls == expected_metric_arguments(k=3, seed=0, min_resolution=16)
    expected, levels = direct_scores(images, ref, net, k=3, seed=0, feature_size=64, inception=fake_inception,
                                     swd_kw=dict(min_resolution=16, descriptors_per_image=128, n_projections=512))
    assert expected["fid_inception"] > 0
    assert_scores_equal(got, expected, levels)
    # A reference with Inception statistics but no Inception network at hand: no FID.
    monkeypatch.setattr(metrics, "inception_features", lambda *a, **kw: None)
    assert evaluate.score(images, ref, judge_net=net)["fid_inception"] is None


# ----------------------------------------------------------------------------
# One record.

def test_evaluate_writes_the_record_and_the_samples(tiny_data, judges, eval_dir, tmp_path):
    kw = dict(resolutions=[8, 16], reference_path=eval_dir / "reference_16.npz", judge_path=judges / "16" / "judge.pt",
              data_dir=tiny_data, feature_size=32, k=2, seed=1, device="cpu", **SWD_KW)
    record = evaluate.evaluate("data_test", 16, out_path=tmp_path / "r.json", samples_path=tmp_path / "s" / "s.npz",
                               n_samples=12, **kw)
    assert json.loads((tmp_path / "r.json").read_text()) == record
    test, labels, _ = load_dataset(tiny_data, "test", 16)
    images = test[balanced_subset(labels, 12, seed=1)]
    samples = evaluate.load_samples(tmp_path / "s" / "s.npz")
    assert np.array_equal(samples["images"], images) and np.isnan(samples["nfe"])
    expected = evaluate.score(images, evaluate.load_reference(eval_dir / "reference_16.npz"),
                              judge_net=judge.load_judge(judges / "16" / "judge.pt")[0], feature_size=32, k=2, seed=1,
                              **SWD_KW)
    assert list(record) == ["method", "resolution", "nfe", "n_samples", *expected, "images_per_sec", "device",
                            "feature_size"]
    assert {k: record[k] for k in ("method", "resolution", "nfe", "n_samples", "images_per_sec", "device",
                                   "feature_size")} == {
        "method": "data_test", "resolution": 16, "nfe": None, "n_samples": 12, "images_per_sec": None,
        "device": None, "feature_size": 32}
    for key, v in expected.items():
        assert record[key] == (v if not isinstance(v, float) else pytest.approx(v, rel=1e-6)), key
    with pytest.raises(ValueError, match=r"teacher_ode has no row at resolution 16 \(resolutions \[8, 16\]\)"):
        evaluate.evaluate("teacher_ode", 16, out_path=tmp_path / "x.json", samples_path=tmp_path / "x.npz", **kw)
    assert not (tmp_path / "x.json").exists()


def test_evaluate_defaults_match_the_score_defaults(tiny_data, judges, eval_dir, tmp_path):
    ref = evaluate.load_reference(eval_dir / "reference_16_64.npz")
    record = evaluate.evaluate("data_test", 16, resolutions=[16], reference_path=eval_dir / "reference_16_64.npz",
                               judge_path=judges / "16" / "judge.pt", out_path=tmp_path / "r.json",
                               samples_path=tmp_path / "s.npz", data_dir=tiny_data)
    test, labels, _ = load_dataset(tiny_data, "test", 16)
    images = test[balanced_subset(labels, 2000, seed=0)]  # all 20, in the balanced order
    expected = evaluate.score(images, ref, judge_net=judge.load_judge(judges / "16" / "judge.pt")[0])
    assert record["n_samples"] == 20 and record["feature_size"] == 64  # every one of the 20 test images
    for key, v in expected.items():
        assert record[key] == (v if not isinstance(v, float) else pytest.approx(v, rel=1e-6)), key


def test_evaluate_row_reads_and_writes_the_results_layout(tiny_data, tiny_teacher, judges, eval_dir, decoder_dir,
                                                          tmp_path, monkeypatch):
    run = tmp_path / "eval"
    run.mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # a path that lost its folder would land here, and find nothing
    for r in (8, 16):
        (run / f"reference_{r}.npz").write_bytes((eval_dir / f"reference_{r}.npz").read_bytes())
    kw = dict(eval_dir=str(run), judges_dir=str(judges), decoder_dir=str(decoder_dir), teacher_path=tiny_teacher,
              resolutions=[8, 16], data_dir=tiny_data, n_samples=6, num_points=3, feature_size=32, device="cpu", **SWD_KW)
    teacher = evaluate.evaluate_row("teacher_ode", 8, **kw)
    assert (teacher["method"], teacher["nfe"], teacher["n_samples"]) == ("teacher_ode", 5, 6)
    assert teacher["images_per_sec"] > 0 and teacher["device"] == loop.device_name("cpu")
    assert json.loads((run / "teacher_ode_8.json").read_text()) == teacher
    pagoda = evaluate.evaluate_row("pagoda", 8, **kw)
    assert (pagoda["method"], pagoda["nfe"]) == ("pagoda", 1)
    stage2 = evaluate.load_samples(run / "samples" / "pagoda_8.npz")
    # stage2_bicubic upsamples the Stage-2 samples; teacher_ode_bicubic the teacher's.
    for method, source in (("stage2_bicubic", "pagoda"), ("teacher_ode_bicubic", "teacher_ode")):
        record = evaluate.evaluate_row(method, 16, **kw)
        base = evaluate.load_samples(run / "samples" / f"{source}_8.npz")
        assert np.array_equal(evaluate.load_samples(run / "samples" / f"{method}_16.npz")["images"],
                              resize_uint8(base["images"], 16))
        assert record["nfe"] == base["nfe"] and 0 < record["images_per_sec"] < base["images_per_sec"]
        assert (run / f"{method}_16.json").exists()
    assert stage2["labels"].tolist() == [0, 1, 2, 3, 4, 5]
    record = evaluate.evaluate_row("data_bicubic", 16, **kw)
    assert record["nfe"] is None and record["fd_judge"] > 0


def test_the_device_and_batch_sizes_reach_every_network(tiny_data, tiny_teacher, judges, eval_dir, tmp_path,
                                                        monkeypatch):
    """Where and in what batches the networks run: spies record what each one is handed and run it on the
    CPU, so the (CUDA) device named here is never touched and the test runs anywhere."""
    seen = []
    real_load_judge, real_extract, real_sampler = evaluate.load_judge, metrics.extract_features, evaluate.load_sampler

    def load_judge(path, device="cpu"):
        seen.append(("judge", device))
        return real_load_judge(path)

    def extract_features(images, net, *, batch_size=250, device="cpu"):
        seen.append(("features", batch_size, device))
        return real_extract(images, net)

    def inception_features(images, *, inception_dir=None, device="cpu"):
        seen.append(("inception", inception_dir, device))
        return fake_inception(images)

    def load_sampler(path, *, device="cpu", num_points=40, omega=None, batch_size=500):
        seen.append(("sampler", device, num_points, batch_size))
        return real_sampler(path, num_points=num_points, omega=omega, batch_size=batch_size)

    def to(net, device):
        seen.append(("to", device))
        return net

    def device_name(device):
        seen.append(("name", device))
        return "a GPU"
    for module, name, spy in ((evaluate, "load_judge", load_judge), (metrics, "extract_features", extract_features),
                              (metrics, "inception_features", inception_features),
                              (evaluate, "load_sampler", load_sampler), (StandInEffNet, "to", to),
                              (loop, "device_name", device_name)):
        monkeypatch.setattr(module, name, spy)
    gpu = torch.device("cuda", 7)
    evaluate.reference_statistics(data_dir=tiny_data, resolution=8, out_path=tmp_path / "ref.npz",
                                  judge_path=judges / "8" / "judge.pt", n_images=10, swd_images=10, feature_size=32,
                                  inception_dir="weights", batch_size=7, device=gpu)
    assert seen == [("judge", gpu), ("to", gpu), ("features", 7, gpu), ("inception", "weights", gpu)]
    kw = dict(resolutions=[8], reference_path=tmp_path / "ref.npz", judge_path=judges / "8" / "judge.pt",
              out_path=tmp_path / "r.json", samples_path=tmp_path / "s.npz", n_samples=6, data_dir=tiny_data,
              teacher_path=tiny_teacher, num_points=3, feature_size=32, inception_dir="weights", **SWD_KW)
    for batch_size in (4, None):  # None: evaluate's default
        seen.clear()
        record = evaluate.evaluate("teacher_ode", 8, device="cuda:7", **kw,
                                   **({} if batch_size is None else {"batch_size": batch_size}))
        # Evaluation scores in the feature network's own batches (score's default), whatever the sampler's, one
        # chunk of the sampler's batch size at a time (6 images: 2 chunks of at most 4, or one of at most 500).
        chunks = 2 if batch_size == 4 else 1
        assert seen == [("sampler", gpu, 3, batch_size or 500), ("judge", gpu), ("to", gpu),
                        *[("features", 250, gpu), ("inception", "weights", gpu)] * chunks, ("name", gpu)]
        assert record["device"] == "a GPU" and record["fid_inception"] > 0
    seen.clear()
    evaluate.score(np.zeros((6, 1, 8, 8), np.uint8), evaluate.load_reference(tmp_path / "ref.npz"),
                   judge_net=real_load_judge(judges / "8" / "judge.pt")[0], feature_size=32, batch_size=3,
                   inception_dir="weights", device="cuda:7", **SWD_KW)
    assert seen == [("to", "cuda:7"), ("features", 3, "cuda:7"), ("inception", "weights", "cuda:7")]


def test_evaluation_streams_chunks_and_keeps_a_few_samples_above_the_base(tiny_data, judges, eval_dir, tmp_path):
    # At 512 px, 50k samples are 39 GB: a row is made and scored chunk by chunk, and above the base resolution
    # the samples file keeps only the first keep_samples (the base keeps all: the bicubic rows upsample them).
    kw = dict(resolutions=[8, 16], reference_path=eval_dir / "reference_16.npz", judge_path=judges / "16" / "judge.pt",
              data_dir=tiny_data, feature_size=32, k=2, seed=1, device="cpu", n_samples=12, **SWD_KW)
    streamed = evaluate.evaluate("data_test", 16, out_path=tmp_path / "a.json", samples_path=tmp_path / "a.npz",
                                 batch_size=5, keep_samples=4, **kw)
    whole = evaluate.evaluate("data_test", 16, out_path=tmp_path / "b.json", samples_path=tmp_path / "b.npz", **kw)
    for key, v in whole.items():
        assert streamed[key] == (pytest.approx(v, rel=1e-5) if isinstance(v, float) else v), key
    kept, every = evaluate.load_samples(tmp_path / "a.npz"), evaluate.load_samples(tmp_path / "b.npz")
    assert np.array_equal(kept["images"], every["images"][:4]) and len(every["images"]) == 12
    assert np.array_equal(kept["labels"], every["labels"][:4])
    base = evaluate.evaluate("data_test", 8, out_path=tmp_path / "c.json", samples_path=tmp_path / "c.npz",
                             batch_size=5, keep_samples=4, **{**kw, "reference_path": eval_dir / "reference_8.npz",
                                                               "judge_path": judges / "8" / "judge.pt"})
    assert base["n_samples"] == 12 and len(evaluate.load_samples(tmp_path / "c.npz")["images"]) == 12


def test_learning_curve_defaults_are_the_evaluations(tiny_teacher, judges, eval_dir, tmp_path, monkeypatch):
    """The notebook leaves k, seed and the chunk size to `learning_curve`: a point is its snapshot's pagoda row
    only if they are the evaluation's defaults (n is cut to 12 on the way, to keep the test small). The device
    asked for reaches the judge and the sampler."""
    seen, method_images, judge_scores, load_judge = {}, evaluate.method_images, evaluate.judge_scores, \
        evaluate.load_judge

    def images(*args, n, seed, batch_size, device, **kwargs):
        seen.update(n_samples=n, seed=seed, batch_size=batch_size, sampler_device=device)
        return method_images(*args, n=12, seed=seed, batch_size=batch_size, device=device, **kwargs)

    monkeypatch.setattr(evaluate, "method_images", images)
    monkeypatch.setattr(evaluate, "judge_scores", lambda feats, ref, *, k: seen.update(k=k) or judge_scores(
        feats, ref, k=k))
    monkeypatch.setattr(evaluate, "load_judge", lambda path, device: seen.update(judge_device=device) or load_judge(
        path, device))
    save_network(tmp_path / "step-00000001.pt", decoder.init_decoder(tiny_teacher, resolution=8), kind="decoder")
    device = torch.device("cpu")
    evaluate.learning_curve([tmp_path / "step-00000001.pt"], reference_path=eval_dir / "reference_8.npz",
                            judge_path=judges / "8" / "judge.pt", device=device)
    row = inspect.signature(evaluate.evaluate).parameters
    assert seen == {**{name: row[name].default for name in ("n_samples", "k", "seed", "batch_size")},
                    "sampler_device": device, "judge_device": device}


def test_learning_curve_points_are_the_pagoda_rows_of_their_snapshots(tiny_teacher, tiny_data, judges, eval_dir,
                                                                      tmp_path, monkeypatch):
    """Each snapshot's point is what `evaluate` gives its pagoda row in the judge's view (same noise, same n),
    in step order; an untrained and a perturbed decoder give different points. The k-NN metrics get `k` (on
    these 12 images k = 2 and k = 3 give equal values, so it is checked where it is passed)."""
    ks, judge_scores = [], evaluate.judge_scores
    monkeypatch.setattr(evaluate, "judge_scores", lambda feats, ref, **kw: ks.append(kw["k"]) or judge_scores(
        feats, ref, **kw))
    torch.manual_seed(0)
    net = decoder.init_decoder(tiny_teacher, resolution=8)
    snaps = tmp_path / "run" / "snapshots"
    save_network(snaps / "step-00000004.pt", net, kind="decoder")
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_network(snaps / "step-00000010.pt", net, kind="decoder")
    curve = evaluate.learning_curve(loop.snapshot_paths(tmp_path / "run"), reference_path=eval_dir / "reference_8.npz",
                                    judge_path=judges / "8" / "judge.pt", n_samples=12, k=2, seed=1, batch_size=5)
    assert [(c["step"], c["n_samples"]) for c in curve] == [(4, 12), (10, 12)] and "kid_judge" not in curve[0]
    assert ks == [2, 2]
    assert curve[0]["fd_judge"] != curve[1]["fd_judge"]
    for point, step in zip(curve, (4, 10)):
        (tmp_path / "d" / "8").mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / "8" / "decoder.pt").write_bytes((snaps / f"step-{step:08d}.pt").read_bytes())
        row = evaluate.evaluate("pagoda", 8, resolutions=[8], reference_path=eval_dir / "reference_8.npz",
                                judge_path=judges / "8" / "judge.pt", out_path=tmp_path / "r.json",
                                samples_path=tmp_path / "s.npz", data_dir=tiny_data,
                                decoder_path=tmp_path / "d" / "8" / "decoder.pt", n_samples=12, k=2, seed=1,
                                feature_size=32, device="cpu", **SWD_KW)
        for key in ("fd_judge", "precision_judge", "recall_judge", "density_judge", "coverage_judge"):
            assert point[key] == pytest.approx(row[key], rel=1e-6), (step, key)


def test_guided_evaluation_samples_at_omega_and_scores_the_intended_classes(tiny_teacher, tiny_data, judges,
                                                                           eval_dir, tmp_path):
    kw = dict(resolutions=[8], reference_path=eval_dir / "reference_8.npz", judge_path=judges / "8" / "judge.pt",
              data_dir=tiny_data, teacher_path=tiny_teacher, n_samples=12, num_points=3, feature_size=32, k=2,
              seed=1, device="cpu", **SWD_KW)
    records = {w: evaluate.evaluate("teacher_ode", 8, out_path=tmp_path / f"{w}.json",
                                    samples_path=tmp_path / f"{w}.npz", omega=w, **kw) for w in (1.0, 3.0)}
    net, _ = load_network(tiny_teacher)
    labels = sampling.class_labels(12, 10)
    expected, nfe = sampling.sample_teacher(net, labels, seeds=sampling.seeds_for(12, evaluate.EVAL_SEED_OFFSET + 1),
                                            num_points=3, omega=3.0)
    samples = evaluate.load_samples(tmp_path / "3.0.npz")
    assert np.array_equal(samples["images"], to_uint8(expected).numpy()) and records[3.0]["nfe"] == nfe == 2 * 5
    assert not np.array_equal(samples["images"], evaluate.load_samples(tmp_path / "1.0.npz")["images"])
    predicted = judge.predict(judge.load_judge(judges / "8" / "judge.pt")[0], to_model(samples["images"]))
    assert records[3.0]["omega"] == 3.0
    assert records[3.0]["class_accuracy_judge"] == pytest.approx(float((predicted.numpy() == labels.numpy()).mean()))
    assert "class_accuracy_judge" not in evaluate.evaluate("teacher_ode", 8, out_path=tmp_path / "u.json",
                                                           samples_path=tmp_path / "u.npz", **kw)
