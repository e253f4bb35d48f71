"""Stage 2: the encoder's shards, the one-step generator's initialisation, G/D steps, the sampling API."""

import os

import numpy as np
import pytest
import torch

from conftest import make_task

from pagoda import decoder, edm, encode, loop, sampling
from pagoda.checkpoints import load_network
from pagoda.data import load_dataset


def test_encoding_plan_pairs_images_with_their_flips():
    idx, flip = encode.encoding_plan(100, 5, seed=3)
    assert len(idx) == 10 and np.array_equal(idx[0::2], idx[1::2])
    assert flip.tolist() == [False, True] * 5
    with pytest.raises(ValueError, match="training set has"):
        encode.encoding_plan(10, 11)


def test_shard_jobs_in_separate_processes_equal_one_run(tiny_teacher, tiny_data, tmp_path):
    """The workflow's encode_shard jobs: each process writes its shards; together they equal one run."""
    import json
    import subprocess
    import sys
    kw = dict(teacher_path=str(tiny_teacher), data_dir=str(tiny_data), resolution=8, n_images=10, num_points=5,
              shard_size=6, device="cpu")
    assert encode.num_shards(10, 6) == 4
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
    torch.testing.assert_close(decoder.generate(G, z, y), raw)
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
    labels = torch.tensor([0, 1, 2, 3, 4])
    for path, nfe in ((tmp_path / "G.pt", 1), (tiny_teacher, 11)):
        sample, meta = sampling.load_sampler(path, num_points=6, batch_size=2)
        x, n = sample(labels, sampling.seeds_for(5, 0))
        assert x.shape == (5, 1, 8, 8) and n == nfe and x.abs().max() <= 1
        again, _ = sample(labels, sampling.seeds_for(5, 0))
        assert torch.equal(x, again)  # seeded per image
    assert meta["kind"] == "teacher"
