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
