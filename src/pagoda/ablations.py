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

A decoder variant is a chain of decoder stages: it starts from the teacher (or one of its snapshots) or from a
decoder of the default run, and each stage is the default run's stage at that resolution with a few settings
changed. Only its training seed differs between a variant's rows.
"""

import dataclasses

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
    """Where the variant's decoders go: the default run's decoder folder where it is the default."""
    r = config["results"]
    return f"{r}/decoder" if is_default(variant, config, seed) else f"{r}/ablations/{variant.key}/seed{seed}"


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
