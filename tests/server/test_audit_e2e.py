"""Reading the audit log end to end: operators see every check, members the checks that hit their records."""

from __future__ import annotations

import json

import pytest

from idcheck.client.audit import AuditClient
from idcheck.client.cli import main
from idcheck.client.errors import InvalidArgument, PermissionDenied
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
def checked(server: ServerProcess) -> ServerProcess:
    with server.client("NZL", "member") as nzl, server.client("FJI", "member") as fji:
        nzl.upload([rec("NZL", "LA000001")], upload_id="n")
        fji.upload([rec("FJI", "F0000001")], upload_id="f")
    with server.client("FJI", "border") as fji_border:
        list(
            fji_border.check_many(
                [
                    {"state": "NZL", "number": "LA000001"},
                    {"state": "FJI", "number": "F0000001"},
                    {"state": "FJI", "number": "X1"},
                ]
            )
        )
    with server.client("NZL", "border") as nzl_border:
        nzl_border.check(state="NZL", number="LA00000I")  # OCR variant of NZL's record
    return server


def audit(server: ServerProcess, member: str, role: str, **kw: object) -> list[tuple[str, str, str]]:
    with AuditClient(server.address, member=member, role=role) as a:
        return [(e.caller_member, e.document_number, e.verdict) for e in a.entries("2000-01-01", **kw)]  # type: ignore[arg-type]


def test_operator_sees_every_check_and_can_filter(checked: ServerProcess) -> None:
    everything = audit(checked, "UTO", "operator")
    assert everything == [
        ("FJI", "LA000001", "HIT"),
        ("FJI", "F0000001", "HIT"),
        ("FJI", "X1", "CLEAR"),
        ("NZL", "LA00000I", "POSSIBLE_MATCH"),
    ]
    assert audit(checked, "UTO", "operator", caller_member="nzl") == [("NZL", "LA00000I", "POSSIBLE_MATCH")]
    assert [v for _, _, v in audit(checked, "UTO", "operator", verdicts=["CLEAR"])] == ["CLEAR"]
    assert audit(checked, "UTO", "operator", until="2000-01-02") == []
    assert len(audit(checked, "UTO", "operator", page_size=1)) == 4  # paging, one entry per page


def test_member_sees_only_checks_that_hit_its_own_records(checked: ServerProcess) -> None:
    assert audit(checked, "NZL", "member") == [("FJI", "LA000001", "HIT"), ("NZL", "LA00000I", "POSSIBLE_MATCH")]
    assert audit(checked, "FJI", "member") == [("FJI", "F0000001", "HIT")]
    # a member cannot widen its view with the caller filter
    assert audit(checked, "NZL", "member", caller_member="FJI") == audit(checked, "NZL", "member")


def test_border_may_not_read_the_audit_log_and_bad_ranges_are_refused(checked: ServerProcess) -> None:
    with pytest.raises(PermissionDenied):
        audit(checked, "FJI", "border")
    with AuditClient(checked.address, member="UTO", role="operator") as a:
        for kwargs in ({"since": "yesterday"}, {"since": "2026-01-01T00:00:00"}, {"since": ""}):
            with pytest.raises(InvalidArgument):
                list(a.entries(**kwargs))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            list(a.entries("2000-01-01", verdicts=["MAYBE"]))


def test_audit_command(checked: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["audit", "--target", checked.address, "--member", "NZL", "--role", "member", "--since", "2000-01-01", "--json"]
    )
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["document_number"], x["verdict"]) for x in lines] == [
        ("LA000001", "HIT"),
        ("LA00000I", "POSSIBLE_MATCH"),
    ]
    assert all(x["query_id"] for x in lines)
    code = main(["audit", "--target", checked.address, "--member", "FJI", "--role", "border", "--since", "2000-01-01"])
    assert code == 1 and "PERMISSION_DENIED" in capsys.readouterr().err
