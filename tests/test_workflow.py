"""The workflow's configuration checks and its DAG (a dry run of Snakemake on the real Snakefile)."""

import copy
import pathlib
import subprocess
import sys

import pytest
import yaml

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


def snakemake(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)


def test_dry_run_schedules_every_stage(tmp_path):
    out = snakemake("-n", "--config", f"results={tmp_path}/res")
    assert out.returncode == 0, out.stderr + out.stdout
    for rule in ("prepare_data", "train_teacher"):
        assert rule in out.stdout


def test_schema_and_semantic_checks_stop_snakemake(tmp_path):
    out = snakemake("-n", "--config", "teacher_typo=1")
    assert out.returncode != 0 and "teacher_typo" in (out.stderr + out.stdout)
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolutions: [8, 12]\n")
    out = snakemake("-n", "--configfile", str(bad))
    assert out.returncode != 0 and "12 is not a growth" in (out.stderr + out.stdout)
