"""The inverse-problem stage: every task solved by PaGoDA and by a standard baseline, measured.

Tasks on held-out test images at the top resolution (task names as in results/inverse_table.csv):
    sr{F}           super-resolution by the factor F = top / base resolution (sr4 by default):
                    `pagoda` by teacher inversion + one decoder step, `pagoda_optim` by latent
                    optimisation from prior noise, `bicubic` baseline
    inpaint_box     centre box missing: `pagoda` (latent optimisation), `biharmonic` baseline
    inpaint_random  half of the pixels missing at random: same methods
    deblur          Gaussian blur plus noise: `pagoda` (latent optimisation), `richardson_lucy` baseline
Class transfer and interpolation work on the same test images.

Every restoration is judged by the top resolution's judge network (`pagoda.judge`), which no part of
PaGoDA trains against: `judge_distance` (per image, squared distance of unit-normalised penultimate
features, LPIPS-style) and `kid_judge` (clean-fid's unbiased KID of the restored set against the true
images, usable at 100 images where a 1280-d Frechet distance is not), with PSNR and SSIM (Gaussian window).
`effnet_distance` is the growth stages' own reconstruction distance (EfficientNet-lite0), kept as the
training-space view.
"""

import numpy as np
import pandas as pd
import torch

from . import edm, inverse, loop, metrics
from .checkpoints import load_network
from .judge import features as judge_features
from .judge import load_judge, predict
from .data import balanced_subset, load_dataset, resize, to_model
from .losses import ReconstructionDistance
from .sampling import image_noise, seeds_for


class Context:
    """Everything the tasks share: networks, test images, labels, metric helpers."""

    def __init__(self, *, data_dir, teacher_path, decoder_path, judge_path, n_images, num_points=40, feature_size=64,
                 seed=0, device="cpu"):
        self.device = device
        self.teacher, _ = load_network(teacher_path, device=device, expect_kind="teacher")
        self.G, meta = load_network(decoder_path, device=device, expect_kind="decoder")
        self.sigma_max = meta.get("sigma_max", edm.SIGMA_MAX)
        self.base = self.G.config.img_resolution
        self.top = self.G.config.out_resolution
        images, labels, self.classes = load_dataset(data_dir, "test", self.top)
        subset = balanced_subset(labels, n_images, seed=seed)  # not the first n: folders are sorted by class
        self.x = to_model(np.asarray(images[subset])).to(device)
        self.labels = torch.as_tensor(labels[subset]).to(device)
        self.num_points, self.seed = num_points, seed
        self.effnet_distance = ReconstructionDistance("feature", input_size=feature_size, augment=False).to(device)
        self.judge, self.judge_meta = load_judge(judge_path, device)
        if self.judge.hparams["resolution"] != self.top:
            raise ValueError(f"{judge_path} judges {self.judge.hparams['resolution']} px images, the decoder makes "
                             f"{self.top} px")
        self.truth_features = judge_features(self.judge, self.x)

    def encode_low(self, y_low):
        """Teacher inversion of (an estimate of) the image at the base resolution."""
        return inverse.encode(self.teacher, y_low.clamp(-1, 1), self.labels, num_points=self.num_points)

    def prior(self):
        cfg = self.G.config
        return self.sigma_max * image_noise(seeds_for(len(self.x), 500 + self.seed),
                                            (cfg.in_channels, cfg.img_resolution, cfg.img_resolution), self.device)

    def score(self, task, method, x_hat, seconds):
        with torch.no_grad():
            effnet = torch.cat([self.effnet_distance(x_hat[b:b + 250], self.x[b:b + 250])
                                for b in range(0, len(x_hat), 250)])
        feats = judge_features(self.judge, x_hat)
        return {"task": task, "method": method, "psnr": float(inverse.psnr(x_hat.cpu(), self.x.cpu()).mean()),
                "ssim": float(inverse.ssim(x_hat, self.x).mean()),
                "judge_distance": float(inverse.feature_distance(feats, self.truth_features).mean()),
                "kid_judge": metrics.kernel_distance(feats, self.truth_features, seed=self.seed),
                "effnet_distance": float(effnet.mean()), "sec_per_image": seconds / len(x_hat),
                "n_images": len(x_hat)}


def latent_optimisation(ctx, operator, y, *, init, steps, lr):
    """PaGoDA by latent optimisation from the inversion of the observation's downsample, or from the prior."""
    z0 = ctx.encode_low(resize(y, ctx.base)) if init == "inversion" else ctx.prior()
    x, _, losses = inverse.optimize_latent(ctx.G, operator, y, ctx.labels, z0=z0, steps=steps, lr=lr,
                                           sigma_max=ctx.sigma_max)
    return x, losses


def run_tasks(ctx, *, box_fraction=0.5, missing=0.5, blur_sigma=1.0, noise_std=0.02, opt_steps=100, opt_lr=0.05,
              opt_init="inversion", rl_iterations=30, examples=8):
    """All restoration tasks: (table rows, {task: {row label: example images}}, {task: loss curve})."""
    rows, shown, curves = [], {}, {}
    x, shape = ctx.x, tuple(ctx.x.shape[1:])

    # Super-resolution: inversion + one step (PaGoDA), latent optimisation from the prior, bicubic.
    sr = f"sr{ctx.top // ctx.base}"
    down = inverse.Downsample(shape, ctx.base)
    y = down(x)
    out, t = inverse.timed(lambda: inverse.decode(ctx.G, ctx.encode_low(y), ctx.labels, sigma_max=ctx.sigma_max))
    rows.append(ctx.score(sr, "pagoda", out, t))
    (opt, curves[sr]), t_opt = inverse.timed(latent_optimisation, ctx, down, y, init="prior", steps=opt_steps,
                                             lr=opt_lr)
    rows.append(ctx.score(sr, "pagoda_optim", opt, t_opt))
    base, t = inverse.timed(inverse.bicubic, y, ctx.top)
    rows.append(ctx.score(sr, "bicubic", base, t))
    shown[sr] = {"observation": resize(y, ctx.top)[:examples], "bicubic": base[:examples],
                 "pagoda (inversion)": out[:examples], "pagoda_optim": opt[:examples], "truth": x[:examples]}

    # Inpainting: a centre box and half of the pixels at random.
    masks = {"inpaint_box": inverse.center_box_mask(ctx.top, box_fraction).to(ctx.device),
             "inpaint_random": inverse.random_pixel_mask(len(x), ctx.top, missing=missing, seed=ctx.seed).to(ctx.device)}
    for task, m in masks.items():
        A = inverse.Mask(m)
        y = A(x)
        (out, curves[task]), t = inverse.timed(latent_optimisation, ctx, A, y, init=opt_init, steps=opt_steps,
                                               lr=opt_lr)
        rows.append(ctx.score(task, "pagoda", out, t))
        base, t = inverse.timed(inverse.biharmonic, y.cpu(), m.cpu())
        rows.append(ctx.score(task, "biharmonic", base.to(ctx.device), t))
        shown[task] = {"observation": y[:examples], "biharmonic": base[:examples],
                       "pagoda": out[:examples], "truth": x[:examples]}

    # Deblurring: Gaussian blur plus small noise.
    A = inverse.GaussianBlur(shape, blur_sigma)
    y = A(x) + inverse.gaussian_noise_like(x, noise_std, seed=ctx.seed)
    (out, curves["deblur"]), t = inverse.timed(latent_optimisation, ctx, A, y, init=opt_init, steps=opt_steps,
                                               lr=opt_lr)
    rows.append(ctx.score("deblur", "pagoda", out, t))
    base, t = inverse.timed(inverse.richardson_lucy, y.cpu(), A, iterations=rl_iterations)
    rows.append(ctx.score("deblur", "richardson_lucy", base.to(ctx.device), t))
    shown["deblur"] = {"observation": y.clamp(-1, 1)[:examples], "richardson_lucy": base[:examples],
                       "pagoda": out[:examples], "truth": x[:examples]}
    return pd.DataFrame(rows), shown, curves


def sr_at_matched_compute(ctx, *, multiples=(1, 4, 16), lr=0.05, probe_steps=3):
    """Super-resolution by inversion + one step against latent optimisation given the same wall time per image
    (paper Sec. 5.2: "inversion yields superior outcomes"), and `multiples` of it, from the prior and from the
    inversion's latent (whose inversion time counts against the budget). The Adam steps a budget buys are
    measured on this machine (`probe_steps` steps timed first), so `steps` is part of each row."""
    sr, shape = f"sr{ctx.top // ctx.base}", tuple(ctx.x.shape[1:])
    down = inverse.Downsample(shape, ctx.base)
    y = down(ctx.x)
    z_inv, t_enc = inverse.timed(ctx.encode_low, y)
    out, t_dec = inverse.timed(inverse.decode, ctx.G, z_inv, ctx.labels, sigma_max=ctx.sigma_max)
    budget = t_enc + t_dec
    rows = [{**ctx.score(sr, "inversion", out, budget), "budget": 1.0, "steps": 0}]
    _, t_probe = inverse.timed(inverse.optimize_latent, ctx.G, down, y, ctx.labels, z0=ctx.prior(), steps=probe_steps,
                               lr=lr, sigma_max=ctx.sigma_max)
    per_step = t_probe / probe_steps
    for m in multiples:
        for init, z0, spent in (("prior", ctx.prior(), 0.0), ("inversion", z_inv, t_enc)):
            steps = max(0, int((m * budget - spent) / per_step))
            (x, _, _), t = inverse.timed(inverse.optimize_latent, ctx.G, down, y, ctx.labels, z0=z0, steps=steps,
                                         lr=lr, sigma_max=ctx.sigma_max)
            rows.append({**ctx.score(sr, f"optim_{init}", x, t + spent), "budget": float(m), "steps": steps})
    return pd.DataFrame(rows)


def class_transfer(ctx, *, examples=8):
    """Invert with the true label, decode with another; judged by the top resolution's judge."""
    k = len(ctx.classes)
    g = torch.Generator().manual_seed(ctx.seed)
    target = (ctx.labels.cpu() + torch.randint(1, k, (len(ctx.x),), generator=g)) % k  # any other class
    z = ctx.encode_low(resize(ctx.x, ctx.base))
    moved = inverse.decode(ctx.G, z, target.to(ctx.device), sigma_max=ctx.sigma_max)
    kept = inverse.decode(ctx.G, z, ctx.labels, sigma_max=ctx.sigma_max)
    pred = predict(ctx.judge, moved).cpu()
    moved, kept, x = moved.cpu(), kept.cpu(), ctx.x.cpu()  # the scores are computed on the CPU
    fg = lambda a: a > -0.5  # noqa: E731  foreground of dark-background images
    inter = (fg(moved) & fg(x)).flatten(1).sum(1).float()
    union = (fg(moved) | fg(x)).flatten(1).sum(1).float().clamp_min(1)
    # A silhouette by threshold exists only on a dark background (Fashion-MNIST), not on photographs.
    silhouette = float((inter / union).mean()) if inverse.dark_background(x) else None
    table = pd.DataFrame([{
        "target_accuracy": float((pred == target).float().mean()),
        "source_label_rate": float((pred == ctx.labels.cpu()).float().mean()),
        "ssim_to_source": float(inverse.ssim(moved, x).mean()),
        "ssim_same_label": float(inverse.ssim(kept, x).mean()),
        "silhouette_iou": silhouette,
        "judge_test_accuracy": ctx.judge_meta["test_accuracy"],
        "n_images": len(ctx.x)}])
    shown = {"source": x[:examples], "same label": kept[:examples], "other label": moved[:examples]}
    names = [ctx.classes[int(t)].split("/")[0] for t in target[:examples]]
    return table, shown, names


def interpolation(ctx, *, pairs=4, steps=8):
    """slerp between the latents of two test images of the same class, decoded at the top resolution."""
    labels = ctx.labels.cpu().numpy()
    chosen = [np.flatnonzero(labels == c)[:2] for c in range(len(ctx.classes)) if (labels == c).sum() >= 2][:pairs]
    idx = torch.as_tensor(np.array(chosen))
    z = ctx.encode_low(resize(ctx.x, ctx.base))
    ts = torch.linspace(0, 1, steps)
    strips = []
    for a, b in idx:
        za, zb = z[a:a + 1].expand(steps, -1, -1, -1), z[b:b + 1].expand(steps, -1, -1, -1)
        zt = inverse.slerp(za, zb, ts.view(-1, 1).to(z.device))
        strips.append(inverse.decode(ctx.G, zt, ctx.labels[a].repeat(steps), sigma_max=ctx.sigma_max))
    return strips


def run_sr_at_matched_compute(*, data_dir, teacher_path, decoder_path, judge_path, out_path, n_images=200,
                              num_points=40, feature_size=64, multiples=(1, 4, 16), lr=0.05, seed=0, device="auto"):
    """`sr_at_matched_compute` on the test images, written to `out_path` (CSV): the sr_inversion ablation."""
    ctx = Context(data_dir=data_dir, teacher_path=teacher_path, decoder_path=decoder_path, judge_path=judge_path,
                  n_images=n_images, num_points=num_points, feature_size=feature_size, seed=seed,
                  device=loop.resolve_device(device))
    table = sr_at_matched_compute(ctx, multiples=multiples, lr=lr)
    table.to_csv(out_path, index=False)
    return table.to_dict("records")


def run_study(*, data_dir, teacher_path, decoder_path, judge_path, n_images=200, num_points=40, feature_size=64,
              seed=0, device="auto", **task_kw):
    device = loop.resolve_device(device)
    ctx = Context(data_dir=data_dir, teacher_path=teacher_path, decoder_path=decoder_path, judge_path=judge_path,
                  n_images=n_images, num_points=num_points, feature_size=feature_size, seed=seed, device=device)
    table, shown, curves = run_tasks(ctx, **task_kw)
    transfer, transfer_shown, target_names = class_transfer(ctx)
    return {"table": table, "examples": shown, "curves": curves, "transfer": transfer,
            "transfer_examples": transfer_shown, "transfer_targets": target_names,
            "interpolation": interpolation(ctx), "device": loop.device_name(device)}
