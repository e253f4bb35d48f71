"""The report: table layout, stage costs from the stages' logs, the claims logic, placement from samples."""

import json

import numpy as np
import pandas as pd

from pagoda import evaluate, report


def write_records(folder, fd):
    paths = []
    for (method, res), value in fd.items():
        rec = {"method": method, "resolution": res, "nfe": {"teacher_ode": 79, "pagoda": 1}.get(method),
               "n_samples": 100, "fd_effnet": value, "fid_inception": None, "precision": 0.5, "recall": 0.5,
               "density": 1.0, "coverage": 0.5, "images_per_sec": {"teacher_ode": 30.0, "pagoda": 3000.0}.get(method),
               "device": "cpu", "feature_size": 64}
        path = folder / f"{method}_{res}.json"
        path.write_text(json.dumps(rec))
        paths.append(path)
    return paths


FD = {("pagoda", 16): 150.0, ("data_test", 8): 27.0, ("teacher_ode", 8): 40.0, ("pagoda", 8): 50.0,
      ("teacher_ode_bicubic", 16): 800.0, ("stage2_bicubic", 16): 820.0, ("data_bicubic", 16): 770.0,
      ("data_test", 16): 38.0}


def test_table_has_the_required_columns_in_method_order(tmp_path):
    table = report.fid_table(write_records(tmp_path, FD))
    for col in ("method", "resolution", "nfe", "n_samples", "fd_effnet", "fid_inception", "precision", "recall",
                "images_per_sec", "device"):
        assert col in table.columns
    assert list(table.method) == ["data_test", "data_test", "teacher_ode", "teacher_ode_bicubic", "pagoda", "pagoda",
                                  "stage2_bicubic", "data_bicubic"]
    assert table.fid_inception.isna().all()  # empty, never filled in


def test_claims_hold_or_fail_on_the_numbers(tmp_path):
    table = report.fid_table(write_records(tmp_path, FD))
    c = report.claims(table, [8, 16], placement={16: (0.02, 0.2)})
    assert list(c.holds) == [False, True, True, True]  # student 50 > teacher 40; the rest hold
    worse = {**FD, ("pagoda", 16): 900.0}
    c = report.claims(report.fid_table(write_records(tmp_path, worse)), [8, 16])
    assert not c.holds.iloc[1]
    assert "DOES NOT HOLD" in report.claim_sentences(c)


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
