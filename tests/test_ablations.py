"""The ablations' decoder variants: which runs each trains, from what, with which settings, and which it reuses."""

import copy
import pathlib

import pytest
import yaml

from pagoda import ablations
from pagoda.workflow import decoder_stage

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def by_key(config):
    return {v.key: v for v in ablations.decoder_variants(config)}


def test_default_config_variants(config):
    variants = by_key(config)
    assert list(variants) == [
        "teacher_quality-reconstruction-teacher100", "teacher_quality-distillation-teacher100",
        "teacher_quality-reconstruction-teacher300", "teacher_quality-distillation-teacher300",
        "teacher_quality-reconstruction-teacher", "teacher_quality-distillation-teacher",
        "growth_factor-2x", "growth_factor-4x", "placement-full", "placement-no_rec", "placement-no_gan",
        "growth_head-residual", "growth_head-shared"]
    assert [v.resolution for v in variants.values()] == [8] * 6 + [32] * 7
    assert ablations.teacher_snapshot_steps(config) == [100, 300]  # 10% and 30% of 1000 steps


def test_which_variants_are_the_default_runs(config):
    variants = by_key(config)
    default = {k for k, v in variants.items() if ablations.is_default(v, config, seed=0)}
    assert default == {"teacher_quality-reconstruction-teacher", "growth_factor-2x", "placement-full",
                       "growth_head-residual"}
    assert not any(ablations.is_default(v, config, seed=1) for v in variants.values())
    assert ablations.decoder_dir(config, variants["placement-full"], 0) == "results/decoder"
    assert ablations.decoder_dir(config, variants["placement-full"], 1) == "results/ablations/placement-full/seed1"


def test_growth_stage_arguments_are_the_default_stage_with_the_variants_changes(config):
    variants = by_key(config)
    four = ablations.stage_arguments(config, variants["growth_factor-4x"], 1, 0)
    expected = decoder_stage({**config, "seed": 1}, 2)  # the 32x32 stage, every setting as in the default run
    expected.update(steps=300 + 310, init_path="results/decoder/8/decoder.pt", curve_points=0,
                    run_dir="results/ablations/growth_factor-4x/seed1/32",
                    out_path="results/ablations/growth_factor-4x/seed1/32/decoder.pt")
    assert four == expected and four["seed"] == 1 and four["batch_size"] == 16
    no_rec = ablations.stage_arguments(config, variants["placement-no_rec"], 0, 0)
    assert (no_rec["objective"], no_rec["weighting"], no_rec["init_path"]) == (
        "none", "separate", "results/decoder/16/decoder.pt")
    no_gan = ablations.stage_arguments(config, variants["placement-no_gan"], 0, 0)
    assert (no_gan["gan_weight"], no_gan["objective"]) == (0.0, "reconstruction")
    shared = [ablations.stage_arguments(config, variants["growth_head-shared"], 1, i) for i in (0, 1)]
    assert [(s["resolution"], s["growth_head"], s["init_path"]) for s in shared] == [
        (16, "shared", "results/decoder/8/decoder.pt"),
        (32, "residual", "results/ablations/growth_head-shared/seed1/16/decoder.pt")]  # the head is chosen once
    two = ablations.stage_arguments(config, variants["growth_factor-2x"], 1, 1)
    assert two["init_path"] == "results/ablations/growth_factor-2x/seed1/16/decoder.pt" and "pairs_dir" not in two


def test_teacher_quality_stage2_reads_its_teachers_latents_and_pairs(config):
    variants = by_key(config)
    weak = ablations.stage_arguments(config, variants["teacher_quality-distillation-teacher100"], 1, 0)
    assert {k: weak[k] for k in ("init_path", "latents_dir", "pairs_dir", "objective", "resolution", "seed")} == {
        "init_path": "results/teacher/snapshots/step-00000100.pt",
        "latents_dir": "results/ablations/teacher100/latents", "pairs_dir": "results/ablations/teacher100/pairs",
        "objective": "distillation", "resolution": 8, "seed": 1}
    assert "curve_points" not in weak and "growth_head" not in weak  # a Stage 2 run
    full_rec = ablations.stage_arguments(config, variants["teacher_quality-reconstruction-teacher"], 1, 0)
    assert (full_rec["init_path"], full_rec["latents_dir"]) == ("results/teacher/teacher.pt", "results/latents")
    assert "pairs_dir" not in full_rec
    full_dstl = ablations.stage_arguments(config, variants["teacher_quality-distillation-teacher"], 0, 0)
    assert (full_dstl["latents_dir"], full_dstl["pairs_dir"]) == ("results/latents", "results/ablations/teacher/pairs")


def test_resolutions_and_an_imported_teacher_rule_variants_out(config):
    single = copy.deepcopy(config)
    single["resolutions"], single["decoder"]["stages"] = [8], config["decoder"]["stages"][:1]
    assert {v.ablation for v in ablations.decoder_variants(single)} == {"teacher_quality"}
    two = copy.deepcopy(config)
    two["resolutions"], two["decoder"]["stages"] = [8, 16], config["decoder"]["stages"][:2]
    assert "growth_factor-4x" not in by_key(two) and "placement-full" in by_key(two)
    imported = copy.deepcopy(config)
    imported["teacher"]["import_path"] = "edm.pkl"
    assert ablations.teacher_snapshot_steps(imported) == []
    assert [v.name for v in ablations.decoder_variants(imported) if v.ablation == "teacher_quality"] == [
        "reconstruction-teacher", "distillation-teacher"]
    shared_default = copy.deepcopy(config)
    shared_default["decoder"]["growth_head"] = "shared"
    assert [v.name for v in ablations.decoder_variants(shared_default) if v.ablation == "growth_head"] == [
        "shared", "residual"]
