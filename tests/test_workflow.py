"""The workflow's configuration checks and its DAG (a dry run of Snakemake on the real Snakefile)."""

import copy
import pathlib
import subprocess
import sys

import pytest
import yaml

from pagoda import guidance_study, layout, notebook, workflow
from pagoda.workflow import check_config, check_resolution_chain

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_default_config_passes(config):
    check_config(config)


@pytest.mark.parametrize("resolutions", [[8, 16, 32], [8, 32], [16], [8, 16]])
def test_valid_resolution_chains(resolutions):
    check_resolution_chain(resolutions)


@pytest.mark.parametrize("resolutions", [[8, 24], [16, 8], [8, 64], [8, 8]])
def test_invalid_resolution_chains_are_rejected(resolutions):
    with pytest.raises(ValueError, match="growth"):
        check_resolution_chain(resolutions)


def test_resolution_that_does_not_divide_fashion_mnist_is_rejected(config):
    bad = copy.deepcopy(config)
    bad["resolutions"] = [16, 64]
    with pytest.raises(ValueError, match="do not divide"):
        check_config(bad)


def test_image_folder_needs_both_folders(config):
    bad = copy.deepcopy(config)
    bad["data"]["source"] = "image_folder"
    with pytest.raises(ValueError, match="test_root"):
        check_config(bad)


def test_distillation_objective_needs_teacher_pairs_and_no_growth_stage(config):
    bad = copy.deepcopy(config)
    bad["decoder"]["objective"] = "distillation"
    with pytest.raises(ValueError, match="needs encode.teacher_pairs > 0"):
        check_config(bad)
    bad["encode"]["teacher_pairs"] = 100
    with pytest.raises(ValueError, match="applies to Stage 2 only"):
        check_config(bad)
    bad["resolutions"], bad["decoder"]["stages"] = [8], bad["decoder"]["stages"][:1]
    check_config(bad)


def test_guidance_range_and_grid_are_checked(config):
    bad = copy.deepcopy(config)
    bad["guidance"]["omega_range"] = [3.0, 1.0]
    with pytest.raises(ValueError, match="omega_range must be"):
        check_config(bad)
    bad["guidance"]["omega_range"], bad["guidance"]["omega_grid"] = [1.0, 1.0], [1.0, 3.0, 2.0]
    with pytest.raises(ValueError, match="increasing order"):
        check_config(bad)
    bad["guidance"]["omega_grid"] = [1.0, 2.0, 3.0]
    check_config(bad)


def test_label_dropout_is_given_once_and_only_to_a_trained_teacher(config):
    own, shared = copy.deepcopy(config), copy.deepcopy(config)  # the guidance target's own teacher; the default one
    own["teacher"].pop("label_dropout", None)
    own["guidance"]["label_dropout"] = 0.1
    shared["teacher"]["label_dropout"] = 0.1
    shared["guidance"].pop("label_dropout", None)
    check_config(own), check_config(shared)
    both = copy.deepcopy(shared)
    both["guidance"]["label_dropout"] = 0.1
    neither = copy.deepcopy(own)
    neither["guidance"].pop("label_dropout")
    for bad in (both, neither):
        with pytest.raises(ValueError, match="give label dropout once"):
            check_config(bad)
    shared["teacher"]["import_path"] = "checkpoints/edm_imagenet64_ema.pt"
    with pytest.raises(ValueError, match="an imported one"):
        check_config(shared)
    assert guidance_study.teacher_path(own) == f"{config['results']}/guidance/teacher/teacher.pt"
    assert guidance_study.teacher_path(shared) == layout.teacher_path(config["results"])


def snakemake(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)


def job_counts(stdout):
    """{rule: jobs} from the 'Job stats' table of a dry run."""
    table = stdout.split("Job stats:")[1].split("total")[0]
    return {row.split()[0]: int(row.split()[1]) for row in table.splitlines()[3:] if row.strip()}


def test_the_workflows_imports_load_no_torch():
    """What the Snakefile imports from pagoda at every snakemake start (pagoda.plan's docstring) loads no torch."""
    lines = [line for f in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
             for line in f.read_text().splitlines() if line.startswith(("from pagoda", "import pagoda"))]
    assert any("plan" in line for line in lines)
    code = "\n".join([*lines, "import sys", "print('torch' in sys.modules)"])
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "False\n", out.stdout + out.stderr


def test_dry_run_schedules_every_stage(tmp_path):
    out = snakemake("-n", "--config", f"results={tmp_path}/res")
    assert out.returncode == 0, out.stderr + out.stdout
    assert job_counts(out.stdout) == {
        "prepare_data": 1, "train_teacher": 1, "encode_shard": 1, "encode_latents": 1, "train_decoder": 1,
        "grow_decoder": 2, "compute_reference": 3, "evaluate_method": 13, "train_judge": 3, "solve_inverse_problems": 1,
        "make_report": 1, "all": 1}


def test_ablations_dry_run_trains_each_variant_once_and_reuses_the_default_run(tmp_path):
    out = snakemake("-n", f"{tmp_path}/res/ablations.csv", "--config", f"results={tmp_path}/res")
    assert out.returncode == 0, out.stderr + out.stdout
    jobs = job_counts(out.stdout)
    # 13 variants x 2 seeds, less the 4 that are the default run at seed 0 and growth_head's default (growth_factor's
    # 2x, 2 stages) at seed 1; the default run's own stages and 4 of its rows (the rest of it is not needed).
    assert jobs["train_ablation_decoder"] == 6 * 2 - 1 + 2 * 2 - 2 + 2 + 2 * 1 - 1 + 2 * 1 + 2 * 1 + 2 * 2 == 24
    assert jobs["evaluate_ablation_decoder"] == 21 and jobs["evaluate_teacher_steps"] == 4 * 3
    assert (jobs["train_teacher"], jobs["train_decoder"], jobs["grow_decoder"], jobs["evaluate_method"]) == (1, 1, 2, 4)
    assert (jobs["encode_teacher_snapshot"], jobs["draw_teacher_pairs"], jobs["evaluate_teacher_snapshot"]) == (2, 1, 2)
    assert "solve_inverse_problems" not in jobs and jobs["compare_sr_compute"] == jobs["tabulate_ablations"] == 1


def test_guidance_dry_run_guides_the_default_teacher_and_grows_two_guided_decoders(tmp_path):
    out = snakemake("-n", f"{tmp_path}/res/guidance_table.csv", "--config", f"results={tmp_path}/res")
    assert out.returncode == 0, out.stderr + out.stdout
    jobs = job_counts(out.stdout)
    # The default teacher (it has a null class), the guided latents and the estimator once; both guided decoders
    # (estimator, uniform) at 8, 16 and 32, and none of the default decoders.
    assert (jobs["train_teacher"], jobs["encode_guided_latents"], jobs["train_omega_estimator"]) == (1, 1, 1)
    assert jobs["train_guided_decoder"] == 2 * 3 and "train_guided_teacher" not in jobs and "train_decoder" not in jobs
    # 5 omegas x (teacher at 8, bicubic at 16 and 32, the two decoders at 3 resolutions).
    assert jobs["evaluate_guided"] == 5 * (3 + 2 * 3) and jobs["tabulate_guidance"] == 1
    assert "\"omega_range\": [1.0, 3.0]" in out.stdout  # the guided jobs get the config's range
    assert f"teacher_path\": \"{tmp_path}/res/teacher/teacher.pt" in out.stdout


def test_guidance_dry_run_trains_its_own_teacher_where_the_default_has_no_null_class(tmp_path):
    overlay = tmp_path / "own_teacher.yaml"
    overlay.write_text(yaml.safe_dump({"teacher": {"label_dropout": 0.0}, "guidance": {"label_dropout": 0.1}}))
    out = snakemake("-n", f"{tmp_path}/res/guidance_table.csv", "--configfile", str(overlay),
                    "--config", f"results={tmp_path}/res")
    assert out.returncode == 0, out.stderr + out.stdout
    jobs = job_counts(out.stdout)
    assert jobs["train_guided_teacher"] == 1 and "train_teacher" not in jobs
    assert "\"label_dropout\": 0.1" in out.stdout


def test_paper_scale_dry_run_with_the_slurm_profile():
    """config/imagenet.yaml through profiles/slurm and the default target (the CI check of the cluster run)."""
    out = snakemake("-n", "--profile", "profiles/slurm", "--configfile", "config/imagenet.yaml")
    assert out.returncode == 0, out.stderr + out.stdout
    jobs = job_counts(out.stdout)
    assert jobs["import_teacher"] == 1 and "train_teacher" not in jobs  # the EDM checkpoint, not a new teacher
    assert jobs["encode_shard"] == 52 and jobs["train_decoder"] == 1 and jobs["grow_decoder"] == 3  # 64 -> 512
    assert "results/imagenet/fid_table.csv" in out.stdout and " results/fid_table.csv" not in out.stdout
    for rule in ("train_decoder", "grow_decoder"):
        decoder_job = out.stdout.split(f"rule {rule}:")[1].split("rule ")[0]
        assert "gpu=8" in decoder_job and "slurm_partition=YOUR_GPU_PARTITION" in decoder_job
        assert "nproc_per_node: auto" in decoder_job and "backbone_source: timm" in decoder_job


def test_schema_and_semantic_checks_stop_snakemake(tmp_path):
    out = snakemake("-n", "--config", "teacher_typo=1")
    assert out.returncode != 0 and "teacher_typo" in (out.stderr + out.stdout)
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolutions: [8, 12]\n")
    out = snakemake("-n", "--configfile", str(bad))
    assert out.returncode != 0 and "12 is not a growth" in (out.stderr + out.stdout)


def test_notebook_parameters_reach_papermill_with_their_types():
    # papermill parses -y with PyYAML (YAML 1.1): JSON's 8e-06 came back as the string '8e-06' and RAdam failed
    # on config/imagenet.yaml's lr_g (found by the rehearsal).
    params = {"lr_g": 8e-6, "big": 1e20, "lr": 0.002, "steps": 3, "name": "1e5", "path": "results/x y",
              "none": None, "flag": True, "stages": [{"gan_weight": 0.2, "growth_channels": None}],
              "network": {"channel_mult": [1, 2], "dropout": 0.1}, "evaluations": [["pagoda", 16]]}
    text = workflow.notebook_parameters(**params)
    assert "\n" not in text and notebook.parse_parameters([text]) == params
    assert isinstance(notebook.parse_parameters([text])["lr_g"], float)
