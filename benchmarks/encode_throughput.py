"""Encoder throughput at paper scale: ADM-64 (the EDM ImageNet-64 teacher's network) evaluations per second.

The encode stage costs 2 x 1,281,167 images x 79 network evaluations on ImageNet; this times the PF-ODE
inversion (`pagoda.edm.ode_to_noise`) of a randomly initialised ADM-64 on one device and prints
evaluations/s, images/s at 79 NFE, peak memory and the implied GPU-hours of the whole encode stage.

    python benchmarks/encode_throughput.py --device cuda --batch 256 [--amp bf16] [--json PATH]
    python benchmarks/encode_throughput.py --device cpu --tiny      # a check that it runs
"""

import argparse
import contextlib
import json
import time

import torch

from pagoda import edm, loop
from pagoda.adm import ADM_IMAGENET64
from pagoda.networks import UNet, UNetConfig, num_params

IMAGENET_INVERSIONS = 2 * 1_281_167  # every training image and its flip


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--num-points", type=int, default=4, help="Karras points timed (NFE = 2 (points - 1))")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--tiny", action="store_true", help="a small network at 16 px (CPU check)")
    p.add_argument("--json")
    args = p.parse_args()

    device = torch.device(args.device)
    cfg = dict(ADM_IMAGENET64, dropout=0.0)
    if args.tiny:
        cfg.update(img_resolution=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(8,), num_head_channels=16, num_classes=10)
    net = UNet(UNetConfig(**cfg)).to(device).eval().requires_grad_(False)
    r = cfg["img_resolution"]
    x = torch.rand(args.batch, 3, r, r, device=device) * 2 - 1
    y = torch.randint(cfg["num_classes"], (args.batch,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp == "bf16" and device.type == "cuda" \
        else contextlib.nullcontext()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad(), amp:
        edm.ode_to_noise(net, x, y, num_points=2)  # warm-up
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _, nfe = edm.ode_to_noise(net, x, y, num_points=args.num_points)
            sync()
            times.append(time.perf_counter() - t0)
    sec = min(times)
    evals_per_s = args.batch * nfe / sec
    result = {
        "device": loop.device_name(device), "torch": torch.__version__, "amp": args.amp, "batch": args.batch,
        "resolution": r, "params": num_params(net), "nfe_timed": nfe, "seconds": sec,
        "evaluations_per_s": evals_per_s, "images_per_s_at_79_nfe": evals_per_s / 79,
        "peak_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None,
        "imagenet_encode_gpu_hours": IMAGENET_INVERSIONS * 79 / evals_per_s / 3600,
    }
    for k, v in result.items():
        print(f"{k:28s} {v:.4g}" if isinstance(v, float) else f"{k:28s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
