"""The teacher's training loop: it learns, it resumes exactly after a crash, and it runs under DDP."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from pagoda import data, edm, loop
from pagoda.checkpoints import load_network
from pagoda.networks import UNet, UNetConfig
from pagoda.teacher import TeacherTask, train_teacher

TINY = {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1}


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    """Real Fashion-MNIST at 8x8 (the Debian package; CI installs it)."""
    out = tmp_path_factory.mktemp("data")
    data.build_dataset(out, resolutions=[8])
    return out


def fixed_batch_loss(net, images, labels):
    g = torch.Generator().manual_seed(123)
    x = data.to_model(images[:256])
    sigma = edm.sample_training_sigma(256, generator=g)
    noise = torch.randn(x.shape, generator=g)
    with torch.no_grad():
        return edm.edm_loss(net, x, torch.as_tensor(labels[:256]), sigma=sigma, noise=noise).mean().item()


def test_short_training_lowers_the_loss(real_data, tmp_path):
    images, labels, _ = data.load_dataset(real_data, "train", 8)
    torch.manual_seed(0)
    cfg = UNetConfig(**{**TINY, "channel_mult": (1, 2)})
    before = fixed_batch_loss(UNet(cfg), images, labels)
    summary = train_teacher(data_dir=real_data, resolution=8, run_dir=tmp_path / "run", out_path=tmp_path / "t.pt",
                            network=TINY, total_steps=60, batch_size=64, lr=2e-3, lr_warmup_steps=10,
                            checkpoint_every=30, progress=False, device="cpu")
    net, meta = load_network(tmp_path / "t.pt", which="net", expect_kind="teacher")
    after = fixed_batch_loss(net, images, labels)
    assert summary["steps"] == meta["steps"] == 60
    assert after < 0.7 * before
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 61))  # ~100 rows per run: every step here


def test_snapshots_are_the_ema_of_a_run_stopped_at_their_step(real_data, tmp_path):
    kw = dict(data_dir=real_data, resolution=8, network=TINY, batch_size=16, lr=2e-3, lr_warmup_steps=2,
              checkpoint_every=100, progress=False, device="cpu")
    train_teacher(run_dir=tmp_path / "long", out_path=tmp_path / "long.pt", total_steps=7, snapshot_steps=[3, 5], **kw)
    assert sorted(p.name for p in (tmp_path / "long" / "snapshots").iterdir()) == ["step-00000003.pt", "step-00000005.pt"]
    assert json.loads((tmp_path / "long" / "run.json").read_text())["snapshot_steps"] == [3, 5]
    train_teacher(run_dir=tmp_path / "short", out_path=tmp_path / "short.pt", total_steps=5, **kw)
    snap, meta = load_network(tmp_path / "long" / "snapshots" / "step-00000005.pt", expect_kind="teacher")
    ema, _ = load_network(tmp_path / "short.pt", which="ema", expect_kind="teacher")
    assert meta["steps"] == 5 and not (tmp_path / "short" / "snapshots").exists()
    for (k, a), b in zip(snap.state_dict().items(), ema.state_dict().values()):
        assert torch.equal(a, b), k
    final, _ = load_network(tmp_path / "long.pt", which="ema", expect_kind="teacher")
    assert any(not torch.equal(a, b) for a, b in zip(final.state_dict().values(), snap.state_dict().values()))


class CrashAt:
    """Wraps a task and raises in the middle of a run, as a killed job would stop."""

    def __init__(self, task, step):
        self.task, self.crash_step = task, step

    def modules(self):
        return self.task.modules()

    def optimizers(self):
        return self.task.optimizers()

    def step(self, step, generator):
        if step == self.crash_step:
            raise KeyboardInterrupt("killed")
        return self.task.step(step, generator)


def make_task(images, labels, seed=0):
    torch.manual_seed(seed)
    return TeacherTask(UNet(UNetConfig(**{**TINY, "channel_mult": (1, 2)})), images, labels, batch_size=32,
                       lr=2e-3, lr_warmup_steps=5)


def test_killed_and_resumed_run_equals_uninterrupted_run(real_data, tmp_path):
    images, labels, _ = data.load_dataset(real_data, "train", 8)
    straight = make_task(images, labels)
    loop.run(straight, run_dir=tmp_path / "a", total_steps=24, checkpoint_every=8, progress=False)

    crashing = make_task(images, labels)
    with pytest.raises(KeyboardInterrupt):
        loop.run(CrashAt(crashing, 13), run_dir=tmp_path / "b", total_steps=24, checkpoint_every=8, progress=False)
    assert [p.name for p in loop.checkpoint_paths(tmp_path / "b")] == ["step-00000008.pt"]
    resumed = make_task(images, labels, seed=99)  # fresh process: different initial weights, all overwritten
    loop.run(resumed, run_dir=tmp_path / "b", total_steps=24, checkpoint_every=8, progress=False)

    for name in ("net", "ema"):
        a, b = straight.modules()[name].state_dict(), resumed.modules()[name].state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    ta = json.loads((tmp_path / "b" / "timing.json").read_text())
    assert ta["attempts"] == 2 and ta["seconds"] > 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # rows after the crash were rewritten, not duplicated


def test_ema_update_follows_its_formula():
    net, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    ema.load_state_dict(net.state_dict())
    with torch.no_grad():
        net.weight.add_(1.0)
    before = ema.weight.clone()
    beta = loop.ema_update(ema, net, decay=0.999, step=0)
    assert beta == pytest.approx(0.1)  # warm-up: min(0.999, 1/10)
    torch.testing.assert_close(ema.weight, beta * before + (1 - beta) * net.weight)
    assert loop.ema_update(ema, net, decay=0.999, step=10 ** 6) == pytest.approx(0.999)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grads(task):
    return {n: p.grad.clone() for n, p in task.net.named_parameters()}


def _ddp_worker(rank, world, port, data_dir, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    loop.init_distributed(torch.device("cpu"))
    images, labels, _ = data.load_dataset(data_dir, "train", 8)
    task = make_task(images, labels)
    task.gradients(0, loop.step_generator(0, 0))
    grads = _grads(task)
    loop.run(task, run_dir=out_dir / "ddp", total_steps=6, checkpoint_every=3, progress=False)
    torch.save({"grads": grads, "weights": task.net.state_dict()}, out_dir / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_with_gloo_matches_a_single_process(real_data, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), real_data, tmp_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    images, labels, _ = data.load_dataset(real_data, "train", 8)
    single = make_task(images, labels)
    init = {k: v.clone() for k, v in single.net.state_dict().items()}
    single.gradients(0, loop.step_generator(0, 0))
    grads = _grads(single)
    loop.run(single, run_dir=tmp_path / "single", total_steps=6, checkpoint_every=3, progress=False)
    # Each rank holds half of the global batch; after the all-reduce both hold the full-batch mean gradient.
    for k, g in grads.items():
        assert torch.equal(r0["grads"][k], r1["grads"][k]), k
        torch.testing.assert_close(r0["grads"][k], g, rtol=1e-4, atol=1e-7)
    # Ranks stay bit-identical; Adam amplifies rounding in near-zero gradients, so the comparison with the
    # single process is relative to how far the weights moved.
    moved = max((v - init[k]).abs().max().item() for k, v in single.net.state_dict().items())
    for k, v in single.net.state_dict().items():
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
        assert (r0["weights"][k] - v).abs().max().item() < 0.05 * moved, k


def test_changed_configuration_restarts_instead_of_resuming(real_data, tmp_path):
    kw = dict(data_dir=real_data, resolution=8, run_dir=tmp_path / "run", out_path=tmp_path / "t.pt", network=TINY,
              batch_size=16, checkpoint_every=2, progress=False, device="cpu")
    train_teacher(total_steps=4, lr=1e-3, **kw)
    assert json.loads((tmp_path / "run" / "timing.json").read_text())["attempts"] == 1
    train_teacher(total_steps=6, lr=1e-3, **kw)  # more steps, same configuration: continues from step 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "run" / "timing.json").read_text())["attempts"] == 2
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    train_teacher(total_steps=6, lr=2e-3, **kw)  # another learning rate: starts again from scratch
    assert json.loads((tmp_path / "run" / "timing.json").read_text())["attempts"] == 1
    assert [p.name for p in loop.checkpoint_paths(tmp_path / "run")] == ["step-00000004.pt", "step-00000006.pt"]
