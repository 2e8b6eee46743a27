"""Smoke test of the load script: a tiny register for a few seconds. Asserts correct answers, never speed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_load_script_runs_end_to_end_and_answers_correctly(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import load  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "result.json"
    assert (
        load.main(
            [
                "--records",
                "3000",
                "--seconds",
                "0.5",
                "--manifest-size",
                "100",
                "--manifest-concurrency",
                "1",
                "2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["upload"]["rows"] == 3000
    single = result["single_c1"]
    # 2% of the queries are listed numbers and 1% OCR variants of listed numbers: both kinds must show up.
    assert single["verdicts"]["VERDICT_HIT"] > 0 and single["verdicts"]["VERDICT_CLEAR"] > 0
    for key, rpc in (("manifest", "CheckManifest"), ("documents", "CheckDocuments")):
        for conc in (1, 2):
            manifest = result[f"{key}_c{conc}"]
            assert manifest["rpc"] == rpc
            assert manifest["documents"] % 100 == 0 and manifest["documents"] > 0
            assert manifest["hits"] > 0


def test_service_scale_script_runs_the_bench_tool_per_size_and_summarises(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import service_scale  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "scale.json"
    assert service_scale.main(["--sizes", "2e3", "--duration", "1", "--warmup", "0", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["records"] == 2000 and row["seed_uploads"] == 1
    assert 0 < row["single_p50_ms"] <= row["single_p99_ms"]
    assert row["manifest_documents_per_s"] > 0 and row["upload_rows_per_s"] > 0
    assert row["server_rss_bytes_per_record_at_end"] > 0
    assert row["server_rss_bytes_per_record_after_settling"] > 0  # measured again once the server was idle
    assert (tmp_path / "bench-2000-scale.json").exists()
    # The summary can be rebuilt from the run's result file.
    again = tmp_path / "again.json"
    assert service_scale.main(["--from-results", str(tmp_path / "bench-2000-scale.json"), "--out", str(again)]) == 0
    assert json.loads(again.read_text())["results"] == [row]
