"""Smoke test of bench/grpc_floor.py against real servers (an empty grpc-python server and the register): both
answer h2load's single checks and manifests, the register's every check and every manifest's every document audited
as CLEAR, and the figures are reported. Asserts answers, never speed. (Without h2load it says what to install:
test_h2load_smoke.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.bench import bench_script


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed (nghttp2-client)")
def test_both_servers_answer_and_the_difference_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "floor.json"
    args = ["--records", "500", "--duration", "1", "--connections", "4", "--output", str(out)]
    assert bench_script("grpc_floor").main(args) == 0
    result = json.loads(out.read_text())
    empty, check, empty_manifest, manifest = result["runs"]
    assert [r["server"] for r in result["runs"]] == ["empty", "check", "empty-manifest", "manifest"]
    for r in result["runs"]:
        assert r["calls"] > 0 and r["server_cpu_seconds"] > 0 and r["server_cpu_us_per_call"] > 0
        assert 0.9 <= r["seconds"] <= 2.5
    assert result["check_minus_empty_us_per_call"] == round(
        check["server_cpu_us_per_call"] - empty["server_cpu_us_per_call"], 1
    )
    assert result["manifest_minus_empty_us_per_call"] == round(
        manifest["server_cpu_us_per_call"] - empty_manifest["server_cpu_us_per_call"], 1
    )
    # The manifest's request is the Arrow table of 1,000 numbers, sent as it is to both servers.
    assert result["manifest_documents"] == 1000 and result["manifest_request_bytes"] > 10_000
    out_text = capsys.readouterr().out
    assert "the register's check adds" in out_text and "the register's manifest of 1,000 adds" in out_text


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        bench_script("grpc_floor").main(["--connections", "0"])
    assert refused.value.code == 2
    assert "--connections must be at least 1" in capsys.readouterr().err
