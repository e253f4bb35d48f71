"""Checks the workflow runs on a configuration before any job starts (beyond the JSON schema)."""

import yaml

from .data import FASHION_MNIST_SIZE, check_resolutions

GROWTH_FACTORS = (2, 4)  # per decoder stage: 2x (default) or the paper's 4x jump ablation


def check_resolution_chain(resolutions):
    """The teacher's resolution first, then each decoder stage's, every step a growth by 2x or 4x."""
    for lo, hi in zip(resolutions[:-1], resolutions[1:]):
        if hi % lo or hi // lo not in GROWTH_FACTORS:
            raise ValueError(f"resolutions {resolutions}: {lo} -> {hi} is not a growth by one of "
                             f"{GROWTH_FACTORS}; list the teacher's resolution, then each decoder stage's")


def check_config(config):
    """Raise ValueError with a plain message for configurations the schema cannot rule out."""
    res = config["resolutions"]
    check_resolution_chain(res)
    data = config["data"]
    if data["source"] == "fashion_mnist":
        check_resolutions(res, FASHION_MNIST_SIZE)
        if data["channels"] != 1:
            raise ValueError("Fashion-MNIST is grey: set data.channels to 1")
    else:
        check_resolutions(res, max(res))
        if data["root"] is None or data["test_root"] is None:
            raise ValueError("data.source = image_folder needs data.root (train) and data.test_root (test)")
    stages = config["decoder"]["stages"]
    if len(stages) != len(res):
        raise ValueError(f"decoder.stages has {len(stages)} entries but resolutions {res} has {len(res)}: "
                         "give one stage per resolution (the teacher's first)")
    if config["decoder"]["objective"] != "reconstruction" and config["encode"]["teacher_pairs"] == 0:
        raise ValueError(f"decoder.objective = {config['decoder']['objective']} needs encode.teacher_pairs > 0")


def notebook_parameters(**parameters):
    """Papermill's -y argument: the parameters as one line of YAML.

    Not JSON: papermill reads -y with PyYAML (YAML 1.1), which takes JSON's 8e-06 (config/imagenet.yaml's
    lr_g) for a string; PyYAML's own writer gives 8.0e-06, read back as the float it is."""
    return yaml.safe_dump(parameters, default_flow_style=True, width=float("inf"), sort_keys=False).strip()
