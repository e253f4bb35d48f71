"""The paper-scale path rehearsed end to end at smoke size (README, "Rehearsal").

config/imagenet.yaml itself plus config/rehearsal.yaml, with only the paths moved into a temporary folder:
the imagenet source on an RGB folder in ILSVRC's layout, the teacher imported from an ADM-format checkpoint,
a 4x and a 2x growth stage, every decoder stage under torchrun with 2 gloo processes, every rule from the
data to the report; then the SLURM profile's dry run of the same configuration.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd

from pagoda import checkpoints, data, rehearsal

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ["--configfile", "config/imagenet.yaml", "config/rehearsal.yaml"]


def snakemake(*args):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=ROOT, capture_output=True, text=True)


def test_rehearsal_of_the_paper_scale_path(tmp_path):
    config = rehearsal.merged_config(ROOT / "config/imagenet.yaml", ROOT / "config/rehearsal.yaml")
    inputs, res = tmp_path / "inputs", tmp_path / "res"
    rehearsal.write_inputs(train_root=inputs / "train", test_root=inputs / "val", checkpoint=inputs / "adm.pt",
                           network=config["teacher"]["network"], resolution=config["resolutions"][0])
    overrides = ["--config", f"results={res}", f"data={{root: {inputs}/train, test_root: {inputs}/val}}",
                 f"teacher={{import_path: {inputs}/adm.pt}}"]
    out = snakemake("--cores", "2", "--nolock", *CONFIGS, *overrides)
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]

    resolutions = config["resolutions"]
    assert resolutions[1] // resolutions[0] == 4 and resolutions[2] // resolutions[1] == 2
    # The data stage indexed the folders (one grey JPEG and one RGBA PNG among them) and streams RGB images.
    images, labels, classes = data.load_dataset(res / "data", "train", resolutions[-1])
    assert isinstance(images, data.StreamedImages) and images.shape[1:] == (3, 64, 64) and len(classes) == 4
    index = json.loads((res / "data" / "train_index.json").read_text())
    assert any(f.endswith(".png") for f in index["files"]) and index["skipped"] == []
    # The teacher was imported (not trained), with ADM's dropout; the decoders have none and ran on 2 ranks.
    teacher, meta = checkpoints.load_network(res / "teacher" / "teacher.pt", expect_kind="teacher")
    assert teacher.config.dropout == 0.1 and meta["source_format"] == "adm" and meta["source"] == "adm.pt"
    for r in resolutions:
        G, _ = checkpoints.load_network(res / "decoder" / str(r) / "decoder.pt", expect_kind="decoder")
        assert G.config.out_resolution == r and G.config.dropout == 0
        assert G.config.growth_head == "shared" or r == resolutions[0]  # the head style is chosen when growing
        assert json.loads((res / "decoder" / str(r) / "run.json").read_text())["world_size"] == 2
    # Every row of the table, the inverse problems on RGB, the report.
    table = pd.read_csv(res / "fid_table.csv")
    assert len(table) == 13 and table["fd_judge"].notna().all()
    inverse = pd.read_csv(res / "inverse_table.csv")
    assert inverse["ssim"].between(-1, 1).all() and inverse["psnr"].notna().all()
    assert pd.read_csv(res / "class_transfer.csv")["silhouette_iou"].isna().all()  # photographs: not reported
    assert (res / "notebooks" / "09_report.ipynb").exists()
    kept = np.load(res / "eval" / "samples" / "pagoda_64.npz")["images"]
    assert len(kept) == config["evaluate"]["keep_samples"] < config["evaluate"]["n_samples"]
    # A second run has nothing to do.
    again = snakemake("-n", "--cores", "2", "--nolock", *CONFIGS, *overrides)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # The same configuration through the SLURM profile (dry run).
    dry = snakemake("-n", "--profile", "profiles/slurm", *CONFIGS, "--config", f"results={tmp_path}/slurm",
                    f"data={{root: {inputs}/train, test_root: {inputs}/val}}", f"teacher={{import_path: {inputs}/adm.pt}}")
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-3000:]
    for rule in ("prepare_data", "import_teacher", "encode_shard", "train_decoder", "grow_decoder", "train_judge",
                 "compute_reference", "evaluate_method", "solve_inverse_problems", "make_report"):
        assert f"rule {rule}:" in dry.stdout, rule
