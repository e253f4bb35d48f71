"""The guidance target (`snakemake --cores all results/guidance_table.csv`; README, "Guidance"; PaGoDA Sec. 4).

For each guidance scale omega of a grid: the teacher's classifier-free-guided Heun ODE at the base resolution
(bicubic-upsampled above it) and the guided one-step decoder at every resolution, judged like the default
table's rows plus the judge's accuracy on the intended class. Two guided decoders are compared at the base
resolution: real images labelled by the omega estimator (the paper) and by uniform draws (the simpler choice).
"""

import json
import pathlib

import numpy as np
import pandas as pd

from . import layout
from .workflow import decoder_stage

REAL_OMEGAS = ("estimator", "uniform")  # how the guided GAN labels real images: the paper's estimator, uniform draws
TABLE_COLUMNS = ["method", "real_omega", "omega", "resolution", "nfe", "fd_judge", "precision_judge", "recall_judge",
                 "class_accuracy_judge", "fd_effnet", "images_per_sec"]


# ----------------------------------------------------------------------------
# Where the target writes (under results/guidance) and what it trains.

def guidance_dir(config):
    return f"{config['results']}/guidance"


def teacher_path(config):
    """The teacher with a null class: the default teacher where it is trained with label dropout, else one of
    the guidance target's own (guidance.label_dropout; an imported teacher has no null class)."""
    if config["teacher"].get("label_dropout"):
        return layout.teacher_path(config["results"])
    return f"{guidance_dir(config)}/teacher/teacher.pt"


def estimator_path(config):
    return f"{guidance_dir(config)}/estimator/omega.pt"


def estimator_summary_path(config):
    return f"{guidance_dir(config)}/estimator/omega.json"


def real_omegas_path(config):
    return f"{guidance_dir(config)}/estimator/real_omegas.npz"


def decoder_dir(config, real_omega):
    return f"{guidance_dir(config)}/decoder-{real_omega}"


def stage_arguments(config, index, real_omega):
    """`train_decoder`'s keywords for guided stage `index`: the default stage's settings, guided latents and omega."""
    res, g = config["resolutions"], config["guidance"]
    out = decoder_dir(config, real_omega)
    return {**decoder_stage(config, index), "latents_dir": f"{guidance_dir(config)}/latents",
            "init_path": teacher_path(config) if index == 0 else layout.decoder_path(out, res[index - 1]),
            "run_dir": f"{out}/{res[index]}", "out_path": layout.decoder_path(out, res[index]), "curve_points": 0,
            "omega_range": g["omega_range"],
            "real_omegas_path": real_omegas_path(config) if real_omega == "estimator" else None}


def record_path(config, method, omega, resolution, real_omega=None):
    name = method if real_omega is None else f"{method}-{real_omega}"
    return layout.record_path(f"{guidance_dir(config)}/eval", f"{name}-w{omega:g}", resolution)


def rows(config):
    """The rows of guidance_table.csv: {method, real_omega, omega, resolution, record}."""
    res, out = config["resolutions"], []
    for omega in config["guidance"]["omega_grid"]:
        out += [dict(method="teacher_ode" if r == res[0] else "teacher_ode_bicubic", real_omega=None, omega=omega,
                     resolution=r, record=record_path(config, "teacher_ode" if r == res[0] else "teacher_ode_bicubic",
                                                      omega, r)) for r in res]
        out += [dict(method="pagoda", real_omega=real, omega=omega, resolution=r,
                     record=record_path(config, "pagoda", omega, r, real))
                for real in REAL_OMEGAS for r in res]
    return out


# ----------------------------------------------------------------------------
# The table and its claims.

def table(rows):
    """guidance_table.csv from rows {method, real_omega, omega, record}: one row per (method, omega, resolution)."""
    records = layout.read_records([row["record"] for row in rows])
    out = [{**rec, **{k: row.get(k) for k in ("method", "real_omega", "omega")}} for row, rec in zip(rows, records)]
    frame = pd.DataFrame(out).reindex(columns=TABLE_COLUMNS)  # class_accuracy_judge: guided records only
    return frame.sort_values(["method", "real_omega", "resolution", "omega"], na_position="first", ignore_index=True)


def read_estimator(summary_path, labels_path):
    """(the estimator's training summary, its omegas of the real images), or (None, None) where there is none."""
    if summary_path is None:
        return None, None
    return json.loads(pathlib.Path(summary_path).read_text()), np.load(labels_path)["omega"]


def _claim(claim, holds, measured):
    return {"claim": claim, "holds": bool(holds), "measured": measured}


def claims(guidance_table, *, base_resolution, tolerance=0.25):
    """Where one step follows the teacher's guidance trade-off, in words and numbers.

    `tolerance`: PaGoDA follows the teacher at an omega when its class accuracy is within that much (absolute)
    of the teacher's and its fd_judge within a factor 1 + 4 tolerance of the teacher's."""
    t = guidance_table
    teacher = t[(t.method == "teacher_ode") & (t.resolution == base_resolution)].set_index("omega")
    out = []
    for real_omega, at in t[t.method == "pagoda"].groupby("real_omega"):
        base = at[at.resolution == base_resolution].sort_values("omega").set_index("omega")
        acc = base.class_accuracy_judge
        out.append(_claim(f"guidance binds in one step ({real_omega} real omegas): class accuracy grows from the "
                          "smallest to the largest omega",
                          acc.iloc[-1] > acc.iloc[0],
                          f"{acc.index[0]:g}: {acc.iloc[0]:.3f} -> {acc.index[-1]:g}: {acc.iloc[-1]:.3f}"))
        common = base.index.intersection(teacher.index)
        near = [(w, abs(base.class_accuracy_judge[w] - teacher.class_accuracy_judge[w]) <= tolerance
                 and base.fd_judge[w] <= (1 + 4 * tolerance) * teacher.fd_judge[w]) for w in common]
        followed = [w for w, ok in near if ok]
        out.append(_claim(f"one step follows the teacher's curve ({real_omega} real omegas) at every omega",
                          len(followed) == len(common),
                          "follows at " + (", ".join(f"{w:g}" for w in followed) or "none") + "; leaves at " +
                          (", ".join(f"{w:g}" for w, ok in near if not ok) or "none")))
    top = t[(t.method == "pagoda") & (t.resolution == t.resolution.max()) & (t.resolution != base_resolution)]
    for real_omega, at in top.groupby("real_omega"):
        acc = at.sort_values("omega").set_index("omega").class_accuracy_judge
        out.append(_claim(f"guidance survives growth ({real_omega} real omegas): at the top resolution class "
                          "accuracy grows with omega too", acc.iloc[-1] > acc.iloc[0],
                          f"{acc.index[0]:g}: {acc.iloc[0]:.3f} -> {acc.index[-1]:g}: {acc.iloc[-1]:.3f}"))
    base = t[(t.method == "pagoda") & (t.resolution == base_resolution)]
    if base.real_omega.nunique() == 2:
        mean = base.groupby("real_omega").fd_judge.mean()
        out.append(_claim("the omega estimator's labels beat uniform labels for real images (mean fd_judge over "
                          "omega)", mean.get("estimator", np.inf) < mean.get("uniform", np.inf),
                          ", ".join(f"{k} {v:.4g}" for k, v in mean.items())))
    return pd.DataFrame(out, columns=["claim", "holds", "measured"])


def encode_guided(*, summary_path, **kwargs):
    """The guided latents (`encode.encode_dataset` with omega_range) and their summary file."""
    from . import encode
    summary = encode.encode_dataset(**kwargs, progress=False)
    encode.save_summary(summary_path, summary)
    return summary


def train_estimator(*, labels_path, summary_path, data_dir, **kwargs):
    """The omega estimator (`guidance.train_omega_estimator`), then its labels of the real training images;
    both summaries in `summary_path`."""
    from . import guidance
    summary = guidance.train_omega_estimator(**kwargs, progress=False)
    summary["real_images"] = guidance.label_real_images(estimator_path=kwargs["out_path"], data_dir=data_dir,
                                                        out_path=labels_path)
    pathlib.Path(summary_path).write_text(json.dumps(summary, indent=1))
    return summary


JOBS = {"teacher": ("pagoda.teacher:train_teacher", {"progress": False}),  # a log file: no progress bar
        "encode": ("pagoda.guidance_study:encode_guided", {}),
        "estimator": ("pagoda.guidance_study:train_estimator", {}),
        "train": ("pagoda.decoder:train_decoder", {"progress": False}),
        "evaluate": ("pagoda.evaluate:evaluate", {})}


def main(argv=None):
    """One job of the guidance target: python -m pagoda.guidance_study JOB 'JSON keywords'."""
    from .launch import job_main
    job_main(JOBS, argv, description=main.__doc__)


if __name__ == "__main__":
    main()
