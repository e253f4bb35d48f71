# Shared helpers (paths, semantic config checks, the papermill command), included first by the Snakefile.
import json

from pagoda.workflow import check_config

check_config(config)

R = config["results"]
RESOLUTIONS = config["resolutions"]
BASE = RESOLUTIONS[0]
SPLITS = ["train", "test"]
TEACHER = f"{R}/teacher/teacher.pt"

# Every stage runs its notebook with papermill; the executed copy is the rule's log, so it is kept
# when the stage fails. OMP_NUM_THREADS gives torch the job's threads; PYTHONPATH lets the conda
# environment (envs/pagoda.yaml, which does not install this package) import pagoda from src/.
PAPERMILL = (
    "PYTHONPATH=src OMP_NUM_THREADS={threads} papermill {input.notebook} {log.notebook} "
    "-k python3 --log-output --no-progress-bar -y {params.parameters:q} > {log.stderr} 2>&1"
)


def data_file(split, resolution):
    return f"{R}/data/{split}_{resolution}.npz"


def notebook_parameters(**parameters):
    """The papermill -y argument: parameters as JSON (a subset of YAML)."""
    return json.dumps(parameters)

LATENTS = f"{R}/latents/summary.json"


def decoder_path(res):
    return f"{R}/decoder/{res}/decoder.pt"


def decoder_init(res):
    """Stage 2 starts from the teacher; each growth stage from the previous resolution's decoder."""
    i = RESOLUTIONS.index(int(res))
    return TEACHER if i == 0 else decoder_path(RESOLUTIONS[i - 1])


def decoder_parameters(res):
    i = RESOLUTIONS.index(int(res))
    dec, stage = config["decoder"], config["decoder"]["stages"][i]
    return notebook_parameters(
        data_dir=f"{R}/data",
        latents_dir=f"{R}/latents",
        init_path=decoder_init(res),
        run_dir=f"{R}/decoder/{res}",
        out_path=decoder_path(res),
        resolution=int(res),
        steps=stage["steps"],
        batch_size=dec["batch_size"],
        lr_g=dec["lr_g"],
        lr_d=dec["lr_d"],
        gan_weight=stage["gan_weight"],
        weighting=stage["weighting"],
        ema_decay=dec["ema_decay"],
        distance=dec["distance"],
        objective=dec["objective"],
        feature_size=stage["feature_size"],
        growth_channels=stage.get("growth_channels"),
        growth_res_blocks=stage.get("growth_res_blocks", 2),
        trainable_output_blocks=stage.get("trainable_output_blocks"),
        growth_head=dec["growth_head"],
        sigma_max=dec["sigma_max"],
        checkpoint_every=dec["checkpoint_every"],
        previous_path=decoder_path(RESOLUTIONS[i - 1]) if i > 0 else None,
        base_path=decoder_path(BASE) if i > 0 else None,
        seed=config["seed"],
        device=config["device"],
    )
