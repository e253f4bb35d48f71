"""benchmarks/mutation_score.py: the mutation score and its estimate from a random sample of mutants."""

import importlib.util
import pathlib

import pytest

spec = importlib.util.spec_from_file_location(
    "mutation_score", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "mutation_score.py")
mutation_score = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation_score)


def test_wilson_interval_on_known_values():
    low, high = mutation_score.wilson(9, 10)
    assert (low, high) == (pytest.approx(0.5958, abs=1e-4), pytest.approx(0.9821, abs=1e-4))
    assert mutation_score.wilson(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)


def test_sampled_score_counts_the_census_and_scales_the_sample_to_its_pool():
    # 10 checked outside the sample (8 killed, 1 of the 2 others equivalent), 4 drawn (3 killed, 1 equivalent)
    # from a pool of 4 + 6 still unchecked, 2 timeouts among the killed.
    codes = {f"c{i}": 1 for i in range(7)} | {"c7": 24, "c8": 0, "c9": 0}
    codes |= {"s0": 1, "s1": 36, "s2": 1, "s3": 0} | {f"u{i}": None for i in range(6)}
    equivalents, sample = {"c9", "s3"}, {"s0", "s1", "s2", "s3"}
    est, low, high, checked, pool = mutation_score.sampled_score(codes, equivalents, sample)
    assert (checked, pool) == (4, 10)
    # census: 8 of 9 killed; pool: 10 x 3/4 = 7.5 counted mutants, every judged one of the sample killed.
    assert est == pytest.approx((8 + 7.5) / (9 + 7.5))
    assert low == pytest.approx((8 + 7.5 * mutation_score.wilson(3, 3)[0]) / 16.5) and high == pytest.approx(est)
    assert mutation_score.sampled_score(codes, equivalents, {"u0"}) is None  # drawn but not checked yet
