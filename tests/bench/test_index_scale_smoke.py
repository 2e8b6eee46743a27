"""Smoke test of the index scale benchmark (bench/index_scale.py) on a small register: what it reports, never
speed."""

from __future__ import annotations

from tests.bench import bench_script


def test_index_scale_measures_an_index_of_the_size_asked() -> None:
    index_scale = bench_script("index_scale")
    # Enough records for the base columns (not the overlay) and for manifests searched in two levels.
    result = index_scale.measure_index(300_000)
    assert result["records"] == 300_000
    assert result["active_records"] > 0.99 * 300_000  # random numbers: a few may repeat
    assert result["column_bytes_per_record"] == 28.0
    for figure in ("manifest_1000_docs_per_s", "same_manifest_1000_docs_per_s", "build_seconds"):
        assert result[figure] > 0, figure
    lookups = result["single_lookup"]
    assert 0 < lookups["p50_us"] <= lookups["p99_us"] <= lookups["max_us"]
