"""Figures the notebooks show: image grids, loss curves, per-resolution views."""

import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from . import layout
from .evaluate import load_samples


def _to_hwc(images):
    """(N, C, H, W) uint8 array or [-1, 1] float tensor -> (N, H, W, C) floats in [0, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    x = x.float() / 255 if x.dtype == torch.uint8 else (x.float().clamp(-1, 1) + 1) / 2
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(images, *, nrow, row_labels=None, col_labels=None, title=None, cell=0.6, ax=None):
    """Show N images as a grid with `nrow` rows; nearest-neighbour display so pixels stay visible."""
    x = _to_hwc(images)
    n, h, w, c = x.shape
    ncol = int(np.ceil(n / nrow))
    canvas = np.ones((nrow * (h + 1) - 1, ncol * (w + 1) - 1, c))
    for i in range(n):
        r, q = divmod(i, ncol)
        canvas[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = x[i]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(2.0, ncol * cell + (1.2 if row_labels else 0)), max(1.2, nrow * cell)))
    ax.imshow(canvas.squeeze(-1) if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([(w + 1) * q + w / 2 - 0.5 for q in range(ncol)] if col_labels else [])
    ax.set_yticks([(h + 1) * r + h / 2 - 0.5 for r in range(nrow)] if row_labels else [])
    if col_labels:
        ax.set_xticklabels(col_labels, fontsize=8)
    if row_labels:
        ax.set_yticklabels(row_labels, fontsize=8)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def resolution_ladder(images_by_res, *, labels=None, class_names=None):
    """One row per resolution (upsampled for display by pixel replication), the same images in each."""
    res = sorted(images_by_res)
    fig, axes = plt.subplots(len(res), 1, figsize=(1.0 * len(next(iter(images_by_res.values()))),
                                                     1.15 * len(res)), squeeze=False)
    top = max(res)
    for ax, r in zip(axes[:, 0], res):
        x = torch.as_tensor(images_by_res[r])
        x = x.repeat_interleave(top // r, -1).repeat_interleave(top // r, -2)
        cols = [class_names[i] for i in labels] if (labels is not None and r == res[0]) else None
        image_grid(x, nrow=1, ax=ax, col_labels=cols)
        ax.set_ylabel(f"{r}x{r}", rotation=0, ha="right", va="center")
        if cols:
            ax.xaxis.set_ticks_position("top")
    fig.tight_layout()
    return fig


def samples_per_class(images, labels, class_names, *, per_class, title=None):
    """Rows = classes, `per_class` samples each (images must come ordered so that labels cycle)."""
    order = np.argsort(np.asarray(labels), kind="stable")
    x = torch.as_tensor(images)[order]
    k = len(class_names)
    ax = image_grid(x[: k * per_class], nrow=k, row_labels=list(class_names), title=title)
    return ax.figure


def read_metrics(run_dir):
    """The training metrics of a run (empty when nothing was trained there, e.g. an imported teacher)."""
    path = pathlib.Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return pd.DataFrame()
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line.strip()])


def loss_curves(metrics, keys, *, title=None, logy=False, smooth=5, ncols=3):
    """One panel per metric in `keys` (up to `ncols` per row), raw and smoothed (rolling mean over `smooth` rows)."""
    import seaborn as sns  # ~0.7 s to import: only the notebooks that draw these pay it
    if metrics.empty:  # nothing trained in this run (an imported teacher)
        fig, ax = plt.subplots(figsize=(5, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no training metrics: this network was not trained here", ha="center", va="center")
        return fig
    ncols = min(ncols, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.6 * nrows), squeeze=False)
    for ax in axes.ravel()[len(keys):]:
        ax.set_visible(False)
    for ax, k in zip(axes.ravel(), keys):
        sns.lineplot(x=metrics["step"], y=metrics[k], ax=ax, alpha=0.35, color="C0")
        sns.lineplot(x=metrics["step"], y=metrics[k].rolling(smooth, min_periods=1).mean(), ax=ax, color="C0")
        ax.set_title(k, fontsize=10)
        ax.set_ylabel("")
        if logy:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def dataset_ladder(data_dir, resolutions, *, split="train", per_class=1):
    """The same training images at every resolution of the study."""
    from .data import examples_per_class, load_dataset
    _, labels, classes = load_dataset(data_dir, split, resolutions[0])
    idx = examples_per_class(labels, per_class, len(classes))
    return resolution_ladder({r: load_dataset(data_dir, split, r)[0][idx] for r in resolutions},
                             labels=labels[idx], class_names=[c.split("/")[0] for c in classes])


def latent_statistics(z, sigma_max=80.0):
    """Histogram of z / sigma_max against N(0, 1), and the per-pixel standard deviation of z / sigma_max."""
    z = np.asarray(z) / sigma_max
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 2.8))
    a.hist(z.ravel(), bins=80, density=True, color="C0", alpha=0.7, label="z / sigma_max")
    t = np.linspace(-4, 4, 200)
    a.plot(t, np.exp(-t ** 2 / 2) / np.sqrt(2 * np.pi), "k--", lw=1, label="N(0, 1)")
    a.legend(fontsize=8)
    a.set_title(f"latents: std {z.std():.3f} sigma_max", fontsize=10)
    im = b.imshow(z.std(axis=0).mean(axis=0), cmap="viridis")
    b.set_title("per-pixel std / sigma_max", fontsize=10)
    b.set_xticks([])
    b.set_yticks([])
    fig.colorbar(im, ax=b, fraction=0.046)
    fig.tight_layout()
    return fig


def image_rows(rows, row_labels, *, title=None):
    """Stack equally long image batches as rows (e.g. x, reconstruction; low-res, high-res)."""
    n = len(rows[0])
    res = max(torch.as_tensor(r).shape[-1] for r in rows)
    stacked = []
    for r in rows:
        r = torch.as_tensor(np.asarray(r) if not isinstance(r, torch.Tensor) else r)
        k = res // r.shape[-1]
        stacked.append(r.repeat_interleave(k, -1).repeat_interleave(k, -2))
    x = torch.cat([s if s.dtype != torch.uint8 else s.float() / 127.5 - 1 for s in stacked])
    ax = image_grid(x, nrow=len(rows), row_labels=row_labels, title=title, cell=0.7 * max(1, res / 16) ** 0.5)
    ax.figure.set_size_inches(max(4.0, 0.55 * n * max(1, res / 16) ** 0.5 + 1.5), 0.75 * len(rows) + 0.6)
    return ax.figure


def curves(named, *, xlabel="step", ylabel="", logy=False):
    """One line per entry of {name: sequence of values}."""
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, ys in named.items():
        ax.plot(np.arange(1, len(ys) + 1), ys, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def learning_curve(records, *, resolution, keys=("fd_judge", "recall_judge", "precision_judge", "coverage_judge")):
    """Judge metrics of a stage's snapshots (`evaluate.learning_curve`) against its training steps: whether
    more steps would still help."""
    frame = pd.DataFrame(records)
    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    axes[0].plot(frame["step"], frame["fd_judge"], "o-", color="C0")
    axes[0].set_title(METRIC_TITLES["fd_judge"], fontsize=10)
    for i, k in enumerate(k for k in keys if k != "fd_judge"):
        axes[1].plot(frame["step"], frame[k], "o-", color=f"C{i + 1}", label=k.removesuffix("_judge"))
    axes[1].set_title("judge features", fontsize=10)
    axes[1].set_ylim(0, 1.05)
    axes[1].legend(fontsize=8, frameon=False)
    for ax in axes:
        ax.set_xlabel("training step")
    fig.suptitle(f"{resolution}x{resolution} decoder during training (EMA snapshots)", fontsize=11)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------
# The report's figures.

METRIC_TITLES = {"fd_judge": "FD, judge features", "swd": "SWD x1e3, pixels (mean of levels)",
                 "swd_finest": "SWD x1e3, pixels (finest level)", "fd_effnet": "FD, EfficientNet (training space)",
                 "fid_inception": "FID (Inception)", "recall_judge": "recall, judge features",
                 "recall": "recall, EfficientNet (training space)", "precision_judge": "precision, judge features",
                 "kid_judge": "KID, judge features", "placement": "placement error, pixels",
                 "judge_distance": "distance to the truth, judge features", "psnr": "PSNR, dB",
                 "sec_per_image": "seconds per image"}


def plot_metrics_vs_resolution(table, metrics, *, logy=True):
    """One panel per metric: every method against resolution (lower is better for distances)."""
    import seaborn as sns  # ~0.7 s to import: only the notebooks that draw these pay it
    metrics = [m for m in metrics if table[m].notna().any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        df = table.dropna(subset=[metric])
        sns.lineplot(data=df, x="resolution", y=metric, hue="method", style="method", markers=True, dashes=False,
                     ax=ax, legend=ax is axes[0, -1])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(df.resolution.unique()))
        ax.set_xticklabels(sorted(df.resolution.unique()))
        if logy:
            ax.set_yscale("log")
        ax.set_title(METRIC_TITLES.get(metric, metric), fontsize=9)
    axes[0, -1].legend(fontsize=7, frameon=False, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def plot_speed_quality(table, resolution, metric="fd_judge"):
    import seaborn as sns  # ~0.7 s to import: only the notebooks that draw these pay it
    df = table[(table.resolution == resolution) & table.images_per_sec.notna()]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    sns.scatterplot(data=df, x="images_per_sec", y=metric, hue="method", s=70, ax=ax)
    floor = table[(table.method == "data_test") & (table.resolution == resolution)][metric]
    if len(floor):
        ax.axhline(float(floor.iloc[0]), color="k", ls=":", lw=1, label="data_test (floor)")
    for _, row in df.iterrows():
        ax.annotate(f"{int(row.nfe)} NFE", (row.images_per_sec, row[metric]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_title(f"speed vs quality at {resolution}x{resolution} ({df.device.iloc[0] if len(df) else ''})", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def plot_sample_grid(samples_dir, resolution, *, methods=("pagoda", "teacher_ode_bicubic"), per_class=4,
                     class_names=None):
    """Methods side by side for the same classes (the evaluation cycles labels, so index i has class i % K)."""
    samples_dir = pathlib.Path(samples_dir)
    fig, axes = plt.subplots(1, len(methods), figsize=(2.4 * len(methods) * max(1, resolution / 16) ** 0.5 + 1.2,
                                                        4.2 * max(1, resolution / 16) ** 0.5), squeeze=False)
    for ax, m in zip(axes[0], methods):
        path = samples_dir / f"{m}_{resolution}.npz"
        if not path.exists():
            ax.set_visible(False)
            continue
        s = load_samples(path)
        labels = np.asarray(s["labels"])
        k = int(labels.max()) + 1
        idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(k)])
        image_grid(torch.as_tensor(s["images"][idx]), nrow=k, ax=ax, title=m,
                   row_labels=[str(c) for c in (class_names or range(k))] if ax is axes[0, 0] else None)
    fig.suptitle(f"{resolution}x{resolution}", fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


# ----------------------------------------------------------------------------
# The ablations' figures (results/figures/ablation_*.png).

def plot_teacher_quality(table, metric="fd_judge"):
    """Paper Fig. 5's shape: the student's quality against its teacher's, one line per objective, every seed."""
    tq = table[table.ablation == "teacher_quality"]
    teachers = tq[tq.variant.str.startswith("teacher_ode-")]
    teachers = teachers.groupby(teachers.variant.str.removeprefix("teacher_ode-"))[metric].mean()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, objective in enumerate(("reconstruction", "distillation")):
        rows = tq[tq.variant.str.startswith(f"{objective}-")]
        x = teachers[rows.variant.str.removeprefix(f"{objective}-")].to_numpy()
        ax.scatter(x, rows[metric], color=f"C{i}", alpha=0.6, s=20)
        means = pd.DataFrame({"x": x, "y": rows[metric].to_numpy()}).groupby("x").y.mean()
        ax.plot(means.index, means.to_numpy(), "o-", color=f"C{i}",
                label={"reconstruction": "L_rec + GAN (paper)", "distillation": "L_dstl + GAN"}[objective])
    lim = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
    ax.plot(lim, lim, "k:", lw=1, label="student = teacher")
    ax.set_xlabel(f"teacher (Heun ODE), {METRIC_TITLES.get(metric, metric)}")
    ax.set_ylabel(f"one-step student, {METRIC_TITLES.get(metric, metric)}")
    for name, x in teachers.items():
        ax.annotate(name, (x, ax.get_ylim()[0]), fontsize=7, rotation=90, va="bottom")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def ablation_figure(table, ablation):
    """The figure of one ablation: Fig. 5's shape for teacher_quality, quality against NFE for teacher_steps,
    the variants side by side for the others."""
    if ablation == "teacher_quality":
        return plot_teacher_quality(table)
    if ablation == "teacher_steps":
        return plot_teacher_steps(table)
    metrics = ("judge_distance", "psnr", "sec_per_image") if ablation == "sr_inversion" else \
        ("fd_judge", "recall_judge", "placement")
    return plot_ablation(table, ablation, metrics)


def plot_ablation(table, ablation, metrics=("fd_judge", "recall_judge", "placement")):
    """One panel per metric: each variant's seeds (points) and their mean (bar)."""
    rows = table[table.ablation == ablation]
    metrics = [m for m in metrics if m in rows and rows[m].notna().any()]
    variants = list(dict.fromkeys(rows.variant))
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.0 + 1.2 * len(variants) * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        means = rows.groupby("variant", sort=False)[metric].mean()
        ax.bar(range(len(variants)), means[variants], color="0.85")
        for i, v in enumerate(variants):
            ax.scatter(np.full((rows.variant == v).sum(), i), rows[rows.variant == v][metric], color="C0", s=18)
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(variants, fontsize=8, rotation=20)
        ax.set_title(METRIC_TITLES.get(metric, metric.replace("_", " ")), fontsize=9)
    fig.suptitle(f"{ablation} (points: training seeds; bars: their mean)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_teacher_steps(table, metric="fd_judge"):
    """The teacher's Heun sampler at a few NFE (bicubic-upsampled above its resolution) and one PaGoDA step."""
    rows = table[table.ablation == "teacher_steps"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, (r, at) in enumerate(rows.groupby("resolution")):
        heun = at[at.variant != "pagoda"].sort_values("nfe")
        ax.plot(heun.nfe, heun[metric], "o-", color=f"C{i}", label=f"teacher Heun, {r}x{r}")
        ax.plot(at[at.variant == "pagoda"].nfe, at[at.variant == "pagoda"][metric], "*", ms=12, color=f"C{i}",
                label=f"PaGoDA, {r}x{r}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE per image")
    ax.set_ylabel(METRIC_TITLES.get(metric, metric))
    ax.legend(fontsize=7, frameon=False, ncol=2)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------
# The guidance target's figures (results/figures/guidance_*.png).

def plot_guidance_curves(table):
    """The guidance trade-off: precision against recall and class accuracy against fd_judge, one curve per
    (method, resolution), each point labelled with its omega."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, ((method, real, r), at) in enumerate(table.groupby(["method", "real_omega", "resolution"], dropna=False)):
        at = at.sort_values("omega")
        name = method.replace("teacher_ode_bicubic", "teacher ODE, bicubic").replace("teacher_ode", "teacher ODE")
        nfe = sorted({int(n) for n in at.nfe})  # the teacher's CFG: 79 at omega 1, 158 above
        label = f"{name}{'' if pd.isna(real) else f' ({real})'}, {r}x{r}, {'-'.join(map(str, nfe))} NFE"
        style = dict(marker="*" if method == "pagoda" else "o", ls="-" if method == "pagoda" else "--", color=f"C{i}")
        for ax, (x, y) in zip(axes, (("recall_judge", "precision_judge"), ("fd_judge", "class_accuracy_judge"))):
            ax.plot(at[x], at[y], label=label, **style)
            for _, row in at.iterrows():
                ax.annotate(f"{row.omega:g}", (row[x], row[y]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    for ax, (x, y) in zip(axes, (("recall_judge", "precision_judge"), ("fd_judge", "class_accuracy_judge"))):
        ax.set_xlabel(METRIC_TITLES.get(x, x))
        ax.set_ylabel(METRIC_TITLES.get(y, y) if y != "class_accuracy_judge" else "judge's accuracy on the class asked for")
    axes[1].set_xscale("log")
    axes[1].legend(fontsize=6, frameon=False)
    fig.suptitle("guidance scale omega along each curve", fontsize=10)
    fig.tight_layout()
    return fig


def plot_guidance_samples(rows, *, per_omega=10):
    """Samples of the same noise and classes across omega: one row per (method, omega)."""
    images, names = [], []
    for row in rows:
        s = load_samples(layout.record_samples_path(row["record"]))
        images.append(torch.as_tensor(s["images"][:per_omega]))
        names.append(f"{row['method']}{'' if row.get('real_omega') is None else '-' + row['real_omega']}, "
                     f"w={row['omega']:g}")
    return image_rows(images, names, title="the same noise and classes across omega")


def plot_omega_estimator(summary, real_omegas=None):
    """The estimator on held-out teacher samples (mean prediction per omega bin) and, when given, the omegas it
    assigns to the real training images."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    if summary is None:
        for ax in axes:
            ax.text(0.5, 0.5, "no omega estimator at this size", ha="center", va="center")
            ax.set_axis_off()
        return fig
    bins = pd.DataFrame(summary["held_out"]["bins"])
    axes[0].plot(bins.omega, bins.predicted, "o-", label="mean prediction")
    axes[0].plot(bins.omega, bins.omega, "k:", label="exact")
    axes[0].set_xlabel("omega of the teacher's sample")
    axes[0].set_ylabel("omega_phi")
    axes[0].set_title(f"held out: RMSE {summary['held_out']['rmse']:.3f}, r {summary['held_out']['pearson_r']:.3f}",
                      fontsize=9)
    axes[0].legend(fontsize=7, frameon=False)
    if real_omegas is not None:
        axes[1].hist(real_omegas, bins=40)
        axes[1].set_xlabel("omega_phi of the real training images")
    else:
        axes[1].set_axis_off()
    fig.tight_layout()
    return fig
