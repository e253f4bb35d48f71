"""The workflow's plan: resolutions, encoder shards and table rows (pagoda.plan, imported by the Snakefile)."""

import pytest

from pagoda import plan


def test_rows_of_three_resolutions_in_table_order():
    assert plan.rows([8, 16, 32]) == [
        ("data_test", 8), ("data_test", 16), ("data_test", 32), ("teacher_ode", 8), ("teacher_ode_bicubic", 16),
        ("teacher_ode_bicubic", 32), ("pagoda", 8), ("pagoda", 16), ("pagoda", 32), ("stage2_bicubic", 16),
        ("stage2_bicubic", 32), ("data_bicubic", 16), ("data_bicubic", 32)]
    assert plan.rows([16]) == [("data_test", 16), ("teacher_ode", 16), ("pagoda", 16)]


def test_applies_only_at_the_study_resolutions():
    for method in plan.METHODS:
        assert not plan.applies(method, 64, [8, 16])
    assert plan.applies("teacher_ode", 8, [8, 16]) and not plan.applies("teacher_ode", 16, [8, 16])
    with pytest.raises(ValueError, match=r"unknown method 'vae'; known: \('data_test'"):
        plan.applies("vae", 8, [8, 16])


def test_resolutions_that_do_not_divide_the_data_are_rejected():
    plan.check_resolutions([8, 16, 32], 32)
    with pytest.raises(ValueError, match="do not divide"):
        plan.check_resolutions([8, 12], 32)
    with pytest.raises(ValueError, match="do not divide"):
        plan.check_resolutions([8, 64], 32)
    with pytest.raises(ValueError, match="powers of two"):
        plan.check_resolutions([6, 12], 24)


def test_check_resolutions_accepts_every_power_of_two_divisor_and_explains_rejections():
    plan.check_resolutions([1, 2, 4], 4)  # 1 = 4 / 2^2 is allowed
    with pytest.raises(ValueError, match=r"^resolutions \[12\] do not divide the data size 32: every resolution "
                                         r"must be data_size / 2\^k \(e.g. \[8, 16, 32\]\)$"):
        plan.check_resolutions([8, 12], 32)
    with pytest.raises(ValueError, match=r"^resolutions \[6, 12\] are not powers of two$"):
        plan.check_resolutions([6, 12], 24)


def test_num_shards_counts_the_flipped_copies():
    assert plan.num_shards(10, 6) == 4  # 20 latents (each image and its flip) in shards of 6
    assert plan.num_shards(10, 6, flips=False) == 2
    assert plan.num_shards(12, 6) == 4 and plan.num_shards(12, 6, flips=False) == 2
