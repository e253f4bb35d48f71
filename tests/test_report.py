"""The report: table layout, stage costs from the stages' logs, the claims logic, placement from samples."""

import json

import numpy as np
import pandas as pd
import pytest

from pagoda import evaluate, report


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
    # Against a baseline the KID must agree too; against latent optimisation the distance alone decides.
    c = report.inverse_claims(inverse_table(judge_distance=0.4, kid_judge=0.06, effnet_distance=0.9))
    assert list(c.holds) == [False, True, False] and c.training_holds.all()


def test_every_row_of_the_default_study_is_scheduled():
    rows = evaluate.rows([8, 16, 32])
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
