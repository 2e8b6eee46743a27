"""Hit notifications and hit outcomes end to end: a member watches the hits on its records, resumes from a
cursor without gap or duplicate, confirms or rejects them, and the querying member reads the outcome."""

from __future__ import annotations

import json
import queue
import threading

import pytest

from idcheck.client.audit import AuditClient
from idcheck.client.cli import main
from idcheck.client.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from idcheck.v1 import audit_pb2
from tests.conftest import ServerProcess


def rec(state: str, number: str) -> dict[str, object]:
    return {
        "issuing_state": state,
        "document_number": number,
        "document_class": 1,
        "status": 2,
        "event_date": "2025-01-15",
    }


@pytest.fixture
def owners(server: ServerProcess) -> ServerProcess:
    with server.client("NZL", "member") as nzl, server.client("FJI", "member") as fji:
        nzl.upload([rec("NZL", "LA000001"), rec("NZL", "LA000002")], upload_id="n")
        fji.upload([rec("FJI", "F0000001")], upload_id="f")
    return server


def fji_checks(server: ServerProcess, *numbers: tuple[str, str]) -> list[str]:
    """FJI's border checks the documents; returns the query ids."""
    with server.client("FJI", "border") as border:
        return [border.check(state=s, number=n).query_id for s, n in numbers]


def caught_up(server: ServerProcess, member: str, cursor: str = "") -> list[audit_pb2.HitNotification]:
    with AuditClient(server.address, member=member, role="member") as a:
        return list(a.watch_hits(cursor, follow=False))


def test_member_watching_sees_hits_on_its_records_live_and_nothing_else(owners: ServerProcess) -> None:
    got: queue.Queue[audit_pb2.HitNotification] = queue.Queue()
    with AuditClient(owners.address, member="NZL", role="member") as a:
        stream = a.watch_hits(timeout=20)

        def pump() -> None:
            for n in stream:
                got.put(n)

        threading.Thread(target=pump, daemon=True).start()
        qids = fji_checks(
            owners,
            ("NZL", "LA000001"),  # HIT on NZL's record
            ("FJI", "F0000001"),  # HIT on FJI's record: not NZL's business
            ("NZL", "ZZ9"),  # CLEAR
            ("NZL", "LA00000I"),  # POSSIBLE_MATCH (OCR variant) on NZL's record
        )
        first, second = got.get(timeout=10), got.get(timeout=10)
        stream.cancel()
    assert [(n.query_id, n.verdict, n.document_number) for n in (first, second)] == [
        (qids[0], "HIT", "LA000001"),
        (qids[3], "POSSIBLE_MATCH", "LA00000I"),
    ]
    assert first.caller_member == "FJI" and first.caller_role == "border" and first.issuing_state == "NZL"
    assert first.at and len(first.matched_record_ids) == 1 and first.cursor
    assert got.empty()
    assert [n.query_id for n in caught_up(owners, "FJI")] == [qids[1]]


def test_watch_resumed_from_a_cursor_has_no_gap_and_no_duplicate(owners: ServerProcess) -> None:
    before = fji_checks(owners, ("NZL", "LA000001"), ("NZL", "LA000002"))
    with AuditClient(owners.address, member="NZL", role="member") as a, a.watch_hits(timeout=20) as stream:
        seen = [next(iter(stream))]  # process one, then disconnect
    assert seen[0].query_id == before[0]
    while_away = fji_checks(owners, ("NZL", "LA000001"), ("FJI", "F0000001"), ("NZL", "LA000002"))
    resumed = caught_up(owners, "NZL", seen[0].cursor)
    assert [n.query_id for n in resumed] == [before[1], while_away[0], while_away[2]]
    assert caught_up(owners, "NZL", resumed[-1].cursor) == []
    assert [n.query_id for n in caught_up(owners, "NZL")] == [before[0], *[n.query_id for n in resumed]]
    with AuditClient(owners.address, member="NZL", role="member") as a, pytest.raises(InvalidArgument):
        list(a.watch_hits("not-a-cursor", follow=False))


def test_owner_confirms_and_the_querying_member_reads_the_outcome(owners: ServerProcess) -> None:
    hit, clear = fji_checks(owners, ("NZL", "LA000001"), ("NZL", "ZZ9"))
    with AuditClient(owners.address, member="FJI", role="border") as fji:
        assert fji.hit_outcome(hit).outcome == "PENDING"
    # FJI asked, but the record is NZL's
    with AuditClient(owners.address, member="FJI", role="member") as fji_member, pytest.raises(PermissionDenied):
        fji_member.confirm_hit(hit, "CONFIRMED")
    with AuditClient(owners.address, member="NZL", role="member") as nzl:
        done = nzl.confirm_hit(hit, "confirmed", note="passport reported stolen 2025-01-15; detain")
        assert (done.outcome, done.decided_by, done.caller_member) == ("CONFIRMED", "NZL", "FJI")
        with pytest.raises(FailedPrecondition):  # one outcome per query id
            nzl.confirm_hit(hit, "REJECTED")
        with pytest.raises(NotFound):
            nzl.confirm_hit("0123456789abcdef0123456789abcdef", "CONFIRMED")
        with pytest.raises(NotFound):  # a CLEAR is not a hit
            nzl.confirm_hit(clear, "CONFIRMED")
        with pytest.raises(InvalidArgument):
            nzl.confirm_hit(hit, "MAYBE")
    with AuditClient(owners.address, member="FJI", role="border") as fji:
        outcome = fji.hit_outcome(hit)
        assert (outcome.outcome, outcome.note) == ("CONFIRMED", "passport reported stolen 2025-01-15; detain")
        assert outcome.decided_at
    with AuditClient(owners.address, member="AUS", role="border") as aus, pytest.raises(PermissionDenied):
        aus.hit_outcome(hit)
    with AuditClient(owners.address, member="AUS", role="operator") as op, pytest.raises(PermissionDenied):
        op.hit_outcome(hit)


def test_hit_commands(owners: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    (hit,) = fji_checks(owners, ("NZL", "LA000001"))
    nzl = ["--target", owners.address, "--member", "NZL", "--role", "member"]
    assert main(["hits", *nzl, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["query_id"], x["verdict"]) for x in lines] == [(hit, "HIT")]
    assert main(["hits", *nzl, "--cursor", lines[0]["cursor"]]) == 0
    assert capsys.readouterr().out == ""
    assert main(["confirm-hit", hit, *nzl, "--outcome", "rejected", "--note", "holder recovered it"]) == 0
    assert "REJECTED" in capsys.readouterr().out
    fji = ["--target", owners.address, "--member", "FJI", "--role", "border"]
    assert main(["hit-outcome", hit, *fji]) == 0
    out = capsys.readouterr().out
    assert "REJECTED" in out and "holder recovered it" in out
    assert main(["hits", *fji]) == 1 and "PERMISSION_DENIED" in capsys.readouterr().err
