"""Smoke test of the h2load capacity benchmark (bench/h2load.py) against real servers: every check it sends must be
found in the audit log with the verdict it must get; a run whose checks the server refuses must fail that check
(h2load itself counts HTTP answers, not gRPC statuses). Asserts answers, never speed."""

from __future__ import annotations

import collections
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
H2LOAD = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed (nghttp2-client)")


def h2load_module() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        import h2load  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(BENCH))
    return h2load  # type: ignore[no-any-return]


@H2LOAD
def test_every_check_sent_is_audited_with_its_verdict(tmp_path: Path) -> None:
    h2load = h2load_module()
    out = tmp_path / "result.json"
    args = [
        "--records",
        "3000",
        "--workers",
        "1",
        "2",
        "--latency-calls",
        "300",
        "--calls",
        "400",
        "--streams",
        "10",
        "--connections",
        "4",
        "--stream-connections",
        "2",
    ]
    assert h2load.main([*args, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    runs = {(r["scenario"], r["workers"]): r for r in result["runs"]}
    assert set(runs) == {("latency", 1), *((s, w) for s in ("unary", "unary-clear", "stream") for w in (1, 2))}
    for r in runs.values():
        assert r["correct"] and r["audit_rows"] == r["expected_rows"] and r["succeeded"] == r["requests"]
        assert r["checks_per_s"] > 0 and r["server_cpu_seconds"] > 0
    assert runs["unary", 1]["audit_rows"] == {"HIT": 400}
    assert runs["unary-clear", 2]["audit_rows"] == {"CLEAR": 400}
    latency = runs["latency", 1]["request_ms"]  # percentiles of each call's time, in order
    assert runs["latency", 1]["audit_rows"] == {"HIT": 300}
    assert (
        0 < latency["min"] <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    )
    stream = runs["stream", 1]["audit_rows"]
    assert sum(stream.values()) == 10 * h2load.STREAM_CHECKS and {"CLEAR", "HIT"} <= set(stream)


@H2LOAD
def test_checks_the_server_refuses_fail_the_run(tmp_path: Path) -> None:
    """An unknown issuing state: the server refuses every call (INVALID_ARGUMENT, inside an HTTP 200 answer, which
    h2load counts as a success); no audit row, so the run is not correct."""
    h2load = h2load_module()
    data = tmp_path / "data"
    h2load.seed(data, 100)
    refused = h2load.pb.CheckDocumentRequest(
        query=h2load.pb.DocumentQuery(typed=h2load.pb.TypedQuery(issuing_state="QQQ", document_number="X1"))
    )
    body = tmp_path / "refused.bin"
    body.write_bytes(h2load.frame(refused))
    scenario = h2load.Scenario(
        "unary", "CheckDocument", body.read_bytes(), 50, 2, 2, collections.Counter({"CLEAR": 50})
    )
    r = h2load.measure(data, 1, scenario, body)
    assert r["succeeded"] == 50 and r["http_2xx"] == 50  # all "succeeded" for h2load
    assert r["audit_rows"] == {} and r["correct"] is False


def test_without_h2load_it_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert h2load_module().main(["--records", "10"]) == 2
    assert "apt-get install nghttp2-client" in capsys.readouterr().err
