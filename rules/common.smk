# Shared helpers (paths, semantic config checks, the papermill command), included first by the Snakefile.
import json

from pagoda import ablations, encode, evaluate, layout
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

# Every stage runs its notebook with papermill; the executed copy is the rule's log, so it is kept
# when the stage fails. OMP_NUM_THREADS gives torch the job's threads; PYTHONPATH lets the conda
# environment (envs/pagoda.yaml, which does not install this package) import pagoda from src/.
PAPERMILL = (
    "PYTHONPATH=src OMP_NUM_THREADS={threads} papermill {input.notebook} {log.notebook} "
    "-k python3 --log-output --no-progress-bar -y {params.parameters:q} > {log.stderr} 2>&1"
)


def data_file(split, resolution):
    """Arrays for embedded data and image folders; a stream description (.json) for imagenet."""
    ext = "json" if config["data"]["source"] == "imagenet" else "npz"
    return f"{R}/data/{split}_{resolution}.{ext}"



LATENTS = f"{R}/latents/summary.json"
# The encoder's shard files: one job each, so that a cluster runs them in parallel.
LATENT_SHARDS = [f"{R}/latents/shard-{k:05d}.npz" for k in range(
    encode.num_shards(config["encode"]["n_images"], config["encode"]["shard_size"]))]


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
    if not evaluate.applies(method, res, RESOLUTIONS):
        raise ValueError(f"{method} has no row at {res}")
    if method == "teacher_ode":
        return {"teacher": TEACHER}
    if method == "pagoda":
        return {"decoder": decoder_path(res)}
    if method in evaluate.BICUBIC_SOURCE:
        return {"base_samples": samples_path(evaluate.BICUBIC_SOURCE[method], BASE)}
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
