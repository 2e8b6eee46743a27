"""Smoke test of the h2load capacity benchmark (bench/h2load.py) against real servers: every check it sends must be
found in the audit log with the verdict it must get; a run whose checks the server refuses must fail that check
(h2load itself counts HTTP answers, not gRPC statuses). Asserts answers, never speed."""

from __future__ import annotations

import collections
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tests.bench import bench_script

H2LOAD = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed (nghttp2-client)")


@H2LOAD
def test_every_check_sent_is_audited_with_its_verdict(tmp_path: Path) -> None:
    h2load = bench_script("h2load")
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
        assert r["correct"] and r["audit_rows"] == r["expected_rows"]["exactly"] and r["succeeded"] == r["requests"]
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
def test_timed_runs_keep_every_worker_busy_and_audit_every_answer(tmp_path: Path) -> None:
    """--duration (h2load -D): every request answered is audited with its verdict, and none beyond those started;
    both workers answer until the deadline."""
    h2load = bench_script("h2load")
    out = tmp_path / "result.json"
    args = ["--records", "3000", "--workers", "2", "--latency-calls", "50", "--duration", "1.5"]
    # 24 connections of each kind: the kernel hashes each to a worker, and all 24 land on one once in 8 million runs
    assert h2load.main([*args, "--connections", "24", "--stream-connections", "24", "--output", str(out)]) == 0
    runs = {r["scenario"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"latency", "unary", "unary-clear", "stream"}
    for name in ("unary", "unary-clear", "stream"):
        r = runs[name]
        assert r["correct"] and 1.4 <= r["seconds"] <= 2.5 and 0 < r["succeeded"] == r["done"] <= r["started"]
        found, low, high = r["audit_rows"], r["expected_rows"]["at_least"], r["expected_rows"]["at_most"]
        assert set(found) == set(low) and all(low[v] <= found[v] <= high[v] for v in found)
        assert all(cpu > 0.1 for cpu in r["worker_cpu_seconds"])  # each worker answered, not only one
    assert runs["unary"]["audit_rows"]["HIT"] >= runs["unary"]["succeeded"]
    assert set(runs["unary-clear"]["audit_rows"]) == {"CLEAR"}
    stream = runs["stream"]
    assert stream["checks"] == stream["succeeded"] * h2load.STREAM_CHECKS
    assert sum(stream["audit_rows"].values()) >= stream["checks"]


def test_a_timed_run_must_leave_a_row_for_every_answer_and_none_beyond() -> None:
    """The timed audit check on its own: rows short of the requests answered, rows beyond those started, a verdict
    no request could get, or an h2load failure, each fail the run."""
    h2load = bench_script("h2load")
    scenario = h2load.Scenario(
        "stream", "CheckDocumentStream", b"", 0, 4, 1, collections.Counter({"CLEAR": 99, "HIT": 1}), seconds=1
    )
    run = {"started": 12, "done": 10, "succeeded": 10, "failed": 0, "errored": 0}

    def correct(found: dict[str, int], **changes: int) -> bool:
        ok, _ = h2load.audit_verdict(scenario, collections.Counter(found), {**run, **changes})
        return bool(ok)

    assert correct({"CLEAR": 990, "HIT": 10})  # the streams answered
    assert correct({"CLEAR": 1050, "HIT": 11})  # and parts of those cut at the deadline
    assert correct({"CLEAR": 1188, "HIT": 12})
    assert not correct({"CLEAR": 989, "HIT": 10})  # a check answered but not audited (or refused)
    assert not correct({"CLEAR": 990, "HIT": 9})
    assert not correct({"CLEAR": 1189, "HIT": 12})  # more than was sent
    assert not correct({"CLEAR": 990, "HIT": 10, "POSSIBLE_MATCH": 1})  # a verdict no query could get
    assert not correct({"CLEAR": 990, "HIT": 10}, failed=1)
    assert not correct({"CLEAR": 990, "HIT": 10}, done=11)  # a request done but not succeeded
    assert not correct({}, started=0, done=0, succeeded=0)  # nothing answered at all


@H2LOAD
def test_checks_the_server_refuses_fail_the_run(tmp_path: Path) -> None:
    """An unknown issuing state: the server refuses every call (INVALID_ARGUMENT, inside an HTTP 200 answer, which
    h2load counts as a success); no audit row, so the run is not correct."""
    h2load = bench_script("h2load")
    data = tmp_path / "data"
    h2load.seed(data, 100)
    refused = h2load.pb.CheckDocumentRequest(
        query=h2load.pb.DocumentQuery(typed=h2load.pb.TypedQuery(issuing_state="QQQ", document_number="X1"))
    )
    body = tmp_path / "refused.bin"
    body.write_bytes(h2load.frame(refused))
    counted = h2load.Scenario("unary", "CheckDocument", body.read_bytes(), 50, 2, 2, collections.Counter({"CLEAR": 1}))
    r = h2load.measure(data, 1, counted, body)
    assert r["succeeded"] == 50 and r["http_2xx"] == 50  # all "succeeded" for h2load
    assert r["audit_rows"] == {} and r["correct"] is False
    timed = dataclasses.replace(counted, requests=0, seconds=0.5)
    r = h2load.measure(data, 1, timed, body)
    assert r["succeeded"] > 0 and r["http_2xx"] == r["succeeded"]
    assert r["audit_rows"] == {} and r["correct"] is False


@pytest.mark.parametrize("script", ["h2load", "grpc_floor"])
def test_without_h2load_it_says_what_to_install(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert bench_script(script).main(["--records", "10"]) == 2
    assert "apt-get install nghttp2-client" in capsys.readouterr().err
