"""One training-loop design for every stage: seeded, resumable, DDP-ready, with EMA and a metrics log.

A stage supplies a *task*: an object with
    modules()                       -> {name: nn.Module} whose state is checkpointed
    optimizers()                    -> {name: torch.optim.Optimizer}
    step(step, generator)           -> {metric: float}, one optimisation step
and optionally `frozen()` -> {module name: parameter names not to checkpoint} and
`extra_state()` / `load_extra_state(d)`. All randomness of a step must come from the
`generator` it is given, which is seeded from (seed, step): a run resumed from a checkpoint then
follows exactly the trajectory of an uninterrupted run.
"""

import contextlib
import json
import os
import pathlib
import platform
import time

import torch
import torch.distributed as dist
from tqdm import tqdm


# ----------------------------------------------------------------------------
# Devices and processes.

def resolve_device(device="auto"):
    """'auto' -> this rank's CUDA device if there is one, else CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {n} thread{'s' if n > 1 else ''})"


def init_distributed(device):
    """Join the torchrun process group if WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank_slice(n):
    """This rank's contiguous share of a global batch of n items (n must divide evenly)."""
    ws = world_size()
    if n % ws:
        raise ValueError(f"global batch {n} does not divide over {ws} processes")
    k = n // ws
    return slice(rank() * k, (rank() + 1) * k)


def step_generator(seed, step, device="cpu"):
    """The generator all of one step's randomness comes from (identical on every rank)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) * 1_000_003 + int(step))
    return g


def average_gradients(parameters):
    """All-reduce mean of gradients over ranks (a no-op in a single process)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def broadcast_buffers(modules):
    """Give every rank rank 0's buffers (batch-norm statistics of D), as DDP's broadcast_buffers does.

    Parameters stay identical through averaged gradients; buffers updated from each rank's own
    slice of the batch would drift apart.
    """
    if world_size() == 1:
        return
    for m in modules.values():
        for b in m.buffers():
            dist.broadcast(b, src=0)


@torch.no_grad()
def check_ranks_in_sync(modules):
    """Raise if any rank's weights differ from rank 0's: DDP replicas must stay identical.

    Compares per-tensor checksums (sum and sum of squares in float64), which any divergence changes.
    """
    if world_size() == 1:
        return
    sums = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()])
                        for m in modules.values() for p in m.state_dict().values() if p.is_floating_point()])
    ref = sums.clone()
    dist.broadcast(ref, src=0)
    differs = (sums != ref).any().to(torch.int32).reshape(1)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    if differs.item():
        raise RuntimeError("DDP ranks hold different weights: a rank's update diverged from rank 0's")


def mean_over_ranks(x):
    """Mean of a tensor over ranks (for logging global-batch metrics)."""
    if world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= world_size()
    return x


# ----------------------------------------------------------------------------
# EMA.

@torch.no_grad()
def ema_update(ema, net, *, decay, step):
    """theta_ema <- beta theta_ema + (1 - beta) theta, beta = min(decay, (1 + step) / (10 + step)).

    The warm-up lets short runs average over their recent steps instead of the initial weights; long
    runs reach `decay` (0.999 in the paper) after ~10k steps. Only parameters that require grad in `net`
    are averaged (frozen ones are identical by construction); buffers are copied.
    """
    beta = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        if p.requires_grad:
            p_ema.lerp_(p.detach(), 1 - beta)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)
    return beta


# ----------------------------------------------------------------------------
# Checkpoints.

def atomic_save(obj, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def checkpoint_paths(run_dir):
    return sorted(pathlib.Path(run_dir, "checkpoints").glob("step-*.pt"))


def latest_checkpoint(run_dir):
    paths = checkpoint_paths(run_dir)
    return paths[-1] if paths else None


def _frozen(task):
    """{module name: names of its frozen parameters}; frozen weights are saved once by the stage."""
    return task.frozen() if hasattr(task, "frozen") else {}


def save_training_state(task, run_dir, step, *, keep=2):
    frozen = _frozen(task)
    state = {
        "step": step,
        "modules": {k: {n: v for n, v in m.state_dict().items() if n not in frozen.get(k, ())}
                    for k, m in task.modules().items()},
        "optimizers": {k: o.state_dict() for k, o in task.optimizers().items()},
        "extra": task.extra_state() if hasattr(task, "extra_state") else None,
    }
    atomic_save(state, pathlib.Path(run_dir, "checkpoints", f"step-{step:08d}.pt"))
    for old in checkpoint_paths(run_dir)[:-keep]:
        old.unlink()


def load_training_state(task, path, device):
    state = torch.load(path, map_location=device, weights_only=False)
    frozen = _frozen(task)
    for k, m in task.modules().items():
        missing, unexpected = m.load_state_dict(state["modules"][k], strict=False)
        missing = sorted(set(missing) - set(frozen.get(k, ())))
        if unexpected or missing:
            raise RuntimeError(f"checkpoint {path} does not match module {k!r}: "
                               f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, o in task.optimizers().items():
        o.load_state_dict(state["optimizers"][k])
    if state.get("extra") is not None and hasattr(task, "load_extra_state"):
        task.load_extra_state(state["extra"])
    return state["step"]


# ----------------------------------------------------------------------------
# Run folders.

def file_fingerprint(path):
    """Identity of an input file for resumption checks: (size, mtime)."""
    st = pathlib.Path(path).stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def prepare_run_dir(run_dir, fingerprint, *, stale=("checkpoints", "snapshots", "metrics.jsonl", "timing.json")):
    """Keep `run_dir`'s partial results only if they were made with the same `fingerprint`.

    The fingerprint (JSON-serialisable: hyperparameters and input-file identities) is stored in
    run_dir/run.json. When it differs from the stored one, the `stale` entries are removed, so a
    changed configuration or a retrained input starts afresh while a killed run resumes.
    Returns True when old results were discarded.
    """
    import shutil
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.json"
    fingerprint = json.loads(json.dumps(fingerprint))  # normalise tuples, paths
    discarded = False
    if path.exists() and json.loads(path.read_text()) != fingerprint:
        for name in stale:
            for p in run_dir.glob(name):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        discarded = True
    if rank() == 0:
        atomic_write_json(fingerprint, path)
    return discarded


# ----------------------------------------------------------------------------
# The loop.

def _read_metrics(path, upto):
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto]


def snapshot_paths(run_dir):
    return sorted(pathlib.Path(run_dir, "snapshots").glob("step-*.pt"))


def run(task, *, run_dir, total_steps, seed=0, checkpoint_every=500, snapshot_steps=(), log_every=None,
        device="cpu", progress=True, desc="train", max_steps_this_call=None):
    """Train `task` up to `total_steps`, resuming from the latest checkpoint in `run_dir`.

    Callers check `prepare_run_dir` first so that only checkpoints of the same configuration resume.
    Writes run_dir/metrics.jsonl (one JSON row per `log_every` steps, default ~100 rows per run,
    step-indexed so a resumed run rewrites the rows after its checkpoint), run_dir/checkpoints/step-*.pt (every `checkpoint_every`
    steps and at the end) and run_dir/timing.json (wall-clock seconds summed over all attempts). At each
    step in `snapshot_steps`, `task.save_snapshot(path, step=step)` also writes run_dir/snapshots/step-*.pt (all kept: a
    learning curve). `max_steps_this_call` stops early (to test resumption). Returns the
    list of metric rows.
    """
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_every = log_every or max(1, total_steps // 100)
    start = 0
    usable = [p for p in checkpoint_paths(run_dir) if int(p.stem.split("-")[1]) <= total_steps]
    if usable:  # (a run with fewer total steps than a previous one restarts from an earlier checkpoint)
        start = load_training_state(task, usable[-1], device)
    metrics_path = run_dir / "metrics.jsonl"
    rows = _read_metrics(metrics_path, start)
    timing_path = run_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if (timing_path.exists() and start > 0) else \
        {"seconds": 0.0, "attempts": 0}
    timing["attempts"] += 1
    timing["device"] = device_name(device)
    is_main = rank() == 0
    if is_main:
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stop = total_steps if max_steps_this_call is None else min(total_steps, start + max_steps_this_call)
    bar = tqdm(total=total_steps, initial=start, desc=desc, disable=not (progress and is_main),
               mininterval=5.0, dynamic_ncols=True)
    t_last = time.time()
    with open(metrics_path, "a") if is_main else contextlib.nullcontext() as log:
        for step in range(start, stop):
            m = task.step(step, step_generator(seed, step, device))
            broadcast_buffers(task.modules())
            if (step + 1) % log_every == 0 or step + 1 == total_steps:
                row = {"step": step + 1, **{k: float(v) for k, v in m.items()}}
                rows.append(row)
                if is_main:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(m.items())[:3]}, refresh=False)
            bar.update(1)
            # Before the checkpoint: a run killed in between redoes this step and rewrites the snapshot.
            if step + 1 in snapshot_steps and is_main:
                task.save_snapshot(pathlib.Path(run_dir, "snapshots", f"step-{step + 1:08d}.pt"), step=step + 1)
            if (step + 1) % checkpoint_every == 0 or step + 1 == stop:
                now = time.time()
                timing["seconds"] += now - t_last
                t_last = now
                check_ranks_in_sync(task.modules())
                if is_main:
                    save_training_state(task, run_dir, step + 1)
                    atomic_write_json(timing, timing_path)
                if dist.is_initialized():
                    dist.barrier()
    bar.close()
    return rows


def atomic_write_json(obj, path):
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_timing(run_dir):
    """{'seconds', 'attempts', 'device'} as written by `run` (zeros before the first checkpoint)."""
    path = pathlib.Path(run_dir) / "timing.json"
    if not path.exists():
        return {"seconds": 0.0, "attempts": 0, "device": None}
    return json.loads(path.read_text())
