"""Checks the workflow runs on a configuration before any job starts (beyond the JSON schema)."""

import yaml

from . import layout
from .plan import FASHION_MNIST_SIZE, check_resolutions

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
    objective = config["decoder"]["objective"]
    if objective != "reconstruction" and config["encode"]["teacher_pairs"] == 0:
        raise ValueError(f"decoder.objective = {objective} needs encode.teacher_pairs > 0")
    if objective != "reconstruction" and len(res) > 1:
        raise ValueError(f"decoder.objective = {objective} applies to Stage 2 only (its teacher pairs are "
                         f"{res[0]}x{res[0]} samples): list only the teacher's resolution, or use reconstruction")
    default_null_class = bool(config["teacher"].get("label_dropout"))
    if default_null_class and config["teacher"].get("import_path"):
        raise ValueError("teacher.label_dropout applies to a trained teacher; an imported one (teacher.import_path) "
                         "has no null class: set guidance.label_dropout to train the guidance target's own")
    if default_null_class == ("label_dropout" in config["guidance"]):
        raise ValueError("give label dropout once: teacher.label_dropout (the guidance target uses the default "
                         "teacher) or guidance.label_dropout (it trains a teacher of its own)")
    low, high = config["guidance"]["omega_range"]
    if low > high:
        raise ValueError(f"guidance.omega_range must be [low, high], got {[low, high]}")
    if sorted(config["guidance"]["omega_grid"]) != config["guidance"]["omega_grid"]:
        raise ValueError("guidance.omega_grid must be in increasing order (its curves are drawn in that order)")


def notebook_parameters(**parameters):
    """Papermill's -y argument: the parameters as one line of YAML.

    Not JSON: papermill reads -y with PyYAML (YAML 1.1), which takes JSON's 8e-06 (config/imagenet.yaml's
    lr_g) for a string; PyYAML's own writer gives 8.0e-06, read back as the float it is."""
    return yaml.safe_dump(parameters, default_flow_style=True, width=float("inf"), sort_keys=False).strip()


def decoder_stage(config, index):
    """`train_decoder`'s keywords for decoder stage `index` of `config` (0 = Stage 2 at the teacher's
    resolution, then one growth stage per resolution), with the inputs and outputs the workflow gives it."""
    results, resolutions, dec = config["results"], config["resolutions"], config["decoder"]
    stage, res = dec["stages"][index], resolutions[index]
    init = layout.teacher_path(results) if index == 0 else \
        layout.decoder_path(f"{results}/decoder", resolutions[index - 1])
    growth = dict(growth_channels=stage.get("growth_channels"), growth_res_blocks=stage.get("growth_res_blocks", 2),
                  trainable_output_blocks=stage.get("trainable_output_blocks"), growth_head=dec["growth_head"],
                  curve_points=dec["curve_points"])
    return dict(data_dir=f"{results}/data", latents_dir=f"{results}/latents", init_path=init,
                run_dir=f"{results}/decoder/{res}", out_path=layout.decoder_path(f"{results}/decoder", res),
                resolution=res, steps=stage["steps"], batch_size=stage.get("batch_size", dec["batch_size"]),
                lr_g=dec["lr_g"], lr_d=dec["lr_d"], beta2=dec["beta2"], gan_weight=stage["gan_weight"],
                weighting=stage["weighting"], ema_decay=dec["ema_decay"], distance=dec["distance"], backbones=dec["backbones"],
                backbone_source=dec["backbone_source"], objective=dec["objective"],
                feature_size=stage["feature_size"], sigma_max=dec["sigma_max"],
                checkpoint_every=dec["checkpoint_every"], seed=config["seed"], device=config["device"],
                **(growth if index > 0 else {}))
