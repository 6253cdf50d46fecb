"""The disk a plan needs: the last run's record, else the project's figure; a plan that cannot fit
is said in one line that names the folder and the space."""

from __future__ import annotations

import shutil
import time

from dlenv import disk


def test_the_estimate_uses_this_machines_record_once_there_is_one(tmp_path):
    root = tmp_path / "state"
    first = disk.estimate(root, 4)
    assert first.per_variant == disk.DEFAULT_PER_VARIANT and "no run on this machine" in first.basis
    disk.record(root, growth=8_000_000_000, fresh=4, when="2026-11-30")
    second = disk.estimate(root, 3)
    assert second.need == 3 * 2_000_000_000 and "2026-11-30" in second.basis
    assert second.free == shutil.disk_usage(tmp_path).free
    disk.record(root, growth=0, fresh=0, when="later")   # a no-op run keeps the record
    assert disk.estimate(root, 1).per_variant == 2_000_000_000
    # A smaller run (mostly one-off costs) keeps the larger run's figure; a larger one replaces it.
    disk.record(root, growth=24_000_000_000, fresh=1, when="small")
    assert disk.per_variant(root)[0] == 8_000_000_000 // 4
    disk.record(root, growth=50_000_000_000, fresh=25, when="large")
    assert disk.per_variant(root)[0] == 50_000_000_000 // 25


def test_a_plan_that_cannot_fit_says_where_and_how_much(tmp_path):
    too_big = disk.Estimate(need=50_000_000_000, free=12_000_000_000, fresh=20, per_variant=2_500_000_000,
                            basis="measured")
    assert not too_big.fits
    line = too_big.line(tmp_path)
    assert str(tmp_path) in line and "12.0 GB free" in line and "50.0 GB" in line and "20 variants" in line


def test_the_sampler_sees_the_peak_growth(tmp_path):
    with disk.Sampler(tmp_path, every=0.05) as sampler:
        big = tmp_path / "big"
        big.write_bytes(b"\1" * 300_000_000)
        time.sleep(0.3)
        big.unlink()
    # The whole filesystem is measured: others' writes only add to it; a margin for their deletions.
    assert sampler.growth >= 200_000_000
