"""Smoke test of the bulk-upload benchmark (bench/upload.py): a small file through a real server, with one
issuing state and with several. Asserts what was written and uploaded, never speed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.bench import bench_script


@pytest.mark.parametrize("states", [1, 40])
def test_upload_benchmark_writes_its_file_and_uploads_every_row(tmp_path: Path, states: int) -> None:
    upload = bench_script("upload")
    out = tmp_path / "result.json"
    args = ["--rows", "20000", "--cache", str(tmp_path), "--out", str(out), "--states", str(states)]
    assert upload.main(args) == 0
    name = "records-20000.parquet" if states == 1 else f"records-20000-states{states}.parquet"
    table = pq.read_table(tmp_path / name)
    keys = list(
        zip(table.column("issuing_state").to_pylist(), table.column("document_number").to_pylist(), strict=True)
    )
    assert len(keys) == len(set(keys)) == 20000  # distinct documents
    by_state = Counter(state for state, _ in keys)
    assert len(by_state) == states
    if states > 1:  # mostly the member's own state, the rest spread over the others
        assert 0.65 < by_state[upload.MEMBER] / 20000 < 0.75
        assert max(n for s, n in by_state.items() if s != upload.MEMBER) < 0.02 * 20000
    result = json.loads(out.read_text())
    assert result["issuing_states"] == states and result["file"] == name
    assert set(result["machine"]["speed"]) == {"numpy_sort_4m_s", "python_loop_2m_s"}
    assert all(seconds > 0 for seconds in result["machine"]["speed"].values())
    assert result["end_to_end"]["rows"] == 20000 and result["end_to_end"]["rows_per_s"] > 0


def test_state_count_beyond_the_known_codes_is_refused() -> None:
    upload = bench_script("upload")
    with pytest.raises(SystemExit, match="--states must be between 1 and"):
        upload.issuing_states(100_000)
