# Shared helpers (paths, semantic config checks, the papermill command), included first by the Snakefile.
import json
import pathlib

from pagoda import ablations, guidance_study, layout, plan
from pagoda.workflow import check_config, decoder_stage, notebook_parameters

check_config(config)

R = config["results"]
RESOLUTIONS = config["resolutions"]
BASE = RESOLUTIONS[0]
SPLITS = ["train", "test"]
TEACHER = layout.teacher_path(R)
# The teacher run's EMA at fewer steps: the weaker teachers of the teacher_quality ablation.
TEACHER_SNAPSHOT_STEPS = ablations.teacher_snapshot_steps(config)
TEACHER_SNAPSHOTS = [ablations.teacher_snapshot_path(R, s) for s in TEACHER_SNAPSHOT_STEPS]

# Every stage runs its notebook with papermill (pagoda.notebook: papermill's command line with the
# kernel on Unix sockets, since TCP ports race between kernels that start together); the executed copy
# is the rule's log, so it is kept when the stage fails. OMP_NUM_THREADS gives torch the job's threads;
# PYTHONPATH lets the conda environment (envs/pagoda.yaml, which does not install this package) import
# pagoda from src/.
PAPERMILL = (
    "PYTHONPATH=src OMP_NUM_THREADS={threads} python -m pagoda.notebook {input.notebook} {log.notebook} "
    "-y {params.parameters:q} > {log.stderr} 2>&1"
)


def data_file(split, resolution):
    """Arrays for embedded data and image folders; a stream description (.json) for imagenet."""
    ext = "json" if config["data"]["source"] == "imagenet" else "npz"
    return f"{R}/data/{split}_{resolution}.{ext}"



LATENTS = f"{R}/latents/summary.json"
# The encoder's shard files: one job each, so that a cluster runs them in parallel.
LATENT_SHARDS = [f"{R}/latents/shard-{k:05d}.npz" for k in range(
    plan.num_shards(config["encode"]["n_images"], config["encode"]["shard_size"]))]


def teacher_parameters():
    """Notebook 02's parameters: train the teacher, or import it when teacher.import_path is set."""
    t = config["teacher"]
    return notebook_parameters(
        data_dir=f"{R}/data",
        resolution=BASE,
        run_dir=f"{R}/teacher",
        teacher_path=TEACHER,
        network=t["network"],
        import_path=t.get("import_path"),
        steps=t.get("steps", 0),
        batch_size=t.get("batch_size", 0),
        lr=t.get("lr", 0),
        lr_warmup_steps=t.get("lr_warmup_steps", 0),
        ema_decay=t.get("ema_decay", 0),
        checkpoint_every=t.get("checkpoint_every", 1),
        label_dropout=t.get("label_dropout", 0.0),
        snapshot_steps=TEACHER_SNAPSHOT_STEPS,
        sampler_points=t["sampler_points"],
        seed=config["seed"],
        device=config["device"],
        nproc_per_node=config["nproc_per_node"],
    )


def encode_parameters():
    """encode_dataset's keyword arguments, shared by the shard jobs and the notebook that sums them up."""
    enc = config["encode"]
    return dict(
        teacher_path=TEACHER,
        data_dir=f"{R}/data",
        resolution=BASE,
        out_dir=f"{R}/latents",
        n_images=enc["n_images"],
        flips=True,
        num_points=enc["num_points"],
        clamp=enc["clamp"],
        shard_size=enc["shard_size"],
        batch_size=enc["batch_size"],
        seed=config["seed"],
        device=config["device"],
    )


def decoder_path(res):
    return layout.decoder_path(f"{R}/decoder", res)


def decoder_init(res):
    """Stage 2 starts from the teacher; each growth stage from the previous resolution's decoder."""
    return decoder_stage(config, RESOLUTIONS.index(int(res)))["init_path"]


def decoder_parameters(res):
    """Notebook 06_decoder's parameters (Stage 2) or 06_growth's (a growth stage, which also judges its snapshots)."""
    i = RESOLUTIONS.index(int(res))
    extra = {} if i == 0 else dict(
        base_path=decoder_path(BASE),
        judge_path=judge_path(res),
        reference_path=reference_path(res),
        curve_samples=config["decoder"]["curve_samples"],
        curve_path=learning_curve_path(res),
        figures_dir=f"{R}/figures",
    )
    return notebook_parameters(**decoder_stage(config, i), nproc_per_node=config["nproc_per_node"], **extra)


def learning_curve_path(res):
    return f"{R}/decoder/{res}/learning_curve.csv"


def judge_path(res):
    return layout.judge_path(f"{R}/judge", res)


def reference_path(res):
    return layout.reference_path(f"{R}/eval", res)


def record_path(method, res):
    return layout.record_path(f"{R}/eval", method, res)


def samples_path(method, res):
    return layout.samples_path(f"{R}/eval", method, res)


def evaluation_inputs(wildcards):
    """What one (method, resolution) row needs besides its reference statistics."""
    method, res = wildcards.method, int(wildcards.res)
    if not plan.applies(method, res, RESOLUTIONS):
        raise ValueError(f"{method} has no row at {res}")
    if method == "teacher_ode":
        return {"teacher": TEACHER}
    if method == "pagoda":
        return {"decoder": decoder_path(res)}
    if method in plan.BICUBIC_SOURCE:
        return {"base_samples": samples_path(plan.BICUBIC_SOURCE[method], BASE)}
    return {"data": data_file("test", BASE if method == "data_bicubic" else res)}


def evaluation_parameters(wildcards):
    ev = config["evaluate"]
    return notebook_parameters(
        evaluations=[[wildcards.method, int(wildcards.res)]],
        resolutions=RESOLUTIONS,
        eval_dir=f"{R}/eval",
        judges_dir=f"{R}/judge",
        decoder_dir=f"{R}/decoder",
        teacher_path=TEACHER,
        data_dir=f"{R}/data",
        n_samples=ev["n_samples"],
        num_points=ev["num_points"],
        feature_size=ev["feature_size"],
        k=ev["k"],
        swd_min_resolution=ev["swd_min_resolution"],
        swd_descriptors_per_image=ev["swd_descriptors_per_image"],
        swd_projections=ev["swd_projections"],
        inception_dir=ev["inception_dir"],
        keep_samples=ev["keep_samples"],
        batch_size=ev["batch_size"],
        seed=config["seed"],
        device=config["device"],
    )


FIGURES = ["fd_vs_resolution", "recall_vs_resolution", "speed_quality"] + [f"samples_{r}" for r in RESOLUTIONS]

TOP = RESOLUTIONS[-1]
INVERSE_FIGURES = [f"inverse_{t}" for t in (f"sr{TOP // BASE}", "inpaint_box", "inpaint_random", "deblur")] + [
    "class_transfer", "interpolation"]


# ----------------------------------------------------------------------------
# The ablations target (rules/ablations.smk).

ABL = config["ablations"]
VARIANTS = {v.key: v for v in ablations.decoder_variants(config)}
ABLATION_SEEDS = ABL["seeds"]
TEACHER_STEPS_POINTS = ABL["teacher_steps_points"]
SR_COMPUTE = f"{R}/ablations/eval/sr_compute.csv"


def ablation_job(job):
    """The shell command of one job: `python -m pagoda.ablations JOB 'JSON keywords'`."""
    return (f"PYTHONPATH=src OMP_NUM_THREADS={{threads}} python -m pagoda.ablations {job} {{params.kwargs:q}} "
            "> {log} 2>&1")


def teacher_pairs_path(step):
    return f"{R}/ablations/teacher{step}/pairs/pairs-00000.npz"


def latents_input(latents_dir):
    return LATENTS if latents_dir == f"{R}/latents" else f"{latents_dir}/summary.json"


def variant_stage(wildcards):
    """(variant, stage index, train_decoder keywords) of one trained decoder of the ablations."""
    variant = VARIANTS[wildcards.key]
    index = [r for r, _ in variant.stages].index(int(wildcards.res))
    return variant, index, ablations.stage_arguments(config, variant, int(wildcards.seed), index)


def variant_stage_inputs(wildcards):
    _, _, kwargs = variant_stage(wildcards)
    inputs = {"init": kwargs["init_path"], "latents": latents_input(kwargs["latents_dir"]),
              "data": data_file("train", wildcards.res)}
    if "pairs_dir" in kwargs:
        inputs["pairs"] = f"{kwargs['pairs_dir']}/pairs-00000.npz"
    return inputs


def encode_teacher_kwargs(step):
    snapshot = step != ""
    return json.dumps(dict(
        teacher_path=ablations.teacher_snapshot_path(R, int(step)) if snapshot else TEACHER,
        latents_dir=f"{R}/ablations/teacher{step}/latents" if snapshot else None,
        pairs_dir=f"{R}/ablations/teacher{step}/pairs", n_pairs=ABL["teacher_pairs"],
        encode={k: v for k, v in encode_parameters().items() if k not in ("teacher_path", "out_dir", "device")},
        seed=config["seed"], device=config["device"]))


def ablation_record(key, seed):
    """A variant's evaluation record: the default table's row where the variant is the default run."""
    variant = VARIANTS[key]
    if ablations.is_default(variant, config, seed) and ABL["n_samples"] == config["evaluate"]["n_samples"]:
        return record_path("pagoda", variant.resolution)
    trained_as = pathlib.Path(ablations.decoder_dir(config, variant, seed)).parent.name  # one run, one record
    return f"{R}/ablations/eval/{trained_as}_seed{seed}.json"


def teacher_record(step):
    """The judged samples of one teacher of teacher_quality: the default table's row for the teacher itself."""
    if step == "" and ABL["n_samples"] == config["evaluate"]["n_samples"]:
        return record_path("teacher_ode", BASE)
    return f"{R}/ablations/eval/teacher{step}.json"


def evaluate_kwargs(method, res, output, *, n_samples=ABL["n_samples"], **extra):
    """`evaluate.evaluate`'s keywords: the evaluation's settings, the ablations' sample count."""
    ev = config["evaluate"]
    return json.dumps(dict(
        method=method, resolution=int(res), resolutions=RESOLUTIONS, reference_path=reference_path(res),
        judge_path=judge_path(res), out_path=output.record, samples_path=output.samples,
        n_samples=n_samples, seed=config["seed"], data_dir=f"{R}/data",
        feature_size=ev["feature_size"], k=ev["k"], swd_min_resolution=ev["swd_min_resolution"],
        swd_descriptors_per_image=ev["swd_descriptors_per_image"], swd_projections=ev["swd_projections"],
        inception_dir=ev["inception_dir"], keep_samples=ev["keep_samples"], batch_size=ev["batch_size"],
        device=config["device"], **extra))


def ablation_rows():
    """The rows of results/ablations.csv, as `ablations.table` reads them."""
    rows = []
    for key, v in VARIANTS.items():
        for seed in ABLATION_SEEDS:
            record, out_dir = ablation_record(key, seed), ablations.decoder_dir(config, v, seed)
            rows.append(dict(ablation=v.ablation, variant=v.name, seed=seed, resolution=v.resolution, record=record,
                             samples=layout.record_samples_path(record),
                             run_dirs=[f"{out_dir}/{r}" for r, _ in v.stages],
                             base_samples=samples_path("pagoda", BASE) if v.resolution != BASE else None))
    for step in ["", *map(str, TEACHER_SNAPSHOT_STEPS)]:
        rows.append(dict(ablation="teacher_quality", variant=f"teacher_ode-teacher{step}", seed=config["seed"],
                         resolution=BASE, record=teacher_record(step)))
    for r in RESOLUTIONS:
        rows.append(dict(ablation="teacher_steps", variant="pagoda", seed=config["seed"], resolution=r,
                         record=record_path("pagoda", r)))
        rows += [dict(ablation="teacher_steps", variant=f"heun_{2 * p - 1}nfe", seed=config["seed"], resolution=r,
                      record=f"{R}/ablations/eval/teacher_steps-points{p}_{r}.json") for p in TEACHER_STEPS_POINTS]
    return rows


ABLATION_FIGURES = sorted({f"{R}/figures/ablation_{v.ablation}.png" for v in VARIANTS.values()}) + [
    f"{R}/figures/ablation_{name}.png" for name in ("teacher_steps", "sr_inversion")]


# ----------------------------------------------------------------------------
# The guidance target (rules/guidance.smk).

GUIDE = config["guidance"]
GUIDED_TEACHER = guidance_study.teacher_path(config)
GUIDED_LATENTS = f"{R}/guidance/latents/summary.json"
GUIDED_ROWS = guidance_study.rows(config)
GUIDANCE_FIGURES = [f"{R}/figures/guidance_{name}.png" for name in ("curves", "samples", "estimator")]


def guidance_job(job):
    """The shell command of one job: `python -m pagoda.guidance_study JOB 'JSON keywords'`."""
    return (f"PYTHONPATH=src OMP_NUM_THREADS={{threads}} python -m pagoda.guidance_study {job} "
            "{params.kwargs:q} > {log} 2>&1")


def guided_teacher_kwargs():
    """train_teacher's keywords: the default teacher's settings, with label dropout."""
    t = config["teacher"]
    return dict(data_dir=f"{R}/data", resolution=BASE, run_dir=f"{R}/guidance/teacher", out_path=GUIDED_TEACHER,
                network=t["network"], total_steps=t.get("steps", 0), batch_size=t.get("batch_size", 0),
                lr=t.get("lr", 0), lr_warmup_steps=t.get("lr_warmup_steps", 0), ema_decay=t.get("ema_decay", 0),
                checkpoint_every=t.get("checkpoint_every", 1), label_dropout=GUIDE["label_dropout"],
                seed=config["seed"], device=config["device"])


def guided_encode_kwargs():
    """The default encoding's settings, with the guided teacher, omega_range, and one file of latents."""
    n = config["encode"]["n_images"]
    return {**encode_parameters(), "teacher_path": GUIDED_TEACHER, "out_dir": f"{R}/guidance/latents",
            "omega_range": GUIDE["omega_range"], "shard_size": 2 * n, "summary_path": GUIDED_LATENTS}


def guided_stage(wildcards):
    return guidance_study.stage_arguments(config, RESOLUTIONS.index(int(wildcards.res)), wildcards.real)


def guided_stage_inputs(wildcards):
    kwargs = guided_stage(wildcards)
    inputs = {"init": kwargs["init_path"], "latents": GUIDED_LATENTS, "data": data_file("train", wildcards.res)}
    if kwargs["real_omegas_path"]:
        inputs["real_omegas"] = kwargs["real_omegas_path"]
    return inputs


def guided_evaluation_inputs(wildcards):
    res, omega = int(wildcards.res), float(wildcards.omega)
    inputs = {"reference": reference_path(res), "judge": judge_path(res)}
    if wildcards.name == "teacher_ode":
        inputs["teacher"] = GUIDED_TEACHER
    elif wildcards.name == "teacher_ode_bicubic":
        inputs["base_samples"] = layout.record_samples_path(guidance_study.record_path(config, "teacher_ode", omega,
                                                                                       BASE))
    else:
        real = wildcards.name.split("-", 1)[1]
        inputs["decoder"] = layout.decoder_path(guidance_study.decoder_dir(config, real), res)
    return inputs


def guided_evaluate_kwargs(wildcards, input, output):
    method = wildcards.name.split("-", 1)[0]
    extra = {"teacher_ode": dict(teacher_path=input.get("teacher"), num_points=config["evaluate"]["num_points"]),
             "teacher_ode_bicubic": dict(base_samples_path=input.get("base_samples")),
             "pagoda": dict(decoder_path=input.get("decoder"))}[method]
    return evaluate_kwargs(method, wildcards.res, output, n_samples=GUIDE["n_samples"], omega=float(wildcards.omega),
                           **extra)
