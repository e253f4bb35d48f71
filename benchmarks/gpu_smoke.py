"""GPU smoke benchmark for the paper-scale PaGoDA decoder (ADM-64 network, 64x64, optional growth to 128).

What it measures, on one device and with random weights and random in-memory data (nothing is read
from disk except EfficientNet-lite0's packaged ImageNet weights):

1. Stage-2 training: a randomly initialised ADM-64 teacher (the EDM ImageNet-64 architecture, ~296M
   parameters) is saved with `save_network(kind="teacher")` to a temporary folder and loaded back by
   `init_decoder` exactly as `train_decoder` does; a `DecoderTask` (feature reconstruction distance +
   projected discriminator on a shared EfficientNet-lite0, adaptive GAN weight, RAdam, EMA) is built on
   fake latents/targets. After `--warmup` untimed steps, `--steps` calls of `DecoderTask.step` are
   timed: training images/s (= batch / seconds per step), seconds per step and peak memory.
2. One-step sampling: `edm.generate` with the EMA network under `torch.no_grad` on a batch of
   `--sample-batch`, one untimed call then `--sample-repeats` timed calls: images/s and peak memory.
3. With `--grow-to R`: the Stage-2 decoder is saved (`kind="decoder"`), grown to R by `init_decoder`
   (Stage 3: growth levels appended, most of the base network frozen) and 1-2 are repeated.

Peak memory is `torch.cuda.max_memory_allocated` (reset before each measurement) on CUDA and the
process's peak resident set size so far (`resource.getrusage`, never reset) on CPU.

Run it (paper scale on a GPU; `--amp bf16` wraps the forward passes in bf16 autocast, CUDA only):

    python benchmarks/gpu_smoke.py --device cuda --batch 32 --steps 10 --warmup 3 --grow-to 128 \
        --json results/gpu_smoke.json

or at a tiny size on CPU, to check that it works without a GPU (a few seconds):

    OMP_NUM_THREADS=1 python benchmarks/gpu_smoke.py --tiny --device cpu --steps 2 --warmup 1 \
        --sample-batch 8 --grow-to 32
"""

import argparse
import dataclasses
import gc
import json
import pathlib
import platform
import resource
import sys
import tempfile
import time

import torch

from pagoda import edm, loop
from pagoda.checkpoints import save_network
from pagoda.decoder import DecoderTask, init_decoder
from pagoda.discriminator import ProjectedDiscriminator
from pagoda.features import EfficientNetLite0
from pagoda.losses import ReconstructionDistance
from pagoda.networks import UNet, UNetConfig, num_params

# The EDM ImageNet-64 teacher's ADM network (img_resolution is set from --resolution).
ADM64 = UNetConfig(img_resolution=64, in_channels=3, out_channels=3, model_channels=192, channel_mult=(1, 2, 3, 4),
                   num_res_blocks=3, attention_resolutions=(32, 16, 8), num_head_channels=64, num_classes=1000,
                   dropout=0.0, resblock_updown=True, use_scale_shift_norm=True)
# A small network of the same kind, for checking the script on a CPU.
TINY = UNetConfig(img_resolution=16, in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2),
                  num_res_blocks=1, attention_resolutions=(), num_head_channels=32, num_classes=10,
                  dropout=0.0, resblock_updown=True, use_scale_shift_norm=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="'auto' (default: CUDA if available), 'cuda', 'cuda:1', 'cpu'")
    p.add_argument("--batch", type=int, default=32, help="training batch (default 32)")
    p.add_argument("--steps", type=int, default=10, help="timed DecoderTask.step calls (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (default 3)")
    p.add_argument("--resolution", type=int, default=None, help="teacher/base resolution (default 64; tiny 16)")
    p.add_argument("--grow-to", type=int, default=None,
                   help="also benchmark the decoder grown to this resolution (e.g. 128)")
    p.add_argument("--growth-channels", type=int, default=None,
                   help="channels of the growth levels (default: the base network's top width)")
    p.add_argument("--feature-size", type=int, default=None,
                   help="EfficientNet-lite0 input size of the distance and discriminator (default 224; tiny 32)")
    p.add_argument("--sample-batch", type=int, default=256, help="batch of the one-step sampling timing (default 256)")
    p.add_argument("--sample-repeats", type=int, default=3,
                   help="timed sampling calls after one untimed call (default 3)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="bf16 autocast around the forward passes, CUDA only (default none: fp32, as in training)")
    p.add_argument("--tiny", action="store_true", help="a tiny network and feature size, for CPU checks")
    p.add_argument("--data-size", type=int, default=None,
                   help="fake latent/image pairs held in memory (default: max(batch, 64))")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--workdir", default=None, help="where the temporary checkpoints go (default: system temp)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write all numbers to this JSON file")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------
# Helpers.

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device):
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device):
    """{'peak_mib', 'peak_kind'} (and reserved MiB on CUDA)."""
    if device.type == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20,
                "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2 ** 20,
                "peak_kind": "cuda max_memory_allocated"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10  # bytes on macOS, KiB on Linux
    return {"peak_mib": rss_mib, "peak_kind": "process peak RSS (cumulative)"}


def autocast_forward(module, device, dtype):
    """Run `module`'s forward under autocast and hand float32 back to the (fp32) losses."""
    inner = module.forward

    def forward(*args, **kwargs):
        with torch.autocast(device.type, dtype=dtype):
            out = inner(*args, **kwargs)
        return out.float() if torch.is_tensor(out) and out.is_floating_point() else out

    module.forward = forward
    return module


def fake_data(n, base_res, out_res, channels, num_classes, generator):
    """In-memory stand-ins for load_latents / load_dataset, with their dtypes and shapes."""
    latents = {
        "z": edm.SIGMA_MAX * torch.randn((n, channels, base_res, base_res), generator=generator),
        "labels": torch.randint(max(num_classes, 1), (n,), generator=generator),
        "index": torch.randperm(n, generator=generator),
        "flip": torch.rand(n, generator=generator) < 0.5,
    }
    images = torch.randint(0, 256, (n, channels, out_res, out_res), generator=generator, dtype=torch.uint8)
    labels = torch.randint(max(num_classes, 1), (n,), generator=generator)
    return latents, images, labels


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# ----------------------------------------------------------------------------
# Measurements.

def time_training(task, *, steps, warmup, seed, device):
    reset_peak(device)
    step = 0
    for _ in range(warmup):
        task.step(step, loop.step_generator(seed, step, device))
        step += 1
    sync(device)
    times, metrics = [], {}
    for _ in range(steps):
        t0 = time.perf_counter()
        metrics = task.step(step, loop.step_generator(seed, step, device))
        sync(device)
        times.append(time.perf_counter() - t0)
        step += 1
    sec = sum(times) / len(times)
    return {"seconds_per_step": sec, "seconds_per_step_min": min(times), "seconds_per_step_max": max(times),
            "images_per_s": task.batch_size / sec, "timed_steps": steps, "warmup_steps": warmup,
            "last_metrics": {k: float(v) for k, v in metrics.items()}, **peak_memory(device)}


@torch.no_grad()
def time_sampling(net, *, batch, repeats, amp_dtype, device, seed):
    reset_peak(device)
    cfg = net.config
    g = torch.Generator(device=device).manual_seed(seed)
    z = edm.SIGMA_MAX * torch.randn((batch, cfg.in_channels, cfg.img_resolution, cfg.img_resolution),
                                    generator=g, device=device)
    y = torch.randint(cfg.num_classes, (batch,), generator=g, device=device) if cfg.num_classes else None

    def once():
        if amp_dtype is None:
            return edm.generate(net, z, y)
        with torch.autocast(device.type, dtype=amp_dtype):
            return edm.generate(net, z, y)

    x = once()  # untimed: allocation, cuDNN algorithm choice
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = once()
        sync(device)
        times.append(time.perf_counter() - t0)
    sec = sum(times) / len(times)
    return {"batch": batch, "output_shape": list(x.shape), "seconds_per_batch": sec, "images_per_s": batch / sec,
            "timed_repeats": repeats, **peak_memory(device)}


def guarded(fn, label):
    try:
        return fn()
    except RuntimeError as e:
        if not is_oom(e):
            raise
        print(f"  {label}: out of memory", flush=True)
        return {"error": "out of memory", "detail": str(e).splitlines()[0][:300]}


def benchmark_stage(init_path, *, resolution, backbone, args, device, amp_dtype, save_to=None):
    """Build G as train_decoder does from `init_path`, time training and sampling; optionally save G."""
    torch.manual_seed(args.seed)
    G = init_decoder(init_path, resolution=resolution, channels=args.growth_channels, device=device)
    cfg = G.config
    D = ProjectedDiscriminator(num_classes=cfg.num_classes if G.label_emb is not None else 0, backbone=backbone)
    dist_fn = ReconstructionDistance("feature", backbone=backbone)
    gen = torch.Generator().manual_seed(args.seed + 1)
    latents, images, labels = fake_data(args.data_size, cfg.img_resolution, resolution, cfg.in_channels,
                                        cfg.num_classes, gen)
    task = DecoderTask(G, D, dist_fn, latents=latents, targets=images, train_images=images, train_labels=labels,
                       batch_size=args.batch, device=device)
    if amp_dtype is not None:
        for m in (task.G, task.D, task.distance):
            autocast_forward(m, device, amp_dtype)
    info = {"resolution": resolution, "base_resolution": cfg.img_resolution, "batch": args.batch,
            "params": num_params(task.G), "trainable_params": num_params(task.G, trainable_only=True),
            "d_trainable_params": sum(p.numel() for p in task.D.trainable_parameters()),
            "network": cfg.to_dict()}
    print(f"[{resolution}x{resolution}] G {info['params'] / 1e6:.1f}M params "
          f"({info['trainable_params'] / 1e6:.1f}M trainable); training ...", flush=True)
    info["train"] = guarded(lambda: time_training(task, steps=args.steps, warmup=args.warmup, seed=args.seed,
                                                  device=device), "training")
    if save_to is not None:
        save_network(save_to, task.G, kind="decoder", ema=task.ema, meta={"sigma_max": edm.SIGMA_MAX})
    sampler = task.ema
    del task, G, D, dist_fn
    free_memory(device)
    print(f"[{resolution}x{resolution}] one-step sampling ...", flush=True)
    info["sample"] = guarded(lambda: time_sampling(sampler, batch=args.sample_batch, repeats=args.sample_repeats,
                                                   amp_dtype=amp_dtype, device=device, seed=args.seed),
                             "sampling")
    del sampler
    free_memory(device)
    return info


# ----------------------------------------------------------------------------
# Report.

def print_table(result):
    print()
    print(f"device: {result['device_name']}   torch {result['torch']}   amp: {result['amp']}")
    header = f"{'stage':<22}{'batch':>7}{'img/s':>11}{'s/step':>10}{'peak MiB':>11}"
    print(header)
    print("-" * len(header))
    for st in result["stages"]:
        res = st["resolution"]
        for what, key, sec_key in (("train", "train", "seconds_per_step"), ("sample", "sample", "seconds_per_batch")):
            r = st[key]
            name = f"{what} {res}x{res}"
            batch = st["batch"] if what == "train" else r.get("batch", result["sample_batch"])
            if "error" in r:
                print(f"{name:<22}{batch:>7}{r['error']:>32}")
            else:
                print(f"{name:<22}{batch:>7}{r['images_per_s']:>11.2f}{r[sec_key]:>10.4f}{r['peak_mib']:>11.0f}")
    kinds = {st[k].get("peak_kind") for st in result["stages"] for k in ("train", "sample")} - {None}
    print(f"(s/step: seconds per training step, or per sampling batch; peak: {', '.join(sorted(kinds))})")


def main(argv=None):
    args = parse_args(argv)
    device = loop.resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda asked for, but torch sees no CUDA device")
    base = TINY if args.tiny else ADM64
    args.resolution = args.resolution or base.img_resolution
    args.feature_size = args.feature_size or (32 if args.tiny else 224)
    args.data_size = args.data_size or max(args.batch, 64)
    if args.grow_to is not None and (args.grow_to <= args.resolution or args.grow_to % args.resolution):
        sys.exit(f"--grow-to {args.grow_to} must be a power-of-two multiple of --resolution {args.resolution}")
    amp = args.amp
    if amp == "bf16" and device.type != "cuda":
        print("note: --amp bf16 applies on CUDA only; running fp32", flush=True)
        amp = "none"
    amp_dtype = torch.bfloat16 if amp == "bf16" else None
    cfg = dataclasses.replace(base, img_resolution=args.resolution)

    name = loop.device_name(device)
    print(f"device: {name} | torch {torch.__version__} | network: {'tiny' if args.tiny else 'ADM-64'} "
          f"at {args.resolution}px | feature size {args.feature_size}", flush=True)
    result = {
        "device": str(device), "device_name": name, "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "host_cpu": platform.machine(),
        "torch_threads": torch.get_num_threads(), "amp": amp, "tiny": args.tiny,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "batch": args.batch, "sample_batch": args.sample_batch, "steps": args.steps, "warmup": args.warmup,
        "feature_size": args.feature_size, "data_size": args.data_size, "seed": args.seed, "stages": [],
    }

    with tempfile.TemporaryDirectory(prefix="pagoda-gpu-smoke-", dir=args.workdir) as tmp:
        tmp = pathlib.Path(tmp)
        torch.manual_seed(args.seed)
        teacher = UNet(cfg)
        result["teacher_params"] = num_params(teacher)
        save_network(tmp / "teacher.pt", teacher, kind="teacher")
        del teacher
        backbone = EfficientNetLite0(args.feature_size)  # frozen; shared by distance and D, as in train_decoder
        stage2 = tmp / "decoder.pt" if args.grow_to else None
        result["stages"].append(benchmark_stage(tmp / "teacher.pt", resolution=args.resolution, backbone=backbone,
                                                args=args, device=device, amp_dtype=amp_dtype, save_to=stage2))
        if args.grow_to:
            result["stages"].append(benchmark_stage(stage2, resolution=args.grow_to, backbone=backbone, args=args,
                                                    device=device, amp_dtype=amp_dtype))

    print_table(result)
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
