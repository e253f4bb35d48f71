"""The training loop on a toy task whose updates and metrics can be computed by hand.

The toy task fits w (2 numbers) to a batch of 4 standard-normal points drawn from the step's generator,
by SGD with momentum on 0.5 * mean_i |w - z_i|^2: its metrics, checkpoints and resumption are known exactly.
"""

import json
import os
import platform
import re
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pagoda import loop

LR, MOMENTUM, BATCH = 0.1, 0.9, 4


class ToyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        self.scale = torch.nn.Parameter(torch.tensor([5.0]), requires_grad=False)  # frozen, saved by the stage
        self.register_buffer("last_mean", torch.zeros(2))  # this rank's batch mean: a rank-dependent buffer


class ToyTask:
    """SGD with momentum on 0.5 * mean_i |w - z_i|^2, z ~ N(0, 1) from the step's generator."""

    def __init__(self, clock=None, by_hand=False):
        self.net = ToyNet()
        # by_hand: the same update without torch.optim (whose import costs a spawned process seconds)
        self.opt = None if by_hand else torch.optim.SGD([self.net.w], lr=LR, momentum=MOMENTUM)
        self.velocity = torch.zeros(2)
        self.z_sum = np.zeros(2)  # extra state (a numpy array: checkpoints are not weights-only)
        self.calls = []
        self.clock = clock

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {} if self.opt is None else {"opt": self.opt}

    def frozen(self):
        return {"net": ["scale"]}

    def extra_state(self):
        return {"z_sum": self.z_sum.copy()}

    def load_extra_state(self, d):
        self.z_sum = d["z_sum"].copy()

    def step(self, step, generator):
        self.calls.append(step)
        if self.clock is not None:
            self.clock.now += 1.0  # every step takes one (fake) second
        z = torch.randn(BATCH, 2, generator=generator)[loop.rank_slice(BATCH)]
        self.net.w.grad = None
        loss = 0.5 * (self.net.w - z).square().sum(1).mean()
        loss.backward()
        loop.average_gradients([self.net.w, self.net.scale])
        if self.opt is not None:
            self.opt.step()
        else:
            with torch.no_grad():
                self.velocity = MOMENTUM * self.velocity + self.net.w.grad
                self.net.w -= LR * self.velocity
        self.net.last_mean.copy_(z.mean(0))
        self.z_sum += z.sum(0).numpy()
        return {"loss": loop.mean_over_ranks(loss.detach()), "w0": self.net.w[0].detach(), "step_arg": step,
                "z00": z[0, 0]}


def expected_rows(steps, seed=0, log=lambda s: True):
    """The toy task's metric rows, computed directly from the update rule."""
    w, v, rows = torch.tensor([1.0, -2.0]), None, []
    for s in range(steps):
        z = torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(seed * 1_000_003 + s))
        loss = 0.5 * (w - z).square().sum(1).mean()
        grad = w - z.mean(0)
        v = grad if v is None else MOMENTUM * v + grad
        w = w - LR * v
        if log(s + 1):
            rows.append({"step": s + 1, "loss": loss.item(), "w0": w[0].item(), "step_arg": float(s),
                         "z00": z[0, 0].item()})
    return rows, w


def assert_rows(rows, expected):
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for r, e in zip(rows, expected):
        assert list(r) == list(e)
        assert r == pytest.approx(e, rel=1e-5, abs=1e-6)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(loop.time, "time", c.time)
    return c


# ----------------------------------------------------------------------------
# Devices and processes.

def test_resolve_device_picks_this_ranks_cuda_device_or_the_cpu(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert loop.resolve_device("cpu") == torch.device("cpu")
    assert loop.resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loop.resolve_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # torch.device needs no GPU
    assert loop.resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert loop.resolve_device() == torch.device("cuda", 1)


def test_device_name_describes_the_cpu_and_its_threads_or_the_gpu(monkeypatch):
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert loop.device_name("cpu") == "cpu (riscv64, 1 thread)"
    monkeypatch.setattr(platform, "processor", lambda: "Zen 4")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert loop.device_name(torch.device("cpu")) == "cpu (Zen 4, 2 threads)"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: f"GPU at {d}")
    assert loop.device_name("cuda:1") == "GPU at cuda:1"


def test_init_distributed_joins_only_multi_process_runs(monkeypatch):
    """NCCL with the rank's device set on CUDA, gloo on CPU; nothing for one process or when joined already."""
    calls = []
    monkeypatch.setattr(loop.dist, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    loop.init_distributed(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    loop.init_distributed(torch.device("cuda", 1))
    assert calls == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    loop.init_distributed(torch.device("cpu"))
    assert calls == ["gloo"]
    loop.init_distributed(torch.device("cuda", 1))
    assert calls == ["gloo", "nccl", torch.device("cuda", 1)]
    monkeypatch.setattr(loop.dist, "is_initialized", lambda: True)
    loop.init_distributed(torch.device("cpu"))
    assert len(calls) == 3


def test_rank_slice_gives_each_rank_its_contiguous_share(monkeypatch):
    assert (loop.rank(), loop.world_size()) == (0, 1)
    assert loop.rank_slice(6) == slice(0, 6)
    monkeypatch.setattr(loop, "world_size", lambda: 3)
    for r, expected in enumerate([slice(0, 4), slice(4, 8), slice(8, 12)]):
        monkeypatch.setattr(loop, "rank", lambda r=r: r)
        s = loop.rank_slice(12)
        assert s == expected and type(s.start) is int and type(s.stop) is int
    with pytest.raises(ValueError, match=r"^global batch 10 does not divide over 3 processes$"):
        loop.rank_slice(10)


def test_step_generator_is_seeded_from_seed_and_step():
    draw = lambda g: torch.randn(3, generator=g)  # noqa: E731
    for seed, step in [(0, 0), (2, 5), (1, 0)]:
        reference = torch.Generator().manual_seed(seed * 1_000_003 + step)
        assert torch.equal(draw(loop.step_generator(seed, step)), draw(reference))
    assert loop.step_generator(0, 0, "cpu").device == torch.device("cpu")


def test_distributed_helpers_are_no_ops_in_one_process():
    net = torch.nn.BatchNorm1d(2)
    net(torch.randn(5, 2)).sum().backward()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [p.grad.clone() for p in net.parameters()]
    loop.average_gradients(list(net.parameters()))
    loop.broadcast_buffers({"net": net})
    loop.check_ranks_in_sync({"net": net})
    x = torch.tensor([1.0, 3.0])
    assert torch.equal(loop.mean_over_ranks(x), torch.tensor([1.0, 3.0]))
    for g, p in zip(grads, net.parameters()):
        assert torch.equal(p.grad, g)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


# ----------------------------------------------------------------------------
# EMA.

def test_ema_update_averages_trainable_parameters_and_copies_buffers():
    net, ema = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([3.0, -1.0]))
        net.bias.copy_(torch.tensor([2.0, 4.0]))
        net.running_mean.copy_(torch.tensor([7.0, 8.0]))
    net.bias.requires_grad_(False)  # frozen: the EMA keeps its own copy
    # Warm-up: beta = (1 + 5) / (10 + 5) = 0.4 < decay; w_ema = 0.4 * 1 + 0.6 * w.
    assert loop.ema_update(ema, net, decay=0.999, step=5) == pytest.approx(0.4)
    torch.testing.assert_close(ema.weight, torch.tensor([0.4 + 0.6 * 3.0, 0.4 - 0.6 * 1.0]))
    assert torch.equal(ema.bias, torch.zeros(2))
    assert torch.equal(ema.running_mean, torch.tensor([7.0, 8.0]))
    # Long runs: beta = decay.
    assert loop.ema_update(ema, net, decay=0.5, step=100) == 0.5
    torch.testing.assert_close(ema.weight, torch.tensor([0.5 * 2.2 + 0.5 * 3.0, 0.5 * -0.2 - 0.5]))


# ----------------------------------------------------------------------------
# Checkpoints.

def test_atomic_save_creates_folders_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a" / "b" / "x.pt"
    loop.atomic_save({"v": torch.arange(3)}, path)
    loop.atomic_save({"v": torch.arange(4)}, path)  # overwrites, folder exists
    assert torch.equal(torch.load(path)["v"], torch.arange(4))
    assert os.listdir(path.parent) == ["x.pt"]


def test_checkpoint_paths_lists_step_files_in_step_order(tmp_path):
    assert loop.checkpoint_paths(tmp_path) == [] and loop.latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    for name in ["step-00000010.pt", "step-00000002.pt", "step-00000004.pt", "other.pt", "step-00000012.pt.tmp"]:
        (tmp_path / "checkpoints" / name).touch()
    assert [p.name for p in loop.checkpoint_paths(tmp_path)] == ["step-00000002.pt", "step-00000004.pt",
                                                                 "step-00000010.pt"]
    assert loop.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000010.pt"


def test_checkpoint_holds_trainable_weights_optimizer_state_and_extra_state(tmp_path):
    task = ToyTask()
    task.step(0, loop.step_generator(0, 0))
    for step in (3, 7, 12):
        loop.save_training_state(task, tmp_path, step)
    assert [p.name for p in loop.checkpoint_paths(tmp_path)] == ["step-00000007.pt", "step-00000012.pt"]
    loop.save_training_state(task, tmp_path, 13, keep=3)
    assert len(loop.checkpoint_paths(tmp_path)) == 3
    state = torch.load(tmp_path / "checkpoints" / "step-00000013.pt", weights_only=False)
    assert sorted(state) == ["extra", "modules", "optimizers", "step"] and state["step"] == 13
    assert sorted(state["modules"]["net"]) == ["last_mean", "w"]  # not the frozen `scale`
    assert torch.equal(state["modules"]["net"]["w"], task.net.w.detach())
    momentum = state["optimizers"]["opt"]["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, task.opt.state[task.net.w]["momentum_buffer"])
    np.testing.assert_array_equal(state["extra"]["z_sum"], task.z_sum)

    fresh = ToyTask()
    assert loop.load_training_state(fresh, tmp_path / "checkpoints" / "step-00000013.pt", "cpu") == 13
    assert torch.equal(fresh.net.w, task.net.w) and torch.equal(fresh.net.last_mean, task.net.last_mean)
    assert torch.equal(fresh.opt.state[fresh.net.w]["momentum_buffer"], momentum)
    np.testing.assert_array_equal(fresh.z_sum, task.z_sum)
    assert fresh.net.scale.item() == 5.0


class Plain:
    """A task without frozen parameters or extra state, around one module."""

    def __init__(self, module):
        self.module, self.loaded = module, []

    def modules(self):
        return {"net": self.module}

    def optimizers(self):
        return {}

    def load_extra_state(self, d):  # called only when the checkpoint has extra state
        self.loaded.append(d)

    def step(self, step, generator):
        return {"square": step ** 2}


def test_loading_a_mismatched_checkpoint_names_the_module_and_the_keys(tmp_path):
    deep = lambda: torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(4)])  # noqa: E731
    loop.save_training_state(Plain(torch.nn.Linear(1, 1)), tmp_path / "a", 1)
    loop.save_training_state(Plain(deep()), tmp_path / "b", 1)
    a, b = loop.latest_checkpoint(tmp_path / "a"), loop.latest_checkpoint(tmp_path / "b")
    assert sorted(torch.load(a, weights_only=False)["modules"]["net"]) == ["bias", "weight"]
    missing = "['0.bias', '0.weight', '1.bias', '1.weight', '2.bias']"
    with pytest.raises(RuntimeError, match=rf"^checkpoint {re.escape(str(a))} does not match module 'net': missing "
                                           rf"{re.escape(missing)}, unexpected \['weight', 'bias'\]$"):
        loop.load_training_state(Plain(deep()), a, "cpu")
    unexpected = "['0.weight', '0.bias', '1.weight', '1.bias', '2.weight']"
    with pytest.raises(RuntimeError, match=rf"^checkpoint {re.escape(str(b))} does not match module 'net': missing "
                                           rf"\['bias', 'weight'\], unexpected {re.escape(unexpected)}$"):
        loop.load_training_state(Plain(torch.nn.Linear(1, 1)), b, "cpu")
    one_more = Plain(torch.nn.Linear(1, 1))
    one_more.module.register_buffer("extra_buffer", torch.zeros(1))  # missing only
    with pytest.raises(RuntimeError, match=r"missing \['extra_buffer'\], unexpected \[\]$"):
        loop.load_training_state(one_more, a, "cpu")
    same = Plain(torch.nn.Linear(1, 1))
    assert loop.load_training_state(same, a, "cpu") == 1
    assert same.loaded == []  # no extra state saved, none loaded


# ----------------------------------------------------------------------------
# Run folders.

def test_file_fingerprint_is_path_size_and_mtime(tmp_path):
    path = tmp_path / "input.bin"
    path.write_bytes(b"12345")
    os.utime(path, ns=(1_700_000_000_123_456_789, 1_600_000_000_987_654_321))
    assert loop.file_fingerprint(path) == {"path": str(path), "size": 5, "mtime_ns": 1_600_000_000_987_654_321}


def make_results(run_dir):
    for name in ("checkpoints/step-00000002.pt", "snapshots/step-00000002.pt", "metrics.jsonl", "timing.json",
                 "out.pt", "fig.png"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("x")


def listing(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))


def test_prepare_run_dir_keeps_results_of_the_same_fingerprint_only(tmp_path):
    run_dir = tmp_path / "a" / "run"
    fp = {"lr": 1e-3, "shape": (1, 2), "input": {"path": "x", "size": 3}}
    assert loop.prepare_run_dir(run_dir, fp) is False
    assert json.loads((run_dir / "run.json").read_text()) == {"lr": 1e-3, "shape": [1, 2],
                                                              "input": {"path": "x", "size": 3}}
    make_results(run_dir)
    kept = listing(run_dir)
    assert loop.prepare_run_dir(run_dir, fp) is False  # a tuple and its JSON list are the same fingerprint
    assert listing(run_dir) == kept
    assert loop.prepare_run_dir(run_dir, {**fp, "lr": 2e-3}) is True
    assert listing(run_dir) == ["fig.png", "out.pt", "run.json"]
    assert json.loads((run_dir / "run.json").read_text())["lr"] == 2e-3
    make_results(run_dir)
    assert loop.prepare_run_dir(run_dir, fp, stale=("*.png",)) is True
    assert listing(run_dir) == sorted(set(kept) - {"fig.png"})


def test_prepare_run_dir_writes_the_fingerprint_on_rank_0_only(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "rank", lambda: 1)
    assert loop.prepare_run_dir(tmp_path / "run", {"a": 1}) is False
    assert listing(tmp_path / "run") == []


# ----------------------------------------------------------------------------
# The loop.

def test_run_logs_the_hand_computed_metrics_and_keeps_the_last_checkpoints(tmp_path, clock):
    task = ToyTask(clock)
    run_dir = tmp_path / "runs" / "run"  # made with its parents
    rows = loop.run(task, run_dir=run_dir, total_steps=7, seed=2, checkpoint_every=2, log_every=3, progress=False)
    expected, w = expected_rows(7, seed=2, log=lambda s: s in (3, 6, 7))  # every 3rd and the last
    assert_rows(rows, expected)
    assert_rows(read_jsonl(run_dir / "metrics.jsonl"), expected)
    torch.testing.assert_close(task.net.w.detach(), w)
    assert task.calls == list(range(7))
    assert [p.name for p in loop.checkpoint_paths(run_dir)] == ["step-00000006.pt", "step-00000007.pt"]
    assert loop.read_timing(run_dir) == {"seconds": 7.0, "attempts": 1, "device": loop.device_name("cpu")}


def test_run_checks_that_the_ranks_agree_at_every_checkpoint_before_saving_it(tmp_path, monkeypatch):
    """The DDP weight-sync check (tests/test_launch.py) is wired into the loop: at every checkpoint, on every
    module of the task, before the checkpoint is written, so that a diverged replica is never saved."""
    task, seen = ToyTask(), []

    def check(modules):
        seen.append((task.calls[-1] + 1, modules, len(loop.checkpoint_paths(tmp_path / "run"))))
    monkeypatch.setattr(loop, "check_ranks_in_sync", check)
    loop.run(task, run_dir=tmp_path / "run", total_steps=5, seed=0, checkpoint_every=2, progress=False)
    assert [(step, saved) for step, _, saved in seen] == [(2, 0), (4, 1), (5, 2)]  # steps 2, 4 and the last
    assert all(modules == {"net": task.net} for _, modules, _ in seen)


class SnapshotTask(ToyTask):
    """The toy task, writing its weight vector as a snapshot."""

    def save_snapshot(self, path, *, step):
        assert step == self.calls[-1] + 1  # the loop names the step the weights are after
        self.snapshots.append(step)
        loop.atomic_save(self.net.w.detach().clone(), path)


def test_snapshots_are_taken_at_the_given_steps_kept_and_rewritten_by_a_resumed_run(tmp_path):
    """A snapshot holds the weights after its step; a run killed after a snapshot but before the next
    checkpoint redoes the step and writes the same snapshot again."""
    kw = dict(total_steps=8, seed=3, checkpoint_every=4, snapshot_steps=(2, 5, 8), progress=False)
    straight = SnapshotTask()
    straight.snapshots = []
    loop.run(straight, run_dir=tmp_path / "a", **kw)
    assert straight.snapshots == [2, 5, 8]
    assert [p.name for p in loop.snapshot_paths(tmp_path / "a")] == ["step-00000002.pt", "step-00000005.pt",
                                                                      "step-00000008.pt"]
    for steps in (2, 5, 8):
        torch.testing.assert_close(torch.load(tmp_path / "a" / "snapshots" / f"step-{steps:08d}.pt"),
                                   expected_rows(steps, seed=3)[1])
    first = SnapshotTask()
    first.snapshots = []
    loop.run(first, run_dir=tmp_path / "b", max_steps_this_call=6, **kw)  # checkpoints at 4 and 6
    (tmp_path / "b" / "checkpoints" / "step-00000006.pt").unlink()  # killed after the snapshot at 5, before 6
    resumed = SnapshotTask()
    resumed.snapshots = []
    loop.run(resumed, run_dir=tmp_path / "b", **kw)
    assert (first.snapshots, resumed.snapshots) == ([2, 5], [5, 8])
    for steps in (2, 5, 8):
        name = f"snapshots/step-{steps:08d}.pt"
        torch.testing.assert_close(torch.load(tmp_path / "b" / name), torch.load(tmp_path / "a" / name))


def test_run_defaults_log_about_100_rows_and_checkpoint_every_500_steps(tmp_path):
    """Seed 0, a row every max(1, total // 100) steps and at the end, a checkpoint every 500 steps."""
    rows = loop.run(ToyTask(), run_dir=tmp_path / "5", total_steps=5, progress=False)
    assert_rows(rows, expected_rows(5, seed=0)[0])
    for total, every in [(198, 1), (501, 5)]:
        rows = loop.run(ToyTask(), run_dir=tmp_path / str(total), total_steps=total, progress=False)
        assert [r["step"] for r in rows] == sorted({*range(every, total + 1, every), total})
    assert [p.name for p in loop.checkpoint_paths(tmp_path / "198")] == ["step-00000198.pt"]
    assert [p.name for p in loop.checkpoint_paths(tmp_path / "501")] == ["step-00000500.pt", "step-00000501.pt"]


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, clock):
    kw = dict(total_steps=9, seed=1, checkpoint_every=3, log_every=2, progress=False)
    straight = ToyTask(clock)
    rows = loop.run(straight, run_dir=tmp_path / "a", **kw)
    expected, _ = expected_rows(9, seed=1, log=lambda s: s % 2 == 0 or s == 9)
    assert_rows(rows, expected)
    assert loop.read_timing(tmp_path / "a")["seconds"] == 9.0

    first = ToyTask(clock)
    loop.run(first, run_dir=tmp_path / "b", max_steps_this_call=5, **kw)
    assert first.calls == [0, 1, 2, 3, 4]
    assert [p.name for p in loop.checkpoint_paths(tmp_path / "b")] == ["step-00000003.pt", "step-00000005.pt"]
    # A killed job: the rows after the last checkpoint are in the log, then the next attempt rewrites them.
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 6, "loss": -1.0}) + "\n\n")
    resumed = ToyTask(clock)
    resumed.net.w.data.fill_(7.0)  # another process's initial weights: all overwritten
    rows = loop.run(resumed, run_dir=tmp_path / "b", **kw)
    assert resumed.calls == [5, 6, 7, 8]
    assert_rows(rows, expected)
    assert_rows(read_jsonl(tmp_path / "b" / "metrics.jsonl"), expected)
    assert torch.equal(resumed.net.w, straight.net.w)
    assert torch.equal(resumed.opt.state[resumed.net.w]["momentum_buffer"],
                       straight.opt.state[straight.net.w]["momentum_buffer"])
    np.testing.assert_array_equal(resumed.z_sum, straight.z_sum)
    assert loop.read_timing(tmp_path / "b") == {"seconds": 9.0, "attempts": 2, "device": loop.device_name("cpu")}

    again = ToyTask(clock)  # a finished run does nothing more
    assert_rows(loop.run(again, run_dir=tmp_path / "b", **kw), expected)
    assert again.calls == [] and loop.read_timing(tmp_path / "b")["attempts"] == 2
    beyond = ToyTask(clock)  # a stop beyond the total stops at the total
    loop.run(beyond, run_dir=tmp_path / "c", **{**kw, "total_steps": 4}, max_steps_this_call=10)
    assert beyond.calls == [0, 1, 2, 3]


def test_shorter_run_restarts_from_an_earlier_checkpoint(tmp_path, clock):
    kw = dict(seed=1, checkpoint_every=2, log_every=1, progress=False)
    loop.run(ToyTask(clock), run_dir=tmp_path, total_steps=5, **kw)
    assert [p.name for p in loop.checkpoint_paths(tmp_path)] == ["step-00000004.pt", "step-00000005.pt"]
    shorter = ToyTask(clock)
    rows = loop.run(shorter, run_dir=tmp_path, total_steps=4, **kw)
    assert shorter.calls == [] and [r["step"] for r in rows] == [1, 2, 3, 4]
    expected, w = expected_rows(4, seed=1)
    torch.testing.assert_close(shorter.net.w.detach(), w)


def test_a_fresh_start_ignores_timing_left_without_checkpoints(tmp_path, clock):
    loop.run(ToyTask(clock), run_dir=tmp_path, total_steps=3, progress=False)
    for p in loop.checkpoint_paths(tmp_path):
        p.unlink()
    loop.run(ToyTask(clock), run_dir=tmp_path, total_steps=2, progress=False)
    assert loop.read_timing(tmp_path) == {"seconds": 2.0, "attempts": 1, "device": loop.device_name("cpu")}


def test_resuming_from_the_first_step_adds_to_its_timing(tmp_path, clock):
    loop.run(ToyTask(clock), run_dir=tmp_path, total_steps=3, progress=False, max_steps_this_call=1)
    loop.run(ToyTask(clock), run_dir=tmp_path, total_steps=3, progress=False)
    assert loop.read_timing(tmp_path) == {"seconds": 3.0, "attempts": 2, "device": loop.device_name("cpu")}


def test_progress_bar_shows_steps_description_and_three_metrics(tmp_path, capsys):
    loop.run(ToyTask(), run_dir=tmp_path, total_steps=6, log_every=2, progress=False, max_steps_this_call=2)
    assert capsys.readouterr().err == ""
    loop.run(ToyTask(), run_dir=tmp_path, total_steps=6, log_every=2, desc="toy", max_steps_this_call=3)
    expected, _ = expected_rows(4)  # the postfix of the last logged row (step 4)
    last = capsys.readouterr().err.split("\r")[-1]
    assert last.startswith("toy:") and "5/6" in last
    assert f"loss={expected[-1]['loss']:.4g}, w0={expected[-1]['w0']:.4g}, step_arg=3]" in last
    assert "z00" not in last
    loop.run(ToyTask(), run_dir=tmp_path, total_steps=6, log_every=2)
    assert capsys.readouterr().err.split("\r")[-1].startswith("train: 100%")


def test_a_rank_other_than_0_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "rank", lambda: 1)
    rows = loop.run(Plain(torch.nn.Linear(1, 1)), run_dir=tmp_path, total_steps=3, log_every=1, progress=True)
    assert rows == [{"step": 1, "square": 0.0}, {"step": 2, "square": 1.0}, {"step": 3, "square": 4.0}]
    assert listing(tmp_path) == [] and capsys.readouterr().err == ""


def test_read_timing_before_and_after_the_first_checkpoint(tmp_path):
    assert loop.read_timing(tmp_path) == {"seconds": 0.0, "attempts": 0, "device": None}
    loop.atomic_write_json({"seconds": 1.5, "attempts": 2, "device": "x"}, tmp_path / "timing.json")
    assert loop.read_timing(tmp_path) == {"seconds": 1.5, "attempts": 2, "device": "x"}
    assert os.listdir(tmp_path) == ["timing.json"]


# ----------------------------------------------------------------------------
# Two gloo processes.

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_worker(rank, port, out_dir):
    """One of 2 gloo ranks: the helpers on rank-dependent tensors, then the toy task through `run`."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    loop.init_distributed(torch.device("cpu"))
    loop.init_distributed(torch.device("cpu"))  # joined already: nothing to do
    out = {"rank": loop.rank(), "world_size": loop.world_size(), "slice": loop.rank_slice(6)}
    a, b, c = (torch.nn.Parameter(torch.zeros(n)) for n in (1, 2, 3))
    a.grad, c.grad = torch.full((1,), 1.0 + rank), torch.arange(3.0) * (1 + 2 * rank)  # b has no gradient
    loop.average_gradients([a, b, c])
    loop.average_gradients([b])
    out["grads"] = (a.grad, b.grad, c.grad)
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(3.0 + rank)
    loop.broadcast_buffers({"bn": bn})
    out["buffer"] = bn.running_mean
    x = torch.tensor([2.0, 4.0 * rank])
    out["mean"], out["x"] = loop.mean_over_ranks(x), x
    torch.manual_seed(rank)
    try:
        loop.check_ranks_in_sync({"bn": bn, "lin": torch.nn.Linear(2, 2)})
        out["sync"] = "in sync"
    except RuntimeError as e:
        out["sync"] = str(e)
    task = ToyTask(by_hand=True)
    out["rows"] = loop.run(task, run_dir=out_dir / "run", total_steps=4, seed=3, checkpoint_every=2,
                           log_every=1, progress=False)
    out["w"], out["last_mean"] = task.net.w.detach(), task.net.last_mean
    torch.save(out, out_dir / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_average_gradients_share_buffers_and_follow_one_process(tmp_path):
    mp.spawn(_two_rank_worker, args=(_free_port(), tmp_path), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in (0, 1)]
    assert [(o["rank"], o["world_size"], o["slice"]) for o in r] == [(0, 2, slice(0, 3)), (1, 2, slice(3, 6))]
    for o in r:
        assert torch.equal(o["grads"][0], torch.tensor([1.5])) and o["grads"][1] is None
        assert torch.equal(o["grads"][2], torch.tensor([0.0, 2.0, 4.0]))  # mean of (0, 1, 2) and (0, 3, 6)
        assert torch.equal(o["buffer"], torch.tensor([3.0, 3.0]))  # rank 0's
        assert torch.equal(o["mean"], torch.tensor([2.0, 2.0]))
        assert o["sync"] == "DDP ranks hold different weights: a rank's update diverged from rank 0's"
    assert torch.equal(r[1]["x"], torch.tensor([2.0, 4.0]))  # the input is not reduced in place
    # Each rank holds half of the global batch, the averaged gradients give the one-process trajectory
    # (loss rows are the mean over ranks); only rank 0 writes the log and the checkpoints.
    single = ToyTask()
    rows = loop.run(single, run_dir=tmp_path / "single", total_steps=4, seed=3, checkpoint_every=2, log_every=1,
                    progress=False)
    expected, w = expected_rows(4, seed=3)
    assert_rows(rows, expected)
    for o in r:
        for row, e in zip(o["rows"], expected, strict=True):
            assert row == pytest.approx({**e, "z00": row["z00"]}, rel=1e-5, abs=1e-6)
        torch.testing.assert_close(o["w"], w)
    assert [row["z00"] for row in r[0]["rows"]] == [row["z00"] for row in expected]  # rank 0: the first half
    assert torch.equal(r[1]["last_mean"], r[0]["last_mean"])  # rank 0's batch mean, broadcast
    z = torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(3 * 1_000_003 + 3))
    torch.testing.assert_close(r[0]["last_mean"], z[:2].mean(0))
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl") == r[0]["rows"]
    assert [p.name for p in loop.checkpoint_paths(tmp_path / "run")] == ["step-00000002.pt", "step-00000004.pt"]
