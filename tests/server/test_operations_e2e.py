"""Operator statistics end to end: the counters reflect what the server did, only operators read them, and
they carry no record contents."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from idcheck.client.audit import AuditClient
from idcheck.client.biometrics import BiometricsClient
from idcheck.client.cli import main
from idcheck.client.errors import PermissionDenied, ResourceExhausted
from idcheck.client.operations import OperationsClient
from tests.conftest import ServerProcess


def rec(state: str, number: str, **extra: str) -> dict[str, object]:
    return {
        "issuing_state": state,
        "document_number": number,
        "document_class": 1,
        "status": 2,
        "event_date": "2025-01-15",
        **extra,
    }


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(512).astype(np.float32)
    return v / np.linalg.norm(v)


def operator(server: ServerProcess) -> OperationsClient:
    return OperationsClient(server.address, member="AUS", role="operator")


def test_statistics_count_what_the_server_did(server: ServerProcess) -> None:
    with operator(server) as op:
        before = op.statistics()
    assert before.documents_checked == 0 and dict(before.records_by_status) == {} and before.audit_enabled
    with server.client("NZL", "member") as nzl:
        nzl.upload([rec("NZL", "LA000001", surname="SECRETNAME"), rec("NZL", "LA000002"), rec("NZL", "LA000003")])
        nzl.cancel([("NZL", "LA000003")], reason="recovered")
    with BiometricsClient(server.address, member="NZL", role="member") as bio:
        bio.enrol([{"subject_id": "NZL-1", "vector": vector(1)}])
    with server.client("FJI", "border") as fji, BiometricsClient(server.address, member="FJI", role="border") as b:
        assert fji.check(state="NZL", number="LA000001").verdict == "HIT"
        assert fji.check(state="NZL", number="LA00000I").verdict == "POSSIBLE_MATCH"
        assert fji.check(state="NZL", number="ZZ9").verdict == "CLEAR"
        answers = fji.check_many([{"state": "NZL", "number": "LA000002"}, {"state": "FJI", "number": "X1"}])
        assert [a.verdict for a in answers] == ["HIT", "CLEAR"]
        assert b.verify(vector(1), subject_id="NZL-1").decision == "MATCH"
        assert b.verify(vector(2), subject_id="NZL-1").decision == "NO_MATCH"
        assert b.identify(vector(1)).candidates
    with operator(server) as op:
        stats = op.statistics()  # counts every call answered before it, committed or not
        assert dict(stats.calls_by_kind) == {"check": 3, "manifest": 1, "verify": 2, "identify": 1}
        assert stats.documents_checked == 5
        assert dict(stats.answers_by_verdict) == {
            "HIT": 2,
            "POSSIBLE_MATCH": 1,
            "CLEAR": 2,
            "MATCH": 1,
            "NO_MATCH": 1,
            "CANDIDATES": 1,
        }
        assert dict(stats.records_by_status) == {"STOLEN": 2, "CANCELLED": 1}
        assert stats.active_records == 2 and stats.register_sequence == 4  # 3 created, 1 cancelled
        assert stats.templates_enrolled == 1 and stats.template_sequence == 1 and stats.template_index == "exact"
        assert stats.audit_calls_queued == 0  # nobody else is calling: the writer has taken every call
        assert stats.audit_rows_written + stats.audit_rows_pending == 8  # 5 documents, 2 verifies, 1 identify
        assert stats.rpcs_in_flight == 1  # this call
        assert stats.rate_limited_calls == 0 and stats.overload_refusals == 0
        assert stats.background_tasks == 0  # small changes: no merge, snapshot or checkpoint of their own
        assert stats.uptime_seconds > 0 and stats.started_at.endswith("Z")
        # once the audit log is read (which commits what is pending), everything is written
        with AuditClient(server.address, member="AUS", role="operator") as audit:
            assert len(list(audit.entries("2000-01-01"))) == 8
        later = op.statistics()
        assert (later.audit_calls_written, later.audit_rows_written, later.audit_rows_pending) == (7, 8, 0)
        assert later.rpcs_started > stats.rpcs_started > before.rpcs_started
    # aggregates only: no document numbers, names or subjects
    text = str(stats)
    assert not {"LA000001", "SECRETNAME", "NZL-1", "FJI", "NZL"} & set(text.replace('"', " ").split())


def test_only_operators_read_statistics(server: ServerProcess) -> None:
    for role in ("border", "member"):
        with OperationsClient(server.address, member="NZL", role=role) as client, pytest.raises(PermissionDenied):
            client.statistics()


def test_rate_limit_refusals_are_counted(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--rate-limit-per-second", "0.001", "--rate-limit-burst", "3")
    with server.client("FJI", "border") as fji:
        refused = 0
        for _ in range(5):
            try:
                fji.check(state="NZL", number="ZZ9")
            except ResourceExhausted:
                refused += 1
    assert refused == 2
    with operator(server) as op:  # another member: its own bucket
        stats = op.statistics()
    assert stats.rate_limited_calls == 2 and stats.calls_by_kind["check"] == 3


def test_benchmark_mode_counts_checks_but_writes_no_audit(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--benchmark-no-audit")
    assert "BENCHMARK MODE" in server.log and "AUDIT LOG IS NOT WRITTEN" in server.log
    with server.client("FJI", "border") as fji:
        for _ in range(3):
            fji.check(state="NZL", number="ZZ9")
    with AuditClient(server.address, member="AUS", role="operator") as audit:
        assert list(audit.entries("2000-01-01")) == []
    with operator(server) as op:
        stats = op.statistics()
    assert not stats.audit_enabled
    assert stats.answers_by_verdict["CLEAR"] == 3 and stats.audit_rows_written == 0 and stats.audit_rows_pending == 0


def test_stats_command(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    with server.client("FJI", "border") as fji:
        fji.check(state="NZL", number="ZZ9")
    args = ["stats", "--target", server.address, "--member", "AUS"]  # role operator by default for this command
    assert main([*args, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["answers_by_verdict"] == {"CLEAR": 1} and stats["documents_checked"] == 1
    assert stats["calls_by_kind"] == {"check": 1} and stats["audit_enabled"] is True
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 checked: CLEAR 1" in out and "calls       check 1" in out
    assert main(["stats", "--target", server.address, "--member", "NZL", "--role", "member"]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
