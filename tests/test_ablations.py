"""The ablations' decoder variants: which runs each trains, from what, with which settings, and which it reuses."""

import copy
import pathlib

import pytest
import yaml

from pagoda import ablations, layout
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
    # The same training under two names is done once: the default head's variant is growth_factor's 2x.
    assert ablations.decoder_dir(config, variants["growth_head-residual"], 1) == \
        ablations.decoder_dir(config, variants["growth_factor-2x"], 1) == "results/ablations/growth_factor-2x/seed1"
    assert ablations.decoder_dir(config, variants["growth_head-shared"], 1) == "results/ablations/growth_head-shared/seed1"


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


# ----------------------------------------------------------------------------
# The table, its summary over seeds and the claims, on records written here.

def write_record(path, **metrics):
    import json
    record = {"nfe": 1.0, **{m: 1.0 for m in ablations.METRICS}, **metrics}
    path.write_text(json.dumps(record))
    return str(path)


def test_table_reads_records_placement_and_training_time(tmp_path):
    import json

    import numpy as np

    from pagoda.evaluate import save_samples
    base = np.broadcast_to((20 + 30 * np.arange(6, dtype=np.uint8))[:, None, None, None], (6, 1, 8, 8)).copy()
    high = base.repeat(4, -1).repeat(4, -2)  # flat 32 px images of the base images' grey levels: in place
    save_samples(tmp_path / "base.npz", base, None, 1, 1.0)
    save_samples(tmp_path / "high.npz", high[:4], None, 1, 1.0)
    for i, seconds in enumerate((3.0, 4.5)):
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "timing.json").write_text(json.dumps({"seconds": seconds}))
    rows = [dict(ablation="placement", variant="full", seed=0, resolution=32,
                 record=write_record(tmp_path / "a.json", fd_judge=2.5, nfe=1.0), samples=str(tmp_path / "high.npz"),
                 base_samples=str(tmp_path / "base.npz"), run_dirs=[str(tmp_path / "run0"), str(tmp_path / "run1")]),
            dict(ablation="teacher_steps", variant="heun-points3", seed=0, resolution=8,
                 record=write_record(tmp_path / "b.json", fd_judge=7.0, nfe=5.0))]
    t = ablations.table(rows)
    assert list(t.columns) == ["ablation", "variant", "seed", "resolution", "nfe", *ablations.METRICS, "placement",
                               "placement_shuffled", "seconds"]
    assert t.fd_judge.tolist() == [2.5, 7.0] and t.nfe.tolist() == [1.0, 5.0] and t.seconds.iloc[0] == 7.5
    # Against the first 4 base images; shuffled, each is paired with its neighbour (30 or 90 grey levels apart).
    assert t.placement.iloc[0] == pytest.approx(0, abs=1e-6)
    assert t.placement_shuffled.iloc[0] == pytest.approx((90 + 30 * 3) / 4 / 255, rel=1e-4)
    assert np.isnan(t.placement.iloc[1]) and np.isnan(t.seconds.iloc[1])


def summary_of(values):
    """A summary from {(ablation, variant): [fd_judge per seed]} (placement = fd_judge / 10)."""
    import pandas as pd
    rows = [dict(ablation=a, variant=v, seed=s, resolution=8, **{m: x for m in ablations.METRICS}, placement=x / 10,
                 seconds=1.0) for (a, v), xs in values.items() for s, x in enumerate(xs)]
    return ablations.summarise(pd.DataFrame(rows))


def test_summary_gives_mean_spread_and_seeds():
    s = summary_of({("placement", "full"): [1.0, 3.0], ("placement", "no_rec"): [10.0]})
    full = s[s.variant == "full"].iloc[0]
    assert (full.fd_judge_mean, full.fd_judge_spread, full.seeds) == (2.0, 2.0, 2)
    assert s[s.variant == "no_rec"].iloc[0].seeds == 1


def test_difference_is_clear_only_beyond_the_larger_spread_and_with_two_seeds():
    s = summary_of({("g", "a"): [1.0, 1.2], ("g", "b"): [2.0, 3.0], ("g", "c"): [1.5, 2.5], ("g", "d"): [5.0]})
    d, clear, text = ablations.difference(s, "g", "b", "a", "fd_judge")
    assert d == pytest.approx(1.4) and clear and "spread 1" in text  # 1.4 > max(0.2, 1.0)
    d, clear, _ = ablations.difference(s, "g", "c", "a", "fd_judge")
    assert d == pytest.approx(0.9) and not clear  # 0.9 > 0.2 but not > 1.0
    _, clear, text = ablations.difference(s, "g", "d", "a", "fd_judge")
    assert not clear and "one seed" in text


@pytest.mark.parametrize("good", [True, False])
def test_claims_hold_or_not_as_the_numbers_say(good):
    rec, dstl = ([1.0, 1.1], [3.0, 3.2]) if good else ([3.0, 3.2], [1.0, 1.1])
    tq = "teacher_quality"
    values = {(tq, "teacher_ode-teacher"): [0.3], (tq, "teacher_ode-teacher100"): [9.0],
              (tq, "reconstruction-teacher"): [0.8, 0.9], (tq, "distillation-teacher"): [0.8, 0.9],
              (tq, "reconstruction-teacher100"): rec, (tq, "distillation-teacher100"): dstl,
              ("growth_factor", "2x"): [4.0, 4.2], ("growth_factor", "4x"): [4.5, 4.9] if good else [5.2, 5.6],
              ("placement", "full"): [4.0, 4.2], ("placement", "no_rec"): [9.0, 9.5] if good else [3.0, 3.1],
              ("placement", "no_gan"): [9.0, 9.5] if good else [3.0, 3.1],
              ("growth_head", "residual"): [1.0, 1.1], ("growth_head", "shared"): [2.0, 2.1] if good else [0.5, 0.6],
              ("teacher_steps", "pagoda"): [1.0], ("teacher_steps", "heun-points9"): [2.0] if good else [0.5]}
    c = ablations.claims(summary_of(values))
    assert len(c) == 7 and c.holds.tolist() == [good] * 7
    assert c.beyond_seed_spread.tolist()[:6] == [True] * 6 and c.beyond_seed_spread.iloc[6] is None
    assert "teacher100" in c.claim.iloc[0] and "weakest" in c.claim.iloc[0]


def test_claims_leave_out_what_a_partial_run_lacks():
    c = ablations.claims(summary_of({("placement", "full"): [1.0], ("teacher_quality", "teacher_ode-teacher"): [0.3],
                                     ("teacher_quality", "reconstruction-teacher"): [0.5],
                                     ("teacher_steps", "pagoda"): [1.0], ("teacher_steps", "heun_5nfe"): [0.9]}))
    assert c.claim.tolist() == ["one PaGoDA step beats the teacher's Heun sampler at every budget tried at 8x8"]
    assert not c.holds.iloc[0]


@pytest.mark.parametrize("inversion_wins", [True, False])
def test_sr_rows_join_the_table_and_judge_inversion_at_matched_time(tmp_path, inversion_wins):
    import pandas as pd
    sr = pd.DataFrame({"task": "sr4", "method": ["inversion", "optim_prior", "optim_inversion", "optim_prior"],
                       "psnr": [20.0, 18.0, 19.0, 21.0], "ssim": 0.5, "judge_distance": [0.3, 0.5, 0.4, 0.2],
                       "kid_judge": 0.01, "effnet_distance": 1.0, "sec_per_image": [0.01, 0.01, 0.01, 0.04],
                       "n_images": 100, "budget": [1.0, 1.0, 1.0, 4.0], "steps": [0, 5, 2, 20]})
    if not inversion_wins:
        sr.loc[2, "judge_distance"] = 0.25  # optimisation from the inversion's latent wins at the same time
    sr.to_csv(tmp_path / "sr.csv", index=False)
    t = ablations.table([], sr_path=tmp_path / "sr.csv", sr_resolution=32, seed=0)
    assert t.variant.tolist() == ["inversion", "optim_prior-1x", "optim_inversion-1x", "optim_prior-4x"]
    assert (t.resolution == 32).all() and t.steps.tolist() == [0, 5, 2, 20] and t.psnr.iloc[3] == 21.0
    c = ablations.claims(ablations.summarise(t))
    assert c.claim.tolist() == ["super-resolution: inversion beats latent optimisation given the same time per image "
                                "(paper Sec. 5.2)"]
    assert c.holds.iloc[0] == inversion_wins  # the 4x budget beating inversion does not count against it
    # A budget that buys no step leaves the inversion as it is: no comparison, even a hair's breadth apart.
    sr.loc[2, ["judge_distance", "steps"]] = [0.3 + 1e-9, 0]
    sr.loc[1, "judge_distance"] = 0.1
    sr.to_csv(tmp_path / "sr.csv", index=False)
    c = ablations.claims(ablations.summarise(ablations.table([], sr_path=tmp_path / "sr.csv", sr_resolution=32)))
    assert not c.holds.iloc[0] and "(0 steps)" in c.measured.iloc[0]


def test_every_ablation_has_its_figure(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd

    from pagoda import plots
    rows = [dict(ablation=a, variant=v, seed=s, resolution=r, nfe=n, fd_judge=1.0 + s, recall_judge=0.5,
                 placement=0.1 if a != "teacher_steps" else float("nan"))
            for a, v, r, n in [*(("teacher_quality", f"teacher_ode-{t}", 8, 79) for t in ("teacher", "teacher100")),
                               *(("teacher_quality", f"{o}-{t}", 8, 1) for o in ("reconstruction", "distillation")
                                 for t in ("teacher", "teacher100")),
                               ("placement", "full", 32, 1), ("placement", "no_rec", 32, 1),
                               ("teacher_steps", "pagoda", 8, 1), ("teacher_steps", "heun_5nfe", 8, 5)]
            for s in (0, 1)]
    rows += [dict(ablation="sr_inversion", variant=v, seed=0, resolution=32, judge_distance=0.3, psnr=20.0,
                  sec_per_image=0.01) for v in ("inversion", "optim_prior-1x")]
    t = pd.DataFrame(rows)
    panels = {a: len(plots.ablation_figure(t, a).axes) for a in t.ablation.unique()}
    assert panels == {"teacher_quality": 1, "placement": 3, "teacher_steps": 1, "sr_inversion": 3}


def test_encode_job_writes_a_weaker_teachers_latents_and_pairs(tiny_teacher, tiny_data, latents, tmp_path):
    import json

    import numpy as np

    from pagoda import encode
    settings = dict(data_dir=str(tiny_data), resolution=8, n_images=12, flips=True, num_points=6, clamp=True,
                    shard_size=8, batch_size=500, seed=0)
    kwargs = dict(teacher_path=str(tiny_teacher), latents_dir=str(tmp_path / "latents"),
                  pairs_dir=str(tmp_path / "pairs"), n_pairs=16, encode=settings, device="cpu")
    ablations.main(["encode", json.dumps(kwargs)])  # the rule's command, in this process
    summary = json.loads((tmp_path / "latents" / "summary.json").read_text())
    assert summary["latents"] == 24 and summary["complete"]
    # The same teacher, settings and seed as the `latents` fixture: the same latents and pairs.
    for prefix, folder in (("shard", tmp_path / "latents"), ("pairs", tmp_path / "pairs")):
        mine, theirs = encode.load_latents(folder, prefix=prefix), encode.load_latents(latents, prefix=prefix)
        assert all(np.array_equal(np.asarray(mine[k]), np.asarray(theirs[k])) for k in theirs)
    ablations.main(["encode", json.dumps({**kwargs, "latents_dir": None, "pairs_dir": str(tmp_path / "only")})])
    assert [p.name for p in (tmp_path / "only").iterdir()] == ["pairs-00000.npz"]  # the full teacher: pairs only


def test_a_records_samples_are_the_file_its_evaluation_writes():
    """The table finds each row's samples from its record: the default table's and the ablations' alike."""
    assert layout.record_samples_path(layout.record_path("r/eval", "pagoda", 32)) == \
        layout.samples_path("r/eval", "pagoda", 32)
    assert layout.record_samples_path("r/ablations/eval/growth_factor-4x_seed1.json") == \
        "r/ablations/eval/samples/growth_factor-4x_seed1.npz"
