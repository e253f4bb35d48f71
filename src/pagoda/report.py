"""The study's tables, figures and the plain-words check of the paper's claims."""

import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from .data import to_model
from .decoder import placement_error
from .evaluate import METHODS, load_samples, read_records
from .plots import image_grid

TABLE_COLUMNS = ["method", "resolution", "nfe", "n_samples", "fd_effnet", "fid_inception", "precision", "recall",
                 "density", "coverage", "images_per_sec", "device", "feature_size"]


def fid_table(record_paths):
    """results/fid_table.csv: one row per (method, resolution), methods in a fixed order."""
    df = pd.DataFrame(read_records(record_paths))
    df["method"] = pd.Categorical(df["method"], categories=METHODS, ordered=True)
    df = df.sort_values(["method", "resolution"]).reset_index(drop=True)
    df["method"] = df["method"].astype(str)
    return df[TABLE_COLUMNS]


def stage_costs(results_dir, resolutions):
    """results/stage_costs.csv: wall-clock seconds and device of each training/encoding stage (own logs)."""
    results_dir = pathlib.Path(results_dir)
    stages = [("teacher", results_dir / "teacher"), ("encode", results_dir / "latents")]
    stages += [(f"decoder_{r}", results_dir / "decoder" / str(r)) for r in resolutions]
    rows = []
    for name, folder in stages:
        if not (folder / "timing.json").exists():  # a stage that has not run (yet)
            continue
        timing = json.loads((folder / "timing.json").read_text())
        run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
        steps = None
        if (folder / "metrics.jsonl").exists():
            lines = (folder / "metrics.jsonl").read_text().splitlines()
            steps = json.loads(lines[-1])["step"] if lines else None
        rows.append({"stage": name, "seconds": round(timing["seconds"], 1), "minutes": round(timing["seconds"] / 60, 2),
                     "device": timing["device"], "attempts": timing["attempts"], "steps": steps,
                     "resolution": run.get("resolution")})
    return pd.DataFrame(rows)


def claim_sentences(claims_table):
    """The claims in plain words, one line each."""
    lines = []
    for _, c in claims_table.iterrows():
        verdict = "not measured" if "nan" in c.measured else ("HOLDS" if c.holds else "DOES NOT HOLD")
        lines.append(f"{verdict}: {c.claim}. Measured: {c.measured}.")
    return "\n".join(lines)


def value(table, method, resolution, column="fd_effnet"):
    row = table[(table.method == method) & (table.resolution == resolution)]
    return float(row[column].iloc[0]) if len(row) else float("nan")


def claims(table, resolutions, *, placement=None):
    """The paper's claims, each with the numbers measured here and whether it holds at this scale."""
    base, out = resolutions[0], []
    student, teacher = value(table, "pagoda", base), value(table, "teacher_ode", base)
    out.append({"claim": f"the one-step student matches or beats its teacher at {base}x{base} (FD)",
                "measured": f"pagoda {student:.1f} vs teacher_ode {teacher:.1f} (ratio {student / teacher:.2f})",
                "holds": bool(student <= teacher)})
    for r in resolutions[1:]:
        grown = value(table, "pagoda", r)
        baselines = {m: value(table, m, r) for m in ("teacher_ode_bicubic", "stage2_bicubic", "data_bicubic")}
        best = min(baselines, key=baselines.get)
        out.append({"claim": f"growth beats upsampling at {r}x{r} (FD)",
                    "measured": f"pagoda {grown:.1f} vs best upsampling {best} {baselines[best]:.1f} "
                                f"({baselines[best] / grown:.1f}x worse)",
                    "holds": bool(grown < min(baselines.values()))})
    ips_s, ips_t = value(table, "pagoda", base, "images_per_sec"), value(table, "teacher_ode", base, "images_per_sec")
    nfe = value(table, "teacher_ode", base, "nfe")
    out.append({"claim": f"one step is far faster than the {'?' if np.isnan(nfe) else int(nfe)}-NFE ODE "
                         f"at comparable quality ({base}x{base})",
                "measured": f"{ips_s:.0f} vs {ips_t:.1f} images/s: {ips_s / ips_t:.0f}x faster; FD ratio "
                            f"{student / teacher:.2f}",
                "holds": bool(ips_s > 10 * ips_t and student <= 1.5 * teacher)})
    if placement is not None:
        for r, (same, shuffled) in placement.items():
            out.append({"claim": f"growing keeps objects in place: the {r}x{r} output seen at {base}x{base} matches "
                                 "Stage 2 for the same z",
                        "measured": f"mean |diff| {same:.3f} on [0, 1] (shuffled pairs {shuffled:.3f})",
                        "holds": bool(same < 0.25 * shuffled)})
    return pd.DataFrame(out)


def placement_from_samples(samples_dir, resolutions):
    """{R: (placement error, shuffled baseline)} from the evaluation samples, which share z across stages."""
    samples_dir = pathlib.Path(samples_dir)
    if not (samples_dir / f"pagoda_{resolutions[0]}.npz").exists():
        return {}
    base = to_model(load_samples(samples_dir / f"pagoda_{resolutions[0]}.npz")["images"])
    out = {}
    for r in resolutions[1:]:
        if not (samples_dir / f"pagoda_{r}.npz").exists():
            continue
        high = to_model(load_samples(samples_dir / f"pagoda_{r}.npz")["images"])
        out[r] = (float(placement_error(high, base).mean()), float(placement_error(high, base.roll(1, 0)).mean()))
    return out


# ----------------------------------------------------------------------------
# Figures.

def plot_metric_vs_resolution(table, metric="fd_effnet", *, logy=True):
    df = table.dropna(subset=[metric])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    sns.lineplot(data=df, x="resolution", y=metric, hue="method", style="method", markers=True, dashes=False, ax=ax)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(df.resolution.unique()))
    ax.set_xticklabels(sorted(df.resolution.unique()))
    if logy:
        ax.set_yscale("log")
    ax.set_title(f"{metric} against the training images (lower is better)" if metric.startswith("f")
                 else metric, fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def plot_speed_quality(table, resolution):
    df = table[(table.resolution == resolution) & table.images_per_sec.notna()]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    sns.scatterplot(data=df, x="images_per_sec", y="fd_effnet", hue="method", s=70, ax=ax)
    floor = table[(table.method == "data_test") & (table.resolution == resolution)].fd_effnet
    if len(floor):
        ax.axhline(float(floor.iloc[0]), color="k", ls=":", lw=1, label="data_test (floor)")
    for _, row in df.iterrows():
        ax.annotate(f"{int(row.nfe)} NFE", (row.images_per_sec, row.fd_effnet), fontsize=7,
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


def inverse_claims(inverse_table):
    """Inverse problems: PaGoDA against the baselines, and inversion against latent optimisation."""
    t = inverse_table.set_index(["task", "method"])
    out = []
    sr = [task for task in t.index.get_level_values(0).unique() if task.startswith("sr")]
    for task in sr:
        p, b = t.loc[(task, "pagoda")], t.loc[(task, "bicubic")]
        out.append({"claim": f"{task}: PaGoDA (inversion + one step) beats bicubic perceptually and in FD",
                    "measured": f"perceptual {p.perceptual:.3f} vs {b.perceptual:.3f}, FD {p.fd_effnet:.1f} vs "
                                f"{b.fd_effnet:.1f}; PSNR {p.psnr:.2f} vs {b.psnr:.2f} dB",
                    "holds": bool(p.perceptual < b.perceptual and p.fd_effnet < b.fd_effnet)})
        o = t.loc[(task, "pagoda_optim")]
        out.append({"claim": f"{task}: inversion beats latent optimisation (paper's remark)",
                    "measured": f"perceptual {p.perceptual:.3f} vs {o.perceptual:.3f}, PSNR {p.psnr:.2f} vs "
                                f"{o.psnr:.2f} dB, {p.sec_per_image * 1e3:.1f} vs {o.sec_per_image * 1e3:.1f} ms/image",
                    "holds": bool(p.perceptual < o.perceptual)})
    for task, base in (("inpaint_box", "biharmonic"), ("inpaint_random", "biharmonic"), ("deblur", "richardson_lucy")):
        if (task, "pagoda") in t.index and (task, base) in t.index:
            p, b = t.loc[(task, "pagoda")], t.loc[(task, base)]
            out.append({"claim": f"{task}: PaGoDA (latent optimisation) beats {base} perceptually",
                        "measured": f"perceptual {p.perceptual:.3f} vs {b.perceptual:.3f}, PSNR {p.psnr:.2f} vs "
                                    f"{b.psnr:.2f} dB",
                        "holds": bool(p.perceptual < b.perceptual)})
    return pd.DataFrame(out)
