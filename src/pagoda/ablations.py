"""The paper's ablations as measured rows (results/ablations.csv; README, "Ablations").

Every ablation changes one part of the default run and keeps the rest, reusing the default run's data,
teacher, latents and decoders wherever a variant equals it:
    teacher_quality  Stage 2 from weaker teachers (the one teacher run's EMA snapshots) with L_rec + GAN (the
                     paper) and with L_dstl + GAN on that teacher's noise -> sample pairs (paper Fig. 5, Thm 3.1)
    growth_factor    the base decoder grown to the top resolution in one 4x stage with the growth stages' total
                     steps, against the default 2x stages (paper Table 2, Sec. 5.1.2)
    placement        the top growth stage without L_rec, and without the GAN term, against the full objective
                     (paper Figs. 3-4: L_rec keeps objects in place, the GAN term brings the detail)
    growth_head      the released code's shared output head against the default residual head
    teacher_steps    the teacher's Heun sampler at a few NFE (bicubic above its resolution) against one step
    sr_inversion     super-resolution by inversion against latent optimisation at matched compute (Sec. 5.2;
                     `inverse_study.sr_at_matched_compute`)

A decoder variant is a chain of decoder stages: it starts from the teacher (or one of its snapshots) or from a
decoder of the default run, and each stage is the default run's stage at that resolution with a few settings
changed. Only its training seed differs between a variant's rows.
"""

import dataclasses
import pathlib

from . import layout
from .workflow import decoder_stage


@dataclasses.dataclass(frozen=True)
class Variant:
    """One decoder variant: `stages` ((resolution, {setting: value}), ...) trained in order from `start`."""

    ablation: str
    name: str
    start: object  # "teacher", ("teacher_snapshot", step) or the resolution of a default-run decoder
    stages: tuple

    @property
    def key(self):
        return f"{self.ablation}-{self.name}"

    @property
    def resolution(self):
        """The resolution the variant is judged at: its last stage's."""
        return self.stages[-1][0]


def decoder_variants(config):
    """Every decoder variant the ablations train for `config` (an empty list for what its resolutions rule out:
    growth ablations need a growth stage; the 4x jump needs the top resolution 4x the base)."""
    res = config["resolutions"]
    base, top = res[0], res[-1]
    out = []
    for step in [*teacher_snapshot_steps(config), None]:
        start, label = ("teacher", "teacher") if step is None else (("teacher_snapshot", step), f"teacher{step}")
        out += [Variant("teacher_quality", f"{objective}-{label}", start, ((base, {"objective": objective}),))
                for objective in ("reconstruction", "distillation")]
    if len(res) == 1:
        return out
    growth = tuple((r, {}) for r in res[1:])
    out.append(Variant("growth_factor", f"{res[1] // base}x", base, growth))
    if len(res) == 3 and top == 4 * base:
        steps = sum(stage["steps"] for stage in config["decoder"]["stages"][1:])
        out.append(Variant("growth_factor", "4x", base, ((top, {"steps": steps}),)))
    full = (top, {})
    out += [Variant("placement", "full", res[-2], (full,)),
            Variant("placement", "no_rec", res[-2], ((top, {"objective": "none", "weighting": "separate"}),)),
            Variant("placement", "no_gan", res[-2], ((top, {"gan_weight": 0.0, "weighting": "separate"}),))]
    other = "shared" if config["decoder"]["growth_head"] == "residual" else "residual"
    out += [Variant("growth_head", config["decoder"]["growth_head"], base, growth),
            Variant("growth_head", other, base, ((res[1], {"growth_head": other}),) + growth[1:])]
    return out


def teacher_snapshot_steps(config):
    """The teacher steps kept as weaker teachers: the configured fractions (below 1) of the teacher's run (none
    for an imported teacher)."""
    if config["teacher"].get("import_path"):
        return []
    steps = config["teacher"]["steps"]
    return sorted({max(1, round(f * steps)) for f in config["ablations"]["teacher_fractions"] if f < 1})


def is_default(variant, config, seed):
    """Whether the variant at `seed` is what the default run trained: then its decoders are the default's."""
    res = config["resolutions"]
    if seed != config["seed"] or isinstance(variant.start, tuple):
        return False
    first = 0 if variant.start == "teacher" else res.index(variant.start) + 1
    return ([r for r, _ in variant.stages] == res[first:first + len(variant.stages)]
            and not any(_changes(config, r, over) for r, over in variant.stages))


def _changes(config, resolution, overrides):
    """The settings of `overrides` that differ from the default run's stage at `resolution`."""
    default = {**decoder_stage(config, config["resolutions"].index(resolution)),
               "growth_head": config["decoder"]["growth_head"]}
    return {k: v for k, v in overrides.items() if default.get(k) != v}


def decoder_dir(config, variant, seed):
    """Where the variant's decoders go: the default run's decoder folder where it is the default, else the first
    variant's that trains the same stages from the same start (growth_head's default is growth_factor's 2x)."""
    r = config["results"]
    if is_default(variant, config, seed):
        return f"{r}/decoder"
    same = next(v for v in decoder_variants(config) if _training(v, config) == _training(variant, config))
    return f"{r}/ablations/{same.key}/seed{seed}"


def _training(variant, config):
    return variant.start, [(r, sorted(_changes(config, r, over).items())) for r, over in variant.stages]


def teacher_snapshot_path(results, step):
    return f"{results}/teacher/snapshots/step-{step:08d}.pt"


def teacher_dir(config, variant):
    """The weaker teacher's folder of the teacher_quality ablation: its latents (snapshots) and its pairs."""
    step = variant.start[1] if isinstance(variant.start, tuple) else ""
    return f"{config['results']}/ablations/teacher{step}"


def init_path(config, variant, seed, index):
    """What stage `index` of the variant starts from: its start for the first, the previous stage after."""
    r = config["results"]
    if index > 0:
        return layout.decoder_path(decoder_dir(config, variant, seed), variant.stages[index - 1][0])
    if variant.start == "teacher":
        return layout.teacher_path(r)
    if isinstance(variant.start, tuple):
        return teacher_snapshot_path(r, variant.start[1])
    return layout.decoder_path(f"{r}/decoder", variant.start)


def stage_arguments(config, variant, seed, index):
    """`train_decoder`'s keywords for stage `index` of the variant at training seed `seed`: the default run's
    stage at that resolution (`workflow.decoder_stage`) with the variant's settings, inputs and seed."""
    res, overrides = variant.stages[index]
    kwargs = decoder_stage({**config, "seed": seed}, config["resolutions"].index(res))
    out_dir = decoder_dir(config, variant, seed)
    kwargs.update(overrides, init_path=init_path(config, variant, seed, index), run_dir=f"{out_dir}/{res}",
                  out_path=layout.decoder_path(out_dir, res))
    if isinstance(variant.start, tuple):  # a weaker teacher: its own latents
        kwargs["latents_dir"] = f"{teacher_dir(config, variant)}/latents"
    if kwargs.get("objective", "reconstruction") != "reconstruction":
        kwargs["pairs_dir"] = f"{teacher_dir(config, variant)}/pairs"
    if "curve_points" in kwargs:
        kwargs["curve_points"] = 0  # the ablations judge the last step only
    return kwargs


# ----------------------------------------------------------------------------
# The table, its summary over seeds, and the paper's claims.

METRICS = ("fd_judge", "kid_judge", "precision_judge", "recall_judge", "swd_finest", "fd_effnet")


SR_METRICS = ("psnr", "ssim", "judge_distance", "effnet_distance", "sec_per_image", "steps")


def table(rows, *, sr_path=None, sr_resolution=None, seed=0):
    """results/ablations.csv: one row per measured thing. `rows`: dicts with ablation, variant, seed, resolution,
    record (an evaluation record's path), and optionally samples and base_samples (paths: the placement error of
    the variant's samples against the base decoder's for the same z) and run_dirs (training folders whose
    timing.json seconds add up to the row's training time). `sr_path`: the sr_inversion ablation's table
    (`inverse_study.sr_at_matched_compute`, at `sr_resolution`), appended as its rows with their own metrics."""
    import json

    import numpy as np
    import pandas as pd

    from .data import to_model
    from .decoder import placement_error
    from .evaluate import load_samples
    out = []
    for row in rows:
        record = json.loads(pathlib.Path(row["record"]).read_text())
        entry = {k: row[k] for k in ("ablation", "variant", "seed", "resolution")}
        entry.update(nfe=record["nfe"], **{m: record[m] for m in METRICS}, placement=np.nan,
                     placement_shuffled=np.nan, seconds=np.nan)
        if row.get("base_samples"):
            high = to_model(load_samples(row["samples"])["images"])
            low = to_model(load_samples(row["base_samples"])["images"])[:len(high)]
            entry["placement"] = float(placement_error(high, low).mean())
            entry["placement_shuffled"] = float(placement_error(high, low.roll(1, 0)).mean())
        if row.get("run_dirs"):
            entry["seconds"] = sum(json.loads(pathlib.Path(d, "timing.json").read_text())["seconds"]
                                   for d in row["run_dirs"])
        out.append(entry)
    if sr_path is not None:
        for r in pd.read_csv(sr_path).itertuples():
            out.append({"ablation": "sr_inversion", "variant": r.method if r.method == "inversion" else
                        f"{r.method}-{r.budget:g}x", "seed": seed, "resolution": sr_resolution,
                        "kid_judge": r.kid_judge, **{m: getattr(r, m) for m in SR_METRICS}})
    return pd.DataFrame(out)


def summarise(ablation_table):
    """Mean, spread (max - min over seeds) and seed count of each metric per (ablation, variant, resolution)."""
    metrics = [m for m in METRICS + ("placement", "seconds") + SR_METRICS if m in ablation_table]
    g = ablation_table.groupby(["ablation", "variant", "resolution"], sort=False)[metrics]
    out = g.mean().add_suffix("_mean").join(g.agg(lambda v: v.max() - v.min()).add_suffix("_spread"))
    return out.join(g.size().rename("seeds")).reset_index()


def difference(summary, ablation, a, b, metric, *, resolution=None):
    """(mean_a - mean_b, whether it exceeds the larger seed spread of the two, text) for one metric."""
    s = summary[summary.ablation == ablation]
    if resolution is not None:
        s = s[s.resolution == resolution]
    ra, rb = (s[s.variant == v].iloc[0] for v in (a, b))
    d = ra[f"{metric}_mean"] - rb[f"{metric}_mean"]
    spread = max(ra[f"{metric}_spread"], rb[f"{metric}_spread"])
    seeds = min(ra.seeds, rb.seeds)
    clear = seeds > 1 and abs(d) > spread
    text = (f"{metric} {ra[f'{metric}_mean']:.4g} ({a}) vs {rb[f'{metric}_mean']:.4g} ({b}); "
            + (f"difference {d:+.3g}, seed spread {spread:.3g}" if seeds > 1 else "one seed: no spread"))
    return d, clear, text



def _claim(claim, holds, measured, clear):
    return {"claim": claim, "holds": bool(holds), "beyond_seed_spread": None if clear is None else bool(clear),
            "measured": measured}


def claims(summary, *, metric="fd_judge"):
    """Each ablation's claim from the paper, judged on the seed means in `metric` (the judge's, which no
    generator trained against) and placement, with whether the difference exceeds the seeds' spread. A claim
    whose variants are not in the summary (a partial run, a config without growth) is left out."""
    import pandas as pd
    variants = {a: set(summary[summary.ablation == a].variant) for a in set(summary.ablation)}

    def has(ablation, *names):
        return set(names) <= variants.get(ablation, set())
    out = []
    teachers = summary[(summary.ablation == "teacher_quality") & summary.variant.str.startswith("teacher_ode-")]
    if len(teachers) > 1:
        ranked = teachers.sort_values(f"{metric}_mean").variant.str.removeprefix("teacher_ode-")
        best, worst = ranked.iloc[0], ranked.iloc[-1]
        pairs = [f"{o}-{t}" for o in ("reconstruction", "distillation") for t in (best, worst)]
        if has("teacher_quality", *pairs):
            gap = difference(summary, "teacher_quality", f"reconstruction-{worst}", f"distillation-{worst}", metric)
            out.append(_claim(f"with the weakest teacher ({worst}), L_rec + GAN beats L_dstl + GAN (paper Fig. 5)",
                              gap[0] < 0, gap[2], gap[1]))
            rise = {o: difference(summary, "teacher_quality", f"{o}-{worst}", f"{o}-{best}", metric)[0]
                    for o in ("reconstruction", "distillation")}
            rows = summary[(summary.ablation == "teacher_quality") & summary.variant.isin(pairs)]
            spread = rows[f"{metric}_spread"].max()
            out.append(_claim(f"L_rec + GAN degrades less than L_dstl + GAN from {best} to {worst}",
                              rise["reconstruction"] < rise["distillation"],
                              f"rise L_rec {rise['reconstruction']:+.3g}, L_dstl {rise['distillation']:+.3g}; "
                              f"largest seed spread {spread:.3g}",
                              rows.seeds.min() > 1 and abs(rise["reconstruction"] - rise["distillation"]) > spread))
    if has("growth_factor", "2x", "4x"):
        d, clear, text = difference(summary, "growth_factor", "4x", "2x", metric)
        ref = summary[(summary.ablation == "growth_factor") & (summary.variant == "2x")][f"{metric}_mean"].iloc[0]
        out.append(_claim("one 4x growth stage is comparable to two 2x stages (within 1.25x; paper Table 2)",
                          d <= 0.25 * ref, text, clear))
    if has("placement", "full", "no_rec"):
        d, clear, text = difference(summary, "placement", "no_rec", "full", "placement")
        out.append(_claim("L_rec keeps objects in place: without it the placement error grows (paper Figs. 3-4)",
                          d > 0, text, clear))
    if has("placement", "full", "no_gan"):
        d, clear, text = difference(summary, "placement", "no_gan", "full", metric)
        out.append(_claim("the GAN term brings the detail: without it quality drops (paper Figs. 3-4)", d > 0, text,
                          clear))
    if len(variants.get("growth_head", ())) == 2:
        a, b = summary[summary.ablation == "growth_head"].variant.iloc[:2]
        d, clear, text = difference(summary, "growth_head", a, b, "placement")
        text_q = difference(summary, "growth_head", a, b, metric)[2]
        out.append(_claim(f"the {a} head (the config's) places objects at least as well as the {b} head",
                          d <= 0, f"{text}; {text_q}", clear))
    if has("sr_inversion", "inversion"):
        rows = summary[summary.ablation == "sr_inversion"].set_index("variant")
        sr = rows["judge_distance_mean"]
        # Optimisation that the budget left no step (from the inversion's latent, at 1x) is the inversion itself.
        matched = [v for v in sr.index if v.endswith("-1x") and rows.loc[v, "steps_mean"] > 0]
        out.append(_claim("super-resolution: inversion beats latent optimisation given the same time per image "
                          "(paper Sec. 5.2)", bool(matched) and all(sr["inversion"] < sr[v] for v in matched),
                          "judge_distance " + ", ".join(f"{v} {sr[v]:.4g} ({rows.loc[v, 'steps_mean']:g} steps)"
                                                        for v in sr.index), None))
    steps = summary[summary.ablation == "teacher_steps"]
    for r in sorted(set(steps.resolution)):
        at = steps[steps.resolution == r].set_index("variant")[f"{metric}_mean"]
        if "pagoda" in at and len(at) > 1:
            one = at.pop("pagoda")
            out.append(_claim(f"one PaGoDA step beats the teacher's Heun sampler at every budget tried at {r}x{r}",
                              (at > one).all(), f"pagoda {one:.4g}; " + ", ".join(f"{v} {at[v]:.4g}" for v in at.index),
                              None))  # no training seeds: one evaluation each
    return pd.DataFrame(out, columns=["claim", "holds", "beyond_seed_spread", "measured"])


# ----------------------------------------------------------------------------
# The jobs of the ablation target (rules/ablations.smk): `python -m pagoda.ablations JOB PARAMS`.

def encode_teacher(*, latents_dir=None, pairs_dir, teacher_path, n_pairs, encode, seed=0, device="auto"):
    """A weaker teacher's data: its inversions of the training images into `latents_dir` (as the default run's
    encode stage, `encode` its keywords; skipped when None) and its noise -> sample pairs in `pairs_dir`."""
    from . import encode as enc
    summary = {}
    if latents_dir is not None:
        summary = enc.encode_dataset(**{**encode, "teacher_path": teacher_path, "out_dir": latents_dir},
                                     progress=False)
        enc.save_summary(f"{latents_dir}/summary.json", summary)
    enc.teacher_pairs(teacher_path=teacher_path, out_dir=pairs_dir, n_pairs=n_pairs, num_points=encode["num_points"],
                      clamp=encode["clamp"], batch_size=encode["batch_size"], seed=seed, device=device,
                      progress=False)
    return summary


JOBS = {"encode": ("pagoda.ablations:encode_teacher", {}),
        "train": ("pagoda.decoder:train_decoder", {"progress": False}),  # a log file: no progress bar
        "evaluate": ("pagoda.evaluate:evaluate", {}),
        "sr": ("pagoda.inverse_study:run_sr_at_matched_compute", {})}


def main(argv=None):
    """One job of the ablation target: python -m pagoda.ablations {encode,train,evaluate,sr} 'JSON keywords'."""
    from .launch import job_main
    job_main(JOBS, argv, description=main.__doc__)


if __name__ == "__main__":
    main()
