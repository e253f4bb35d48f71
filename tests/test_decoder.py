"""Stage 2: the encoder's shards, the one-step generator's initialisation, G/D steps, the sampling API."""

import dataclasses
import json
import math
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import TINY_NET, make_task

from pagoda import checkpoints, decoder, edm, encode, loop, sampling
from pagoda.checkpoints import load_network, save_network
from pagoda.data import load_dataset
from pagoda.growth import grow
from pagoda.networks import GrowthLevel, UNet


def test_encoding_plan_pairs_images_with_their_flips():
    idx, flip = encode.encoding_plan(100, 5, seed=3)
    assert len(idx) == 10 and np.array_equal(idx[0::2], idx[1::2])
    assert flip.tolist() == [False, True] * 5
    with pytest.raises(ValueError, match="training set has"):
        encode.encoding_plan(10, 11)


def test_shard_jobs_in_separate_processes_equal_one_run(tiny_teacher, tiny_data, tmp_path):
    """The workflow's encode_shard jobs: each process writes its shards; together they equal one run."""
    import subprocess
    import sys
    kw = dict(teacher_path=str(tiny_teacher), data_dir=str(tiny_data), resolution=8, n_images=10, num_points=5,
              shard_size=6, device="cpu")
    whole = encode.encode_dataset(out_dir=tmp_path / "one", progress=False, **kw)
    params = tmp_path / "params.json"
    params.write_text(json.dumps({**kw, "out_dir": str(tmp_path / "jobs")}))
    for shards in (["--shard", "2"], ["--shard", "0", "--shard", "3"], ["--shard", "1"]):
        subprocess.run([sys.executable, "-m", "pagoda.encode", *shards, str(params)], check=True,
                       capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if shards == ["--shard", "2"]:
            assert [p.name for p in encode.list_shards(tmp_path / "jobs")] == ["shard-00002.npz"]
    summary = encode.encode_dataset(out_dir=tmp_path / "jobs", progress=False, **kw)  # all there: nothing to do
    assert summary["complete"] and "encoded_this_call" not in summary and summary["latents"] == whole["latents"] == 20
    a, b = encode.load_latents(tmp_path / "one"), encode.load_latents(tmp_path / "jobs")
    for k in ("labels", "index", "flip"):
        assert np.array_equal(a[k], b[k]), k
    np.testing.assert_allclose(a["z"], b["z"], rtol=1e-4, atol=1e-4)  # other thread count, other rounding
    with pytest.raises(ValueError, match="shard numbers"):
        encode.encode_dataset(out_dir=tmp_path / "jobs2", shards=[4], progress=False, **kw)


def test_killed_encoding_resumes_and_equals_an_uninterrupted_run(tiny_teacher, tiny_data, tmp_path):
    kw = dict(teacher_path=tiny_teacher, data_dir=tiny_data, resolution=8, n_images=10, num_points=5,
              shard_size=6, progress=False, device="cpu")
    encode.encode_dataset(out_dir=tmp_path / "a", **kw)
    first = encode.encode_dataset(out_dir=tmp_path / "b", max_shards_this_call=2, **kw)
    assert not first["complete"] and len(encode.list_shards(tmp_path / "b")) == 2
    (tmp_path / "b" / "shard-00001.npz").unlink()  # a shard that never got written
    encode.encode_dataset(out_dir=tmp_path / "b", **kw)
    a, b = encode.load_latents(tmp_path / "a"), encode.load_latents(tmp_path / "b")
    assert len(a["z"]) == 20
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_latents_decode_back_to_their_images(tiny_teacher, tiny_data, latents):
    # The encoder is the teacher's ODE run backwards: decoding with the same ODE returns the image.
    net, _ = load_network(tiny_teacher)
    lat = encode.load_latents(latents)
    images, _, _ = load_dataset(tiny_data, "train", 8)
    x = torch.as_tensor(images[lat["index"][:4]]).float() / 127.5 - 1
    x = torch.where(torch.as_tensor(lat["flip"][:4]).view(-1, 1, 1, 1), x.flip(-1), x)
    back, _ = edm.ode_to_data(net, torch.as_tensor(lat["z"][:4]), torch.as_tensor(lat["labels"][:4]),
                              num_points=6, clamp=True)
    assert (back - x).abs().mean().item() < 0.05


def test_generator_starts_as_the_teacher_network_at_sigma_max(tiny_teacher):
    G = decoder.init_decoder(tiny_teacher, resolution=8)
    teacher, _ = load_network(tiny_teacher)
    z = 80 * torch.randn(3, 1, 8, 8)
    y = torch.tensor([1, 2, 3])
    raw = teacher(edm.c_in(80.0) * z, torch.full((3,), edm.c_noise(80.0)), y)
    torch.testing.assert_close(edm.generate(G, z, y), raw)
    assert all(p.requires_grad for p in G.parameters())


def params_of(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def moved(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v)}


def test_g_step_moves_only_g_and_d_step_only_d(tiny_teacher, tiny_data, latents):
    task = make_task(tiny_teacher, tiny_data, latents)
    heads, backbone, G = task.D.heads, task.D.backbones, task.G
    frozen_state = {k: v.clone() for k, v in backbone.state_dict().items()}  # weights and BN statistics
    p_heads, p_g = params_of(heads), params_of(G)
    task.g_step(0, loop.step_generator(0, 0))
    assert moved(p_g, G) and not moved(p_heads, heads)  # (lambda's value: test_training_step.py)
    p_heads, p_g = params_of(heads), params_of(G)
    task.d_step(0, loop.step_generator(0, 0))
    assert moved(p_heads, heads) and not moved(p_g, G)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in frozen_state.items())
    assert all(p.requires_grad for p in task.D.trainable_parameters())  # restored after the G step


@pytest.mark.parametrize("objective,weighting", [("distillation", "adaptive"), ("both", "separate")])
def test_objectives_and_weightings_run(tiny_teacher, tiny_data, latents, objective, weighting):
    task = make_task(tiny_teacher, tiny_data, latents, objective=objective, weighting=weighting)
    m = task.step(0, loop.step_generator(0, 0))
    assert all(np.isfinite(v) for v in m.values())
    if weighting == "separate":  # a second, fixed-weight update on the GAN term: without it G ends elsewhere
        assert m["lambda"] == pytest.approx(0.2)
        without = make_task(tiny_teacher, tiny_data, latents, objective=objective, weighting=weighting, gan_weight=0)
        without.step(0, loop.step_generator(0, 0))
        assert moved(params_of(without.G), task.G)


@pytest.mark.parametrize("value", [0, 255])
def test_step_stays_finite_on_flat_batches(tiny_teacher, tiny_data, latents, value):
    images, _, _ = load_dataset(tiny_data, "train", 8)
    flat = np.full_like(images, value)
    task = make_task(tiny_teacher, tiny_data, latents, targets=flat)
    m = task.step(0, loop.step_generator(0, 0))
    assert all(np.isfinite(v) for v in m.values()), m
    assert all(torch.isfinite(p).all() for p in task.G.parameters())


def test_train_decoder_and_the_common_sampling_api(tiny_teacher, tiny_data, latents, tmp_path):
    summary = decoder.train_decoder(data_dir=tiny_data, latents_dir=latents, init_path=tiny_teacher,
                                    run_dir=tmp_path / "run", out_path=tmp_path / "G.pt", resolution=8, steps=3,
                                    batch_size=8, feature_size=32, checkpoint_every=2, device="cpu",
                                    progress=False)
    assert summary["steps"] == 3 and summary["latent_pairs"] == 24
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())  # the defaults: the paper's Stage 2
    assert {k: run_json[k] for k in ("lr_g", "lr_d", "gan_weight", "weighting", "ema_decay", "distance", "objective",
                                     "d_feature_size", "trainable_output_blocks", "sigma_max", "seed")} == {
        "lr_g": 1e-4, "lr_d": 2e-3, "gan_weight": 0.2, "weighting": "adaptive", "ema_decay": 0.999,
        "distance": "feature", "objective": "reconstruction", "d_feature_size": None, "trainable_output_blocks": None,
        "sigma_max": 80.0, "seed": 0}
    labels = torch.tensor([0, 1, 2, 3, 4])
    for path, nfe in ((tmp_path / "G.pt", 1), (tiny_teacher, 11)):
        sample, meta = sampling.load_sampler(path, num_points=6, batch_size=2)
        x, n = sample(labels, sampling.seeds_for(5, 0))
        assert x.shape == (5, 1, 8, 8) and n == nfe and x.abs().max() <= 1
        again, _ = sample(labels, sampling.seeds_for(5, 0))
        assert torch.equal(x, again)  # seeded per image
    assert meta["kind"] == "teacher"


# ----------------------------------------------------------------------------
# The decoder's parts on known inputs.

def test_generate_preconditions_z_at_the_given_sigma_max_and_sigma_data():
    seen = []

    def net(x, c_noise, labels, *omega):
        seen.append((x, c_noise, labels, *omega))
        return x
    z, y = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.tensor([1, 2, 3])
    out = edm.generate(net, z, y, sigma_max=5.0, sigma_data=2.0)
    guided = edm.generate(net, z, y, omega=torch.tensor([1.0, 2.0, 3.0]), sigma_max=5.0, sigma_data=2.0)
    (x, c_noise, labels), (x_guided, c_noise_guided, labels_guided, omega) = seen
    for a, b in ((x, out), (x_guided, guided)):
        torch.testing.assert_close(a, z / math.sqrt(5.0 ** 2 + 2.0 ** 2))  # c_in = 1 / sqrt(sigma^2 + sigma_data^2)
        assert b is a
    assert c_noise.dtype == torch.float64 and c_noise.shape == (3,)
    for c in (c_noise, c_noise_guided):
        torch.testing.assert_close(c, torch.full((3,), math.log(5.0) / 4, dtype=torch.float64))  # EDM: ln(sigma) / 4
    assert labels is y and labels_guided is y and omega.tolist() == [1.0, 2.0, 3.0]


def test_paper_policy_trains_2_num_res_blocks_plus_1_output_blocks():
    # ADM-64 (3 ResBlocks per level): output_blocks[9:] of 16, i.e. 7; 2 per level: 5.
    assert [decoder.paper_trainable_output_blocks(SimpleNamespace(num_res_blocks=n)) for n in (3, 2)] == [7, 5]


def trainable_blocks(net):
    """The trainable top-level parts: 'output_blocks.i', 'out', 'growth_heads.j', ..."""
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    return {".".join(n.split(".")[:2]) if n.startswith(("output_blocks.", "growth_heads.")) else n.split(".")[0]
            for n in names}


def test_freeze_for_growth_trains_the_last_k_base_blocks_the_new_blocks_and_the_heads():
    grown = grow(UNet(TINY_NET), factor=2, channels=8, num_res_blocks=1)
    nb = grown.num_base_output_blocks
    assert nb == 4 and len(grown.output_blocks) == 6
    heads = {"out", "growth_heads.0"}
    decoder.freeze_for_growth(grown)  # the paper's rule: 2 * 1 + 1 = 3 base blocks
    assert trainable_blocks(grown) == {f"output_blocks.{i}" for i in range(1, 6)} | heads
    assert decoder.freeze_for_growth(grown, 0) is grown
    assert trainable_blocks(grown) == {"output_blocks.4", "output_blocks.5"} | heads
    decoder.freeze_for_growth(grown, nb)
    assert trainable_blocks(grown) == {f"output_blocks.{i}" for i in range(6)} | heads
    for k in (-1, nb + 1):
        with pytest.raises(ValueError, match=rf"^trainable_output_blocks must be in \[0, 4\], got {k}$"):
            decoder.freeze_for_growth(grown, k)


def test_init_decoder_starts_from_the_ema_weights_fully_trainable_in_training_mode(tmp_path):
    torch.manual_seed(1)
    net, ema = UNet(TINY_NET), UNet(TINY_NET)
    save_network(tmp_path / "t.pt", net, kind="teacher", ema=ema)
    G = decoder.init_decoder(tmp_path / "t.pt", resolution=8)
    assert all(torch.equal(v, ema.state_dict()[k]) for k, v in G.state_dict().items())
    assert not all(torch.equal(v, net.state_dict()[k]) for k, v in G.state_dict().items())
    assert all(p.requires_grad for p in G.parameters()) and all(m.training for m in G.modules())
    grown = decoder.init_decoder(tmp_path / "t.pt", resolution=16)
    assert all(m.training for m in grown.modules())
    assert all(torch.equal(v, grown.state_dict()[k]) for k, v in ema.state_dict().items())  # grown from the EMA
    with pytest.raises(ValueError, match="^cannot grow 8 -> 12: not an integer factor$"):
        decoder.init_decoder(tmp_path / "t.pt", resolution=12)
    for kw in ({"resolution": 8}, {"resolution": 16, "growth_head": "shared", "channels": 16}):
        on_meta = decoder.init_decoder(tmp_path / "t.pt", device="meta", **kw)
        assert all(p.device.type == "meta" for p in on_meta.parameters())


def test_init_decoder_passes_growth_options_and_chooses_the_head_style_once(tiny_teacher, tmp_path):
    teacher, _ = load_network(tiny_teacher)
    g16 = decoder.init_decoder(tiny_teacher, resolution=16, channels=16, num_res_blocks=1, trainable_output_blocks=1,
                               growth_head="shared")
    assert g16.config.growth == (GrowthLevel(16, 1),) and g16.config.growth_head == "shared"
    assert len(g16.growth_heads) == 0  # the shared head: no per-level image heads
    assert trainable_blocks(g16) == {"output_blocks.3", "output_blocks.4", "output_blocks.5", "out"}
    assert all(torch.equal(v, g16.state_dict()[k]) for k, v in teacher.state_dict().items())
    save_network(tmp_path / "16.pt", g16, kind="decoder")
    g32 = decoder.init_decoder(tmp_path / "16.pt", resolution=32, growth_head="residual")  # too late to change
    assert g32.config.growth_head == "shared" and g32.config.growth == (GrowthLevel(16, 1), GrowthLevel(16, 2))
    # 16 channels are also what a new level gets by default: other widths reach grow too.
    assert decoder.init_decoder(tiny_teacher, resolution=16, channels=8).config.growth == (GrowthLevel(8, 2),)


def test_flip_where_mirrors_only_the_flagged_images_left_to_right():
    x = torch.arange(2 * 2 * 3 * 4.0).view(2, 2, 3, 4)
    out = decoder._flip_where(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0, :, :, [3, 2, 1, 0]]) and torch.equal(out[1], x[1])


def test_slice_params_slices_per_sample_tensors_and_keeps_scalars():
    params = {"a": torch.arange(6), "size": 3, "b": torch.arange(12).view(6, 2)}
    out = decoder._slice_params(params, slice(2, 5))
    assert out.keys() == params.keys() and out["size"] == 3
    assert torch.equal(out["a"], torch.tensor([2, 3, 4])) and torch.equal(out["b"], params["b"][2:5])


def test_placement_error_is_half_the_mean_absolute_difference_at_the_base_resolution():
    # Flat images: resizing keeps them, so the error is |high - base| averaged over pixels and channels, / 2.
    high = torch.tensor([[0.5, -0.2], [1.0, 0.3]]).view(2, 2, 1, 1).expand(2, 2, 16, 16)
    base = torch.tensor([[0.1, 0.0], [0.0, 0.3]]).view(2, 2, 1, 1).expand(2, 2, 8, 8)
    err = decoder.placement_error(high, base)
    assert err.shape == (2,)
    torch.testing.assert_close(err, torch.tensor([(0.4 + 0.2) / 2 / 2, (1.0 + 0.0) / 2 / 2]))


# ----------------------------------------------------------------------------
# One tiny Stage-3 run (teacher 8 px -> 16 px, 2 steps) with non-default settings, recording how
# train_decoder builds its pieces; many checks share it.

@pytest.fixture(scope="module")
def grown_run(tiny_teacher, tiny_data, latents, tmp_path_factory):
    import contextlib
    import copy
    import io
    out = tmp_path_factory.mktemp("grown_run")
    kw = dict(data_dir=tiny_data, latents_dir=latents, init_path=tiny_teacher, run_dir=out / "run",
              out_path=out / "G.pt", resolution=16, steps=2, batch_size=4, lr_g=3e-4, lr_d=1e-3, gan_weight=0.5,
              weighting="separate", ema_decay=0.9, distance="feature", objective="reconstruction", feature_size=32,
              d_feature_size=64, backbones=("efficientnet_lite0",), backbone_source="offline", growth_channels=16,
              growth_res_blocks=1, trainable_output_blocks=2, growth_head="shared", sigma_max=70.0, seed=3,
              checkpoint_every=1, log_every=2)
    rec = SimpleNamespace(init=[], features=[], tasks=[], distributed=[])
    real_init, real_features, real_task = decoder.init_decoder, decoder.feature_networks, decoder.DecoderTask
    real_distributed = loop.init_distributed

    def init(*args, **kwargs):
        net = real_init(*args, **kwargs)
        rec.init.append((args, kwargs, {k: v.clone() for k, v in net.state_dict().items()}))
        return net

    def features(*args, **kwargs):
        nets = real_features(*args, **kwargs)
        rec.features.append((args, kwargs, nets))
        return nets

    def task(*args, **kwargs):
        t = real_task(*args, **kwargs)
        rec.tasks.append((t, copy.deepcopy(t)))  # the live task and its state before the first step
        return t
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(stderr):
        mp.setattr(decoder, "init_decoder", init)
        mp.setattr(decoder, "feature_networks", features)
        mp.setattr(decoder, "DecoderTask", task)
        mp.setattr(loop, "init_distributed", lambda device: rec.distributed.append(device) or real_distributed(device))
        summary = decoder.train_decoder(**kw)  # device and progress bar: the defaults
    return SimpleNamespace(kw=kw, summary=summary, rec=rec, stderr=stderr.getvalue(), out=out)


class StopBeforeTraining(Exception):
    """Raised by a stand-in for loop.run: the tests below check how train_decoder sets a stage up."""


@pytest.mark.parametrize("num_classes", [10, 0])
def test_train_decoder_builds_d_and_the_distance_for_its_generator(num_classes, tiny_data, latents, tmp_path,
                                                                    monkeypatch):
    """D is class-conditional exactly when G is (and not omega-conditioned without guidance); the distance is
    the one asked for. Stopped where the training loop would start."""
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    save_network(teacher, UNet(dataclasses.replace(TINY_NET, num_classes=num_classes)), kind="teacher",
                 meta={"classes": [str(i) for i in range(10)]})
    tasks = []

    def run(task, **kwargs):
        tasks.append(task)
        raise StopBeforeTraining
    monkeypatch.setattr(loop, "run", run)
    with pytest.raises(StopBeforeTraining):
        decoder.train_decoder(data_dir=tiny_data, latents_dir=latents, init_path=teacher, run_dir=tmp_path / "run",
                              out_path=tmp_path / "G.pt", resolution=8, feature_size=32, distance="l2")
    (task,) = tasks
    heads = list(task.D.heads)
    assert all((h.embed.num_embeddings if h.embed is not None else 0) == num_classes for h in heads)
    assert all(h.omega_embed is None for h in heads) and task.distance.kind == "l2"


def test_train_decoder_hands_its_settings_to_the_task_the_loop_and_the_run_record(tiny_teacher, tiny_data, latents,
                                                                                   tmp_path, monkeypatch):
    """The objective and beta2 reach the task and both optimisers, the device and the progress flag reach the loop,
    and the feature networks' names reach run.json, which decides whether a run resumes. Stopped where the
    training loop would start."""
    seen = []

    def features(backbones, size, *, source):
        nets = real_features(backbones, size, source=source)
        for net in nets:
            net.name = "renamed"  # as a second network (DeiT-B, through timm) records its own name
        return nets

    def run(task, **kwargs):
        seen.append((task, kwargs))
        raise StopBeforeTraining
    real_features = decoder.feature_networks
    monkeypatch.setattr(decoder, "feature_networks", features)
    monkeypatch.setattr(loop, "run", run)
    with pytest.raises(StopBeforeTraining):
        decoder.train_decoder(data_dir=tiny_data, latents_dir=latents, init_path=tiny_teacher, run_dir=tmp_path / "run",
                              out_path=tmp_path / "G.pt", resolution=8, feature_size=32, objective="both", beta2=0.95,
                              device="cpu", progress=False)
    ((task, kwargs),) = seen
    assert task.objective == "both"
    assert {group["betas"] for opt in (task.opt_g, task.opt_d) for group in opt.param_groups} == {(0.9, 0.95)}
    assert kwargs["device"] == torch.device("cpu") and kwargs["progress"] is False
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["backbones"] == [type(task.distance.backbones[0]).__name__ + ":renamed"]


def test_rebuilt_networks_stay_on_the_device_of_the_one_they_replace():
    """Adding the omega embedding or changing dropout rebuilds the UNet, on the original's device. Checked on
    PyTorch's 'meta' device (no data), where a rebuilt net left on the CPU cannot take the original's weights."""
    for rebuild, config in ((decoder.with_omega_embedding, TINY_NET),
                            (lambda net: decoder._rebuilt(net, dropout=0.0), dataclasses.replace(TINY_NET, dropout=0.1))):
        out = rebuild(UNet(config).to("meta"))
        assert out.config != config and all(p.is_meta for p in out.parameters())


def test_train_decoder_defaults_are_the_documented_ones(tiny_teacher, tiny_data, latents, tmp_path, monkeypatch):
    """Called from Python with only the paths and the resolution, a stage trains 500 steps of batch 32 with the
    paper's feature networks (EfficientNet-lite0 at 224 px, offline weights), checkpoints every 100 steps and
    grows with 2 residual blocks per new level, from seed 0. Stopped where the training loop would start."""
    seen = {}

    def features(backbones, size, *, source):
        seen.setdefault("features", []).append((tuple(backbones), size, source))
        return real_features(backbones, 32, source=source)  # 32 px: the same networks, faster here

    def run(task, **kwargs):
        seen.update(batch_size=task.batch_size, **{k: kwargs[k] for k in ("total_steps", "checkpoint_every", "seed")})
        raise StopBeforeTraining
    real_features, real_init = decoder.feature_networks, decoder.init_decoder
    monkeypatch.setattr(decoder, "feature_networks", features)
    monkeypatch.setattr(decoder, "init_decoder", lambda path, **kw: seen.update(init=kw) or real_init(path, **kw))
    monkeypatch.setattr(loop, "run", run)
    with pytest.raises(StopBeforeTraining):
        decoder.train_decoder(data_dir=tiny_data, latents_dir=latents, init_path=tiny_teacher, run_dir=tmp_path / "run",
                              out_path=tmp_path / "G.pt", resolution=16)
    assert seen == {"features": [(("efficientnet_lite0",), 224, "offline")], "batch_size": 32, "total_steps": 500,
                    "checkpoint_every": 100, "seed": 0,
                    "init": dict(resolution=16, channels=None, num_res_blocks=2, trainable_output_blocks=None,
                                 growth_head="residual", guided=False, device=torch.device("cpu"))}


def grown_config():
    from dataclasses import replace
    return replace(TINY_NET, growth=(GrowthLevel(16, 1),), growth_head="shared")


def fingerprint(path):
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check_train_decoder_fingerprints_its_settings_and_inputs_in_run_json(grown_run, tiny_teacher, tiny_data, latents):
    run_json = json.loads((grown_run.out / "run" / "run.json").read_text())
    kw = grown_run.kw
    expected = {k: kw[k] for k in ("resolution", "batch_size", "lr_g", "lr_d", "gan_weight", "weighting", "ema_decay",
                                   "distance", "objective", "feature_size", "d_feature_size",
                                   "trainable_output_blocks", "sigma_max", "seed")}
    expected.update({
        "stage": "decoder", "backbones": ["EfficientNetLite0:efficientnet_lite0"], "beta2": 0.999, "curve_points": 0,
        "network": json.loads(json.dumps(grown_config().to_dict())), "world_size": 1,
        "init": fingerprint(tiny_teacher), "latents": [fingerprint(p) for p in sorted(latents.glob("shard-*.npz"))],
        "pairs": None, "data": fingerprint(tiny_data / "train_16.npz")})
    assert len(expected["latents"]) == 3 and run_json == expected


def check_train_decoder_summary_is_saved_with_the_grown_decoder(grown_run):
    from pagoda.data import FASHION_MNIST_CLASSES
    ckpt = torch.load(grown_run.out / "G.pt", weights_only=False)
    cfg = grown_config()
    net = UNet(cfg)
    # Trainable after growth with trainable_output_blocks=2: base output blocks 2, 3, the new 4, 5 and the head.
    trainable = sum(p.numel() for n, p in net.named_parameters()
                    if n.startswith(("output_blocks.2.", "output_blocks.3.", "output_blocks.4.", "output_blocks.5.",
                                     "out.")))
    timing = json.loads((grown_run.out / "run" / "timing.json").read_text())
    assert timing["seconds"] > 0
    assert grown_run.summary == {
        "resolution": 16, "base_resolution": 8, "steps": 2, "params": sum(p.numel() for p in net.parameters()),
        "trainable_params": trainable, "latent_pairs": 24, "objective": "reconstruction", "distance": "feature",
        "weighting": "separate", "gan_weight": 0.5, "sigma_max": 70.0, "seconds": timing["seconds"],
        "device": loop.device_name(loop.resolve_device("auto")), "classes": list(FASHION_MNIST_CLASSES)}
    assert ckpt["kind"] == "decoder" and ckpt["meta"] == grown_run.summary and ckpt["config"] == cfg.to_dict()
    assert ckpt["ema"].keys() == ckpt["net"].keys()
    assert any(not torch.equal(v, ckpt["ema"][k]) for k, v in ckpt["net"].items())  # the EMA, not G twice


def check_train_decoder_builds_its_task_from_the_arguments(grown_run, tiny_teacher, tiny_data, latents):
    rec, device = grown_run.rec, loop.resolve_device("auto")
    assert rec.distributed == [device]  # the process group (under torchrun) is set up for this device
    ((args, kwargs, init_state),) = rec.init
    assert args == (tiny_teacher,) and kwargs == dict(resolution=16, channels=16, num_res_blocks=1,
                                                      trainable_output_blocks=2, growth_head="shared", guided=False,
                                                      device=device)
    # The new layers' initial weights come from the run's seed.
    torch.manual_seed(3)
    expected = decoder.init_decoder(tiny_teacher, **{**kwargs, "device": "cpu"}).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in init_state.items())
    (a1, k1, dist_nets), (a2, k2, d_nets) = rec.features  # the distance's at 32 px, D's own at 64 px
    assert a1 == (("efficientnet_lite0",), 32) and a2 == (("efficientnet_lite0",), 64)
    assert k1 == k2 == {"source": "offline"}
    ((task, _),) = rec.tasks
    assert task.distance.kind == "feature" and task.distance.backbones[0] is dist_nets[0]
    assert task.D.backbones[0] is d_nets[0] and task.D.heads[0].embed.num_embeddings == 10  # class-conditional D
    assert (task.batch_size, task.gan_weight, task.weighting, task.ema_decay, task.sigma_max, task.objective) == \
        (4, 0.5, "separate", 0.9, 70.0, "reconstruction")
    assert isinstance(task.device, torch.device) and task.device == device  # the resolved device, not a default
    assert task.opt_g.param_groups[0]["lr"] == 3e-4 and task.opt_d.param_groups[0]["lr"] == 1e-3
    images, labels, _ = load_dataset(tiny_data, "train", 16)
    assert torch.equal(task.targets, torch.as_tensor(images)) and torch.equal(task.train_images, task.targets)
    assert torch.equal(task.train_labels, torch.as_tensor(labels))
    check_arrays_are_the_stored_ones(task.latents, encode.load_latents(latents))
    assert task.pairs is None  # a growth stage reconstructs: no teacher pairs


def check_arrays_are_the_stored_ones(mine, stored):
    assert mine.keys() == stored.keys() and all(np.array_equal(np.asarray(mine[k]), stored[k]) for k in stored)
    assert isinstance(mine["z"], encode.ShardedArray)  # read from disk per batch, not held in memory


def test_stage2_with_distillation_reads_the_teacher_pairs_and_growth_refuses_them(tiny_teacher, tiny_data, latents,
                                                                                  tmp_path, monkeypatch):
    tasks = []
    real_task = decoder.DecoderTask
    monkeypatch.setattr(decoder, "DecoderTask", lambda *a, **kw: tasks.append(real_task(*a, **kw)) or tasks[-1])
    kw = dict(data_dir=tiny_data, latents_dir=latents, init_path=tiny_teacher, steps=1, batch_size=4,
              feature_size=32, objective="both", device="cpu", progress=False)
    decoder.train_decoder(run_dir=tmp_path / "run", out_path=tmp_path / "G.pt", resolution=8, **kw)
    check_arrays_are_the_stored_ones(tasks[0].pairs, encode.load_latents(latents, prefix="pairs"))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["pairs"] == [
        fingerprint(p) for p in sorted(latents.glob("pairs-*.npz"))]
    # Pairs from a folder of their own (another teacher's), the latents from the usual one.
    other = tmp_path / "pairs"
    other.mkdir()
    stored = dict(np.load(latents / "pairs-00000.npz"))
    np.savez(other / "pairs-00000.npz", **{**stored, "x": -stored["x"]})
    decoder.train_decoder(run_dir=tmp_path / "run2", out_path=tmp_path / "G2.pt", resolution=8, pairs_dir=other, **kw)
    check_arrays_are_the_stored_ones(tasks[1].pairs, encode.load_latents(other, prefix="pairs"))
    check_arrays_are_the_stored_ones(tasks[1].latents, encode.load_latents(latents))
    decoder.train_decoder(run_dir=tmp_path / "run3", out_path=tmp_path / "G3.pt", resolution=8,
                          **{**kw, "objective": "distillation"})  # L_dstl alone reads the pairs too
    check_arrays_are_the_stored_ones(tasks[2].pairs, encode.load_latents(latents, prefix="pairs"))
    for objective in ("distillation", "both"):  # base-resolution teacher samples are no 16x16 targets
        with pytest.raises(ValueError, match="^" + re.escape(
                f"objective '{objective}' applies to Stage 2 only: its teacher pairs are 8x8 samples, not 16x16 "
                "targets; grow with 'reconstruction' (or 'none')") + "$"):
            decoder.train_decoder(run_dir=tmp_path / "grow", out_path=tmp_path / "G16.pt", resolution=16,
                                  **{**kw, "objective": objective})
    assert len(tasks) == 3 and not (tmp_path / "grow").exists()


def check_train_decoder_steps_with_the_runs_seed_and_logs_and_checkpoints_as_asked(grown_run):
    ((_, initial),) = grown_run.rec.tasks
    initial.step(0, loop.step_generator(3, 0))  # the first step by hand, with the run's seed
    run = grown_run.out / "run"
    assert [p.name for p in loop.checkpoint_paths(run)] == ["step-00000001.pt", "step-00000002.pt"]  # every step
    first = torch.load(run / "checkpoints" / "step-00000001.pt", weights_only=False)["modules"]
    for name in ("G", "D"):
        module = initial.G if name == "G" else initial.D
        for k, v in first[name].items():
            torch.testing.assert_close(v, module.state_dict()[k], rtol=1e-5, atol=1e-6)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2]  # log_every=2
    assert set(rows[0]) == {"step", "rec", "adv", "lambda", "d_loss", "d_real", "d_fake"}
    assert "decoder 16" in grown_run.stderr and "2/2" in grown_run.stderr  # the default progress bar


def test_train_decoder_on_a_tiny_grown_stage(grown_run, tiny_teacher, tiny_data, latents):
    # One test for the shared run: mutation testing credits a module-scoped fixture's work to the first test only.
    check_train_decoder_fingerprints_its_settings_and_inputs_in_run_json(grown_run, tiny_teacher, tiny_data, latents)
    check_train_decoder_summary_is_saved_with_the_grown_decoder(grown_run)
    check_train_decoder_builds_its_task_from_the_arguments(grown_run, tiny_teacher, tiny_data, latents)
    check_train_decoder_steps_with_the_runs_seed_and_logs_and_checkpoints_as_asked(grown_run)

def test_reconstructions_pair_real_images_with_g_of_their_latents(grown_run, tiny_teacher, tiny_data, latents,
                                                                   tmp_path):
    lat = encode.load_latents(latents)
    for path, res, sigma in ((grown_run.out / "G.pt", 16, 70.0), (tmp_path / "d.pt", 8, 80.0)):
        if res == 8:  # a decoder whose meta has no sigma_max: the EDM default
            save_network(path, load_network(tiny_teacher)[0], kind="decoder")
        x, x_hat = decoder.reconstructions(path, latents_dir=latents, data_dir=tiny_data, n=3)
        images, _, _ = load_dataset(tiny_data, "train", res)
        real = torch.as_tensor(images[lat["index"][:3]]).float() / 127.5 - 1
        real = torch.where(torch.as_tensor(lat["flip"][:3]).view(-1, 1, 1, 1), real.flip(-1), real)
        torch.testing.assert_close(x, real)
        net, _ = load_network(path)
        expected = edm.generate(net, torch.as_tensor(lat["z"][:3]), torch.as_tensor(lat["labels"][:3]),
                                    sigma_max=sigma).clamp(-1, 1)
        torch.testing.assert_close(x_hat, expected)
    x, x_hat = decoder.reconstructions(path, latents_dir=latents, data_dir=tiny_data)
    assert x.shape == x_hat.shape == (10, 1, 8, 8)
    with pytest.raises(ValueError, match="holds a teacher network, expected a decoder"):
        decoder.reconstructions(tiny_teacher, latents_dir=latents, data_dir=tiny_data)


def test_same_noise_samples_give_every_decoder_the_same_z_and_labels(grown_run, tiny_teacher, tmp_path, monkeypatch):
    from dataclasses import replace
    base, _ = load_network(tiny_teacher)
    save_network(tmp_path / "8.pt", base, kind="decoder")  # no sigma_max in its meta: the EDM default
    save_network(tmp_path / "16.pt", decoder.init_decoder(tiny_teacher, resolution=16), kind="decoder",
                 meta={"sigma_max": 80.0})
    a, b = decoder.same_noise_samples([tmp_path / "8.pt", tmp_path / "16.pt"], n=4, seed=2)
    z = 80 * sampling.image_noise(sampling.seeds_for(4, 2), (1, 8, 8))
    torch.testing.assert_close(a, edm.generate(base, z, torch.arange(4)).clamp(-1, 1))
    # The grown decoder starts as the nearest upsampling of its parent: the same z and labels show it.
    torch.testing.assert_close(b, a.repeat_interleave(2, -1).repeat_interleave(2, -2))
    (c,) = decoder.same_noise_samples([tmp_path / "8.pt"], n=4, seed=2, labels=[9, 9, 9, 9])
    torch.testing.assert_close(c, edm.generate(base, z, torch.full((4,), 9)).clamp(-1, 1))
    (d,) = decoder.same_noise_samples([tmp_path / "8.pt"])  # defaults: 10 images, seed 0
    z10 = 80 * sampling.image_noise(sampling.seeds_for(10, 0), (1, 8, 8))
    torch.testing.assert_close(d, edm.generate(base, z10, torch.arange(10) % 10).clamp(-1, 1))
    save_network(tmp_path / "u.pt", UNet(replace(TINY_NET, num_classes=0)), kind="decoder")
    assert decoder.same_noise_samples([tmp_path / "u.pt"], n=2)[0].shape == (2, 1, 8, 8)  # unconditional
    # Each decoder runs at its own sigma_max (the Stage-2 run's 70), with z = sigma_max n for the same n.
    used = []
    real_generate = decoder.generate
    monkeypatch.setattr(decoder, "generate",
                        lambda net, z, y, **k: used.append((k["sigma_max"], z)) or real_generate(net, z, y, **k))
    decoder.same_noise_samples([tmp_path / "8.pt", grown_run.out / "G.pt"], n=2)
    assert [s for s, _ in used] == [80.0, 70.0]
    torch.testing.assert_close(used[1][1], used[0][1] * 70 / 80)
    with pytest.raises(ValueError, match="holds a teacher network, expected a decoder"):
        decoder.same_noise_samples([tiny_teacher])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_looking_at_a_decoder_on_cuda_gives_the_cpu_results(tiny_teacher, tiny_data, latents, tmp_path):
    save_network(tmp_path / "d.pt", load_network(tiny_teacher)[0], kind="decoder")
    grown = decoder.init_decoder(tmp_path / "d.pt", resolution=16, device="cuda")
    assert all(p.device.type == "cuda" for p in grown.parameters())
    kw = dict(latents_dir=latents, data_dir=tiny_data, n=3)
    for a, b in zip(decoder.reconstructions(tmp_path / "d.pt", **kw),
                    decoder.reconstructions(tmp_path / "d.pt", device="cuda", **kw)):
        assert b.device.type == "cpu"
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    (a,) = decoder.same_noise_samples([tmp_path / "d.pt"], n=3)
    (b,) = decoder.same_noise_samples([tmp_path / "d.pt"], n=3, device="cuda")
    assert b.device.type == "cpu"
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_decoder_has_no_dropout_when_the_teacher_was_trained_with_it(tmp_path):
    # config/imagenet.yaml's teacher has dropout 0.1; the released code builds the decoder with dropout 0. In
    # .train() mode a live dropout would make two passes on the same input differ (and differ from sampling).
    torch.manual_seed(2)
    teacher = UNet(dataclasses.replace(TINY_NET, dropout=0.5))
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))  # no zero-initialised layer hides the dropout
    save_network(tmp_path / "t.pt", teacher, kind="teacher")
    z, y = 80 * torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    for resolution in (8, 16):
        G = decoder.init_decoder(tmp_path / "t.pt", resolution=resolution)
        assert G.training and G.config.dropout == 0
        assert all(m.p == 0 for m in G.modules() if isinstance(m, torch.nn.Dropout))
        torch.testing.assert_close(edm.generate(G, z, y), edm.generate(G, z, y), rtol=0, atol=0)
    # The weights are the teacher's EMA weights unchanged.
    G = decoder.init_decoder(tmp_path / "t.pt", resolution=8)
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in teacher.state_dict().items())
    assert load_network(tmp_path / "t.pt")[0].config.dropout == 0.5  # the teacher keeps its own setting


def test_latent_shards_are_memory_mapped_and_index_like_one_array(tmp_path):
    # Each DDP rank used to concatenate every shard in RAM (ImageNet: 126 GB per rank); now z stays on disk.
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 3, 4, 4)).astype(np.float32) for n in (5, 7, 3)]
    for k, p in enumerate(parts):
        np.savez(encode.shard_path(tmp_path, k), z=p, labels=np.arange(len(p)) + 10 * k,
                 index=np.arange(len(p)), flip=np.ones(len(p), bool), seconds=np.float64(1.0))
    lat, full = encode.load_latents(tmp_path), np.concatenate(parts)
    z = lat["z"]
    assert isinstance(z, encode.ShardedArray) and all(isinstance(p, np.memmap) for p in z.parts)
    assert z.shape == (15, 3, 4, 4) and len(z) == 15 and z.dtype == np.float32
    assert lat["labels"].tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 20, 21, 22]
    for idx in (torch.tensor([0, 14, 5, -1, 7, 5]), np.array([[12, 4], [5, 11]]), slice(2, 13, 3), [4, 5]):
        want = full[idx] if isinstance(idx, slice) else full[np.asarray(idx).reshape(-1)]  # one flat batch, in order
        np.testing.assert_array_equal(z[idx], want)
    np.testing.assert_array_equal(z[6], full[6])
    np.testing.assert_array_equal(np.asarray(z), full)
    with pytest.raises(IndexError, match="index out of range for 15 rows"):
        z[torch.tensor([15])]
    summary = encode.latent_summary(tmp_path)
    assert summary["latents"] == 15 and summary["z_std"] == pytest.approx(float(full.std()), rel=1e-6)
    assert summary["z_mean"] == pytest.approx(float(full.mean()), abs=1e-7)
    np.savez_compressed(encode.shard_path(tmp_path, 3), z=parts[0], labels=np.arange(5), index=np.arange(5),
                        flip=np.ones(5, bool), seconds=np.float64(1.0))
    with pytest.raises(ValueError, match="z is compressed and cannot be memory-mapped"):
        encode.load_latents(tmp_path)


def test_curve_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert decoder.curve_steps(6, 2) == [3, 6]
    assert decoder.curve_steps(190, 4) == [48, 95, 142, 190]  # 47.5 and 142.5 round to even
    assert decoder.curve_steps(2, 5) == [1, 2]  # more points than steps: every step once, never step 0
    assert decoder.curve_steps(10, 1) == [10]


def test_training_keeps_ema_snapshots_and_the_last_is_the_final_decoder(tiny_teacher, tiny_data, latents, tmp_path):
    decoder.train_decoder(data_dir=tiny_data, latents_dir=latents, init_path=tiny_teacher, run_dir=tmp_path / "run",
                          out_path=tmp_path / "G.pt", resolution=8, steps=4, batch_size=8, feature_size=32,
                          checkpoint_every=4, curve_points=2, device="cpu", progress=False)
    paths = loop.snapshot_paths(tmp_path / "run")
    assert [p.name for p in paths] == ["step-00000002.pt", "step-00000004.pt"]
    final, last, first = (checkpoints.load_checkpoint(p) for p in (tmp_path / "G.pt", *paths[::-1]))
    assert last["kind"] == "decoder" and last["config"] == final["config"] and last["meta"]["sigma_max"] == 80.0
    assert (first["meta"]["steps"], last["meta"]["steps"]) == (2, 4)
    for name, w in final["ema"].items():
        assert torch.equal(last["ema"][name], w) and torch.equal(last["net"][name], w), name
    assert any(not torch.equal(first["ema"][n], w) for n, w in final["ema"].items())  # two steps earlier
