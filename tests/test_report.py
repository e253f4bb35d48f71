"""The report: table layout, stage costs from the stages' logs, the claims logic, placement from samples."""

import json

import numpy as np
import pandas as pd
import pytest

from pagoda import evaluate, plan, report


def write_records(folder, fd, *, effnet=None, inception=None):
    """Records whose judge FD is `fd`; the training-space FD is `effnet` (default: the same numbers);
    fid_inception is `inception` where given."""
    paths = []
    for (method, res), value in fd.items():
        rec = {"method": method, "resolution": res, "nfe": {"teacher_ode": 79, "pagoda": 1}.get(method),
               "n_samples": 100, "fd_judge": value, "kid_judge": value / 1000, "precision_judge": 0.5,
               "recall_judge": 0.5, "density_judge": 1.0, "coverage_judge": 0.5, "swd": value / 10,
               "swd_finest": value / 10, "swd_levels": {str(res): value / 10},
               "fd_effnet": (effnet or fd)[(method, res)],
               "fid_inception": None if inception is None else inception[(method, res)], "precision": 0.5,
               "recall": 0.5, "density": 1.0, "coverage": 0.5,
               "images_per_sec": {"teacher_ode": 30.0, "pagoda": 3000.0}.get(method), "device": "cpu",
               "feature_size": 64}
        path = folder / f"{method}_{res}.json"
        path.write_text(json.dumps(rec))
        paths.append(path)
    return paths


FD = {("pagoda", 16): 150.0, ("data_test", 8): 27.0, ("teacher_ode", 8): 40.0, ("pagoda", 8): 50.0,
      ("teacher_ode_bicubic", 16): 800.0, ("stage2_bicubic", 16): 820.0, ("data_bicubic", 16): 770.0,
      ("data_test", 16): 38.0}


def test_table_has_the_required_columns_in_method_order(tmp_path):
    table = report.fid_table(write_records(tmp_path, FD))
    for col in ("method", "resolution", "nfe", "n_samples", "fd_judge", "kid_judge", "precision_judge", "recall_judge",
                "swd", "swd_finest", "fd_effnet", "fid_inception", "precision", "recall", "images_per_sec", "device"):
        assert col in table.columns
    assert "swd_levels" not in table.columns
    assert list(table.method) == ["data_test", "data_test", "teacher_ode", "teacher_ode_bicubic", "pagoda", "pagoda",
                                  "stage2_bicubic", "data_bicubic"]
    assert table.fid_inception.isna().all()  # empty, never filled in


def test_claims_hold_or_fail_on_the_numbers(tmp_path):
    table = report.fid_table(write_records(tmp_path, FD))
    assert report.headline_metric(table) == "fd_judge"
    c = report.claims(table, [8, 16], placement={16: (0.02, 0.2)})
    assert list(c.holds) == [False, True, True, True]  # student 50 > teacher 40; the rest hold
    assert list(c.metric[:3]) == ["fd_judge"] * 3
    worse = {**FD, ("pagoda", 16): 900.0}
    c = report.claims(report.fid_table(write_records(tmp_path, worse)), [8, 16])
    assert not c.holds.iloc[1]
    assert "DOES NOT HOLD" in report.claim_sentences(c)


def test_verdicts_follow_the_judge_and_say_when_the_training_space_disagrees(tmp_path):
    # The judge says the student beats the teacher (39 < 40); EfficientNet says the opposite (60 > 40).
    judged = {**FD, ("pagoda", 8): 39.0}
    effnet = {**FD, ("pagoda", 8): 60.0}
    c = report.claims(report.fid_table(write_records(tmp_path, judged, effnet=effnet)), [8, 16])
    assert c.holds.iloc[0] and not c.training_holds.iloc[0]
    lines = report.claim_sentences(c).splitlines()
    assert lines[0].startswith("HOLDS (fd_judge)") and "The training space DISAGREES" in lines[0]
    assert "does not hold" in lines[0] and "The training space agrees" in lines[1]
    # And the other way round: the training space alone would have passed the student.
    c = report.claims(report.fid_table(write_records(tmp_path, effnet, effnet=judged)), [8, 16])
    assert not c.holds.iloc[0] and c.training_holds.iloc[0]
    assert report.claim_sentences(c).splitlines()[0].startswith("DOES NOT HOLD (fd_judge)")


def test_inception_fid_is_the_headline_where_every_row_has_it(tmp_path):
    inception = {k: 10 * v for k, v in FD.items()}
    inception[("pagoda", 8)] = 390.0  # below the teacher's 400 in FID, above it in the judge (50 vs 40)
    table = report.fid_table(write_records(tmp_path, FD, inception=inception))
    assert report.headline_metric(table) == "fid_inception"
    c = report.claims(table, [8, 16])
    assert c.metric.iloc[0] == "fid_inception" and c.holds.iloc[0]
    assert "390 vs teacher_ode 400" in c.measured.iloc[0]
    partial = {k: (v if k[0] != "data_test" else None) for k, v in inception.items()}
    assert report.headline_metric(report.fid_table(write_records(tmp_path, FD, inception=partial))) == "fd_judge"


@pytest.mark.parametrize("pagoda16, holds", [(769.0, True), (770.0, False)])
def test_growth_claim_needs_every_upsampling_baseline_beaten(tmp_path, pagoda16, holds):
    c = report.claims(report.fid_table(write_records(tmp_path, {**FD, ("pagoda", 16): pagoda16})), [8, 16])
    assert c.holds.iloc[1] == holds and "data_bicubic 770" in c.measured.iloc[1]


@pytest.mark.parametrize("same, holds", [(0.0499, True), (0.05, False)])
def test_placement_threshold_is_a_quarter_of_the_shuffled_error(tmp_path, same, holds):
    c = report.claims(report.fid_table(write_records(tmp_path, FD)), [8, 16], placement={16: (same, 0.2)})
    assert c.holds.iloc[-1] == holds and c.metric.iloc[-1] == "pixels"


def inverse_table(**pagoda):
    rows = []
    for task, method in (("sr4", "pagoda"), ("sr4", "pagoda_optim"), ("sr4", "bicubic"), ("deblur", "pagoda"),
                         ("deblur", "richardson_lucy")):
        row = {"task": task, "method": method, "psnr": 20.0, "ssim": 0.7, "judge_distance": 0.5, "kid_judge": 0.05,
               "effnet_distance": 1.0, "sec_per_image": 0.01, "n_images": 100}
        if method == "pagoda":
            row.update(pagoda)
        rows.append(row)
    return pd.DataFrame(rows)


def test_inverse_claims_rest_on_the_judge_with_the_training_space_beside():
    c = report.inverse_claims(inverse_table(judge_distance=0.4, kid_judge=0.04, effnet_distance=1.2))
    assert list(c.claim.str.split(":").str[0]) == ["sr4", "sr4", "deblur"]
    assert c.holds.all() and not c.training_holds.any()  # judge: better; EfficientNet: worse
    assert "DISAGREES" in report.claim_sentences(c)
    assert report.verdicts(c).count("the training space DISAGREES") == report.claim_sentences(c).count("DISAGREES")
    # Against a baseline the KID must agree too; against latent optimisation the distance alone decides.
    c = report.inverse_claims(inverse_table(judge_distance=0.4, kid_judge=0.06, effnet_distance=0.9))
    assert list(c.holds) == [False, True, False] and c.training_holds.all()


def test_every_row_of_the_default_study_is_scheduled():
    rows = plan.rows([8, 16, 32])
    assert len(rows) == 13
    assert ("teacher_ode", 8) in rows and ("teacher_ode", 16) not in rows
    assert ("stage2_bicubic", 8) not in rows and ("data_bicubic", 32) in rows


def test_stage_costs_come_from_the_stage_logs(tmp_path):
    for name, sec in (("teacher", 300.0), ("latents", 100.0), ("decoder/8", 280.0)):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "timing.json").write_text(json.dumps({"seconds": sec, "attempts": 1, "device": "cpu"}))
    costs = report.stage_costs(tmp_path, [8, 16])
    assert list(costs.stage) == ["teacher", "encode", "decoder_8"]  # decoder_16 has not run
    assert costs.seconds.tolist() == [300.0, 100.0, 280.0]


def test_placement_from_shared_noise_samples(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random((20, 1, 4, 4)) * 255).astype(np.uint8)
    base = np.kron(base, np.ones((1, 1, 2, 2), dtype=np.uint8))  # smooth-ish 8x8
    high = np.kron(base, np.ones((1, 1, 2, 2), dtype=np.uint8))
    evaluate.save_samples(tmp_path / "pagoda_8.npz", base, np.arange(20) % 10, 1, 1000.0)
    evaluate.save_samples(tmp_path / "pagoda_16.npz", high, np.arange(20) % 10, 1, 900.0)
    p = report.placement_from_samples(tmp_path, [8, 16])
    same, shuffled = p[16]
    assert same < 0.25 * shuffled
    assert isinstance(report.fid_table(write_records(tmp_path, FD)), pd.DataFrame)


def test_table_columns_and_rows_sorted_by_method_then_resolution(tmp_path):
    table = report.fid_table(write_records(tmp_path, FD))  # FD lists pagoda 16 before pagoda 8
    assert list(table.columns) == report.TABLE_COLUMNS and list(table.index) == list(range(8))
    assert list(zip(table.method, table.resolution)) == [
        ("data_test", 8), ("data_test", 16), ("teacher_ode", 8), ("teacher_ode_bicubic", 16), ("pagoda", 8),
        ("pagoda", 16), ("stage2_bicubic", 16), ("data_bicubic", 16)]
    assert all(type(m) is str for m in table.method)  # plain strings again, not the sorting categories
    assert table.fd_judge.tolist() == [27.0, 38.0, 40.0, 800.0, 50.0, 150.0, 820.0, 770.0]


def test_significant_rounds_floats_only():
    s = report.significant(pd.Series([1234.5678, "cpu", 3, 0.000123456, -2.71828]))
    assert s.tolist() == [1230.0, "cpu", 3, 0.000123, -2.72]
    assert type(s[0]) is float and type(s[2]) is int
    # A stage summary shown without its text fields: the integers stay integers.
    summary = report.significant(pd.Series({"steps": 40, "loss": 0.730401, "device": "cpu"}, name="run").drop("device"))
    assert summary.to_dict() == {"steps": 40, "loss": 0.73} and type(summary["steps"]) is int and summary.name == "run"
    assert report.significant(pd.DataFrame({"a": [1234.5678], "b": ["x"]}), digits=2).to_dict("list") == {
        "a": [1200.0], "b": ["x"]}


def test_value_is_nan_for_a_missing_row_or_an_empty_cell(tmp_path):
    table = report.fid_table(write_records(tmp_path, FD))
    assert report.value(table, "pagoda", 16, "fd_judge") == 150.0
    assert report.value(table, "teacher_ode", 8, "nfe") == 79.0
    assert np.isnan(report.value(table, "teacher_ode", 16, "fd_judge"))  # no such row
    assert np.isnan(report.value(table, "data_test", 8, "nfe"))  # real images have no NFE
    assert np.isnan(report.value(table, "pagoda", 8, "fid_inception"))


def test_judge_summary_keeps_the_summary_fields_in_path_order(tmp_path):
    import torch
    paths = []
    for r, acc in ((8, 0.81), (16, 0.86)):
        meta = {"resolution": r, "test_accuracy": acc, "seconds": 2.5 * r, "steps": 100, "parameters": 1234,
                "feature_dim": 8, "train_loss": 0.3}
        torch.save({"hparams": {}, "state": {}, "meta": meta}, tmp_path / f"judge_{r}.pt")
        paths.append(tmp_path / f"judge_{r}.pt")
    assert report.judge_summary(paths) == [
        {"resolution": 8, "test_accuracy": 0.81, "seconds": 20.0, "steps": 100, "parameters": 1234, "feature_dim": 8},
        {"resolution": 16, "test_accuracy": 0.86, "seconds": 40.0, "steps": 100, "parameters": 1234,
         "feature_dim": 8}]


def test_stage_costs_read_timing_steps_and_resolution(tmp_path):
    def stage(folder, seconds, device, attempts, *, steps=None, resolution=None):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "timing.json").write_text(json.dumps(
            {"seconds": seconds, "attempts": attempts, "device": device}))
        if steps is not None:  # one JSON line per logged step; the last one counts
            (tmp_path / folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in steps))
        if resolution is not None:
            (tmp_path / folder / "run.json").write_text(json.dumps({"resolution": resolution, "lr": 1e-3}))
    stage("teacher", 125.456, "cuda", 2, steps=[10, 20], resolution=8)
    stage("latents", 59.94, "cpu", 1)  # no log: no step
    stage("decoder/16", 7200.0, "cpu", 3, steps=[], resolution=16)  # an empty log: no step either
    stage("decoder/32", 1.0, "cpu", 1)  # not one of the requested resolutions
    (tmp_path / "decoder" / "8").mkdir(parents=True)  # started, no timing yet
    costs = report.stage_costs(str(tmp_path), [8, 16])
    expected = pd.DataFrame([
        {"stage": "teacher", "seconds": 125.5, "minutes": 2.09, "device": "cuda", "attempts": 2, "steps": 20,
         "resolution": 8},
        {"stage": "encode", "seconds": 59.9, "minutes": 1.0, "device": "cpu", "attempts": 1, "steps": None,
         "resolution": None},
        {"stage": "decoder_16", "seconds": 7200.0, "minutes": 120.0, "device": "cpu", "attempts": 3, "steps": None,
         "resolution": 16}])
    pd.testing.assert_frame_equal(costs, expected)
    assert report.stage_costs(tmp_path / "none", [8]).empty


def test_claims_in_plain_words_on_the_reference_numbers(tmp_path):
    # Hand-computed: 50/40 = 1.25; 770/150 = 5.13 (judge) and 77/15 (swd_finest = FD/10); 3000/30 = 100.
    c = report.claims(report.fid_table(write_records(tmp_path, FD)), [8, 16], placement={16: (0.02, 0.2)})
    growth = "pagoda 150 vs best upsampling data_bicubic 770 (5.1x worse)"
    assert report.claim_sentences(c).splitlines() == [
        "DOES NOT HOLD (fd_judge): the one-step student matches or beats its teacher at 8x8. Measured: pagoda 50 vs "
        "teacher_ode 40 (ratio 1.25). The training space agrees (pagoda 50 vs teacher_ode 40 (ratio 1.25)).",
        f"HOLDS (fd_judge): growth beats every upsampling baseline at 16x16. Measured: {growth}; in pixels, "
        f"swd_finest: pagoda 15 vs best upsampling data_bicubic 77 (5.1x worse). The training space agrees ({growth}).",
        "HOLDS (fd_judge): one step is far faster than the 79-NFE ODE at comparable quality (within 1.5x) at 8x8. "
        "Measured: 3000 vs 30.0 images/s: 100x faster; ratio 1.25. The training space agrees (ratio 1.25).",
        "HOLDS (pixels): growing keeps objects in place: the 16x16 output seen at 8x8 matches Stage 2 for the same "
        "z. Measured: mean |diff| 0.020 on [0, 1] (shuffled pairs 0.200). Training space: not applicable."]
    assert report.verdicts(c).splitlines() == [
        "DOES NOT HOLD (fd_judge): the one-step student matches or beats its teacher at 8x8; the training space agrees",
        "HOLDS (fd_judge): growth beats every upsampling baseline at 16x16; the training space agrees",
        "HOLDS (fd_judge): one step is far faster than the 79-NFE ODE at comparable quality (within 1.5x) at 8x8; "
        "the training space agrees",
        "HOLDS (pixels): growing keeps objects in place: the 16x16 output seen at 8x8 matches Stage 2 for the same z"]
    assert list(c.training_metric[:3]) == ["fd_effnet"] * 3 and pd.isna(c.training_metric[3])
    assert list(c.training_holds[:3]) == [False, True, True] and pd.isna(c.training_holds[3])
    assert all(type(h) is bool for h in c.holds)


def test_claims_boundaries_of_the_student_and_speed_claims(tmp_path):
    # Student equal to teacher: matches (holds). Training space: 61 > 1.5 * 40, not comparable quality.
    judged = {**FD, ("pagoda", 8): 40.0}
    effnet = {**FD, ("pagoda", 8): 61.0}
    c = report.claims(report.fid_table(write_records(tmp_path, judged, effnet=effnet)), [8, 16])
    assert list(c.holds) == [True, True, True] and list(c.training_holds) == [False, True, False]
    assert c.measured.iloc[2].endswith("ratio 1.00") and c.training_measured.iloc[2] == "ratio 1.52"
    # 1.5x the teacher exactly is still comparable quality; a hair above is not.
    for s8, holds in ((60.0, True), (60.01, False)):
        c = report.claims(report.fid_table(write_records(tmp_path, {**FD, ("pagoda", 8): s8})), [8, 16])
        assert c.holds.iloc[2] == holds and c.training_holds.iloc[2] == holds
    # Exactly 10x the teacher's speed is not "far faster".
    table = report.fid_table(write_records(tmp_path, FD))
    for ips, holds in ((300.0, False), (300.1, True)):
        table.loc[table.method == "pagoda", "images_per_sec"] = ips
        c = report.claims(table, [8, 16])
        assert c.holds.iloc[2] == holds and c.training_holds.iloc[2] == holds


def test_growth_claim_notes_when_the_pixel_view_disagrees(tmp_path):
    table = report.fid_table(write_records(tmp_path, FD, effnet={**FD, ("pagoda", 16): 1000.0}))
    table.loc[(table.method == "pagoda") & (table.resolution == 16), "swd_finest"] = 77.0  # ties data_bicubic
    table.loc[(table.method == "stage2_bicubic") & (table.resolution == 16), "fd_effnet"] = 500.0
    c = report.claims(table, [8, 16])
    assert c.holds.iloc[1] and not c.training_holds.iloc[1]
    assert c.measured.iloc[1].endswith("swd_finest: pagoda 77 vs best upsampling data_bicubic 77 (1.0x worse) "
                                       "(the pixel view disagrees)")
    assert c.training_measured.iloc[1] == "pagoda 1000 vs best upsampling stage2_bicubic 500 (0.5x worse)"
    assert "The training space DISAGREES: by fd_effnet the claim does not hold" in report.claim_sentences(c)


def test_claims_over_three_resolutions_and_unmeasured_rows(tmp_path):
    fd = {**FD, ("pagoda", 32): 300.0, ("teacher_ode_bicubic", 32): 900.0, ("stage2_bicubic", 32): 290.0,
          ("data_bicubic", 32): 950.0}
    c = report.claims(report.fid_table(write_records(tmp_path, fd)), [8, 16, 32], placement={})
    assert list(c.claim.str.extract(r"at (\d+)x")[0]) == ["8", "16", "32", "8"] and list(c.holds) == [
        False, True, False, True]
    assert "best upsampling stage2_bicubic 290" in c.measured.iloc[2]
    # Without the teacher's row nothing about it can be judged: no NFE, ratios of NaN, "not measured".
    no_teacher = {k: v for k, v in FD.items() if k[0] != "teacher_ode"}
    c = report.claims(report.fid_table(write_records(tmp_path, no_teacher)), [8, 16])
    lines = report.claim_sentences(c).splitlines()
    assert lines[0] == ("not measured (fd_judge): the one-step student matches or beats its teacher at 8x8. "
                        "Measured: pagoda 50 vs teacher_ode nan (ratio nan).")
    assert lines[2].startswith("not measured (fd_judge): one step is far faster than the ?-NFE ODE")
    assert lines[1].startswith("HOLDS")


def test_placement_from_samples_on_flat_images(tmp_path):
    # Flat grey images: resizing keeps them, so the errors are hand-computable on the [0, 1] scale.
    grey = np.array([0, 50, 100, 150, 200, 240])
    base = np.broadcast_to(grey[:, None, None, None], (6, 1, 8, 8)).astype(np.uint8)
    high = np.broadcast_to(grey[:, None, None, None] + 10, (6, 1, 32, 32)).astype(np.uint8)
    evaluate.save_samples(tmp_path / "pagoda_32.npz", high, None, 1, 900.0)
    assert report.placement_from_samples(tmp_path, [8, 32]) == {}  # no base samples: nothing to compare
    evaluate.save_samples(tmp_path / "pagoda_8.npz", base, None, 1, 1000.0)
    p = report.placement_from_samples(str(tmp_path), [8, 16, 32])  # 16 has not been sampled: skipped
    assert list(p) == [32] and all(type(v) is float for v in p[32])
    # Same z: every image 10 grey levels off. Shuffled (each grown image against the previous base image):
    # |10 - 240| + 5 * 60 ... = 230 + 60 + 60 + 60 + 60 + 50.
    assert p[32] == pytest.approx((10 / 255, 520 / 6 / 255), rel=1e-5)
    # Above the base only the first evaluate.keep_samples are kept: the base is cut to match (the first 4 of 6;
    # shuffled: |10 - 150| + 60 + 60 + 60 over 4).
    evaluate.save_samples(tmp_path / "pagoda_32.npz", high[:4], None, 1, 900.0)
    assert report.placement_from_samples(tmp_path, [8, 32])[32] == pytest.approx((10 / 255, 320 / 4 / 255), rel=1e-5)


def test_inverse_claims_and_their_sentences_on_every_task():
    rows = []
    for task, method, d, kid, eff in (("sr4", "pagoda", 0.4, 0.04, 1.2), ("sr4", "pagoda_optim", 0.5, 0.03, 1.0),
                                      ("sr4", "bicubic", 0.5, 0.05, 1.2), ("inpaint_box", "pagoda", 0.3, 0.02, 0.8),
                                      ("inpaint_box", "biharmonic", 0.3, 0.03, 0.9),
                                      ("inpaint_random", "pagoda", 0.1, 0.01, 0.1),
                                      ("inpaint_random", "biharmonic", 0.2, 0.02, 0.2),
                                      ("deblur", "pagoda", 0.2, 0.02, 0.5),
                                      ("deblur", "richardson_lucy", 0.25, 0.02, 0.6)):
        mine = method == "pagoda"
        rows.append({"task": task, "method": method, "psnr": 22.5 if mine else 20.0, "ssim": 0.8 if mine else 0.7,
                     "judge_distance": d, "kid_judge": kid, "effnet_distance": eff,
                     "sec_per_image": 0.1 if mine else 0.2, "n_images": 100})
    c = report.inverse_claims(pd.DataFrame(rows))
    assert list(c.claim) == ["sr4: PaGoDA (inversion + one step) beats bicubic",
                             "sr4: inversion beats latent optimisation (paper's remark)",
                             "inpaint_box: PaGoDA (latent optimisation) beats biharmonic",
                             "inpaint_random: PaGoDA (latent optimisation) beats biharmonic",
                             "deblur: PaGoDA (latent optimisation) beats richardson_lucy"]
    rest = "; PSNR 22.50 vs 20.00 dB, SSIM 0.800 vs 0.700, 100.0 vs 200.0 ms/image"
    assert list(c.measured) == ["judge_distance 0.400 vs 0.500, kid_judge 0.0400 vs 0.0500" + rest,
                                "judge_distance 0.400 vs 0.500" + rest,
                                "judge_distance 0.300 vs 0.300, kid_judge 0.0200 vs 0.0300" + rest,
                                "judge_distance 0.100 vs 0.200, kid_judge 0.0100 vs 0.0200" + rest,
                                "judge_distance 0.200 vs 0.250, kid_judge 0.0200 vs 0.0200" + rest]
    # Strictly better on each measure: ties (judge distance, KID, EfficientNet distance) do not hold.
    assert list(c.holds) == [True, True, False, True, False]
    assert list(c.training_holds) == [False, False, True, True, True]
    assert list(c.training_measured) == ["1.200 vs 1.200", "1.200 vs 1.000", "0.800 vs 0.900", "0.100 vs 0.200",
                                         "0.500 vs 0.600"]
    assert set(c.metric) == {"judge"} and set(c.training_metric) == {"effnet_distance"}
    assert report.claim_sentences(c).splitlines()[2] == (
        "DOES NOT HOLD (judge): inpaint_box: PaGoDA (latent optimisation) beats biharmonic. Measured: "
        "judge_distance 0.300 vs 0.300, kid_judge 0.0200 vs 0.0300" + rest + ". The training space DISAGREES: "
        "by effnet_distance the claim holds (0.800 vs 0.900).")
    # A task whose baseline was not run has no claim.
    c = report.inverse_claims(pd.DataFrame([r for r in rows if r["method"] != "richardson_lucy"]))
    assert list(c.claim.str.split(":").str[0]) == ["sr4", "sr4", "inpaint_box", "inpaint_random"]
