"""Verify and identify in the audit log, end to end: operators see every call, members those that matched
their own templates, and the query id given with each answer names its audit entry."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from idcheck.biometrics.synthetic import FaceGenerator
from idcheck.client.audit import AuditClient
from idcheck.client.biometrics import BiometricsClient, IdentifyAnswer, VerifyAnswer
from idcheck.client.cli import main
from idcheck.v1 import audit_pb2
from tests.conftest import ServerProcess

GEN = FaceGenerator(seed=11)
GALLERY = GEN.gallery(6, 2, seed=1)  # identities 0-2 enrolled by NZL, 3-5 by FJI; two captures each
PROBES = GEN.probes(np.arange(6), seed=2)
STRANGER = GEN.probes(np.arange(10_000, 10_001), seed=3).vectors[0]


def owner_of(identity: int) -> str:
    return "NZL" if identity < 3 else "FJI"


def subject(identity: int) -> str:
    return f"{owner_of(identity)}-{identity}"


def bio(server: ServerProcess, member: str, role: str) -> BiometricsClient:
    return BiometricsClient(server.address, member=member, role=role)


@dataclass
class Calls:
    """The answers given to the biometric calls made by the fixture, by name."""

    verify: dict[str, VerifyAnswer]
    identify: dict[str, IdentifyAnswer]


@pytest.fixture
def calls(server: ServerProcess) -> Calls:
    for member in ("NZL", "FJI"):
        rows = [
            {
                "subject_id": subject(int(i)),
                "vector": GALLERY.vectors[row],
                "documents": [(member, f"D{int(i):07d}")],
            }
            for row, i in enumerate(GALLERY.identities)
            if owner_of(int(i)) == member
        ]
        with bio(server, member, "member") as enrolling:
            enrolling.enrol(rows)
    verify: dict[str, VerifyAnswer] = {}
    identify: dict[str, IdentifyAnswer] = {}
    with bio(server, "FJI", "border") as border:
        verify["nzl_match"] = border.verify(PROBES.vectors[0], subject_id=subject(0))
        verify["nzl_no_match"] = border.verify(PROBES.vectors[1], subject_id=subject(0))
        verify["nzl_document"] = border.verify(PROBES.vectors[2], document=("nzl", "D-0000002"))
        identify["nzl"] = border.identify(PROBES.vectors[1])
        identify["fji"] = border.identify(PROBES.vectors[4])
        identify["nobody"] = border.identify(STRANGER)
    with bio(server, "NZL", "border") as border:
        verify["fji_match"] = border.verify(PROBES.vectors[3], subject_id=subject(3))
    assert [v.decision for v in verify.values()] == ["MATCH", "NO_MATCH", "MATCH", "MATCH"]
    assert [c.subject_id for c in identify["nzl"].candidates] == [subject(1)]
    assert [c.subject_id for c in identify["fji"].candidates] == [subject(4)]
    assert identify["nobody"].candidates == ()
    return Calls(verify, identify)


def entries(server: ServerProcess, member: str, role: str, **kw: object) -> list[audit_pb2.AuditEntry]:
    with AuditClient(server.address, member=member, role=role) as a:
        return list(a.entries("2000-01-01", **kw))  # type: ignore[arg-type]


def summary(e: audit_pb2.AuditEntry) -> tuple[str, str, str, str, str, str, list[int]]:
    return (
        e.query_id,
        e.caller_member,
        e.query_kind,
        e.verdict,
        f"{e.issuing_state} {e.document_number}".strip(),
        e.subject_id,
        list(e.matched_record_ids),
    )


def expected(calls: Calls) -> dict[str, tuple[str, str, str, str, str, str, list[int]]]:
    v, i = calls.verify, calls.identify
    return {
        "v_nzl_match": (
            v["nzl_match"].query_id,
            "FJI",
            "verify",
            "MATCH",
            "",
            subject(0),
            [v["nzl_match"].best_template_id],
        ),
        "v_nzl_no_match": (v["nzl_no_match"].query_id, "FJI", "verify", "NO_MATCH", "", subject(0), []),
        "v_nzl_document": (
            v["nzl_document"].query_id,
            "FJI",
            "verify",
            "MATCH",
            "NZL D0000002",
            "",
            [v["nzl_document"].best_template_id],
        ),
        "i_nzl": (i["nzl"].query_id, "FJI", "identify", "CANDIDATES", "", "", [i["nzl"].candidates[0].template_id]),
        "i_fji": (i["fji"].query_id, "FJI", "identify", "CANDIDATES", "", "", [i["fji"].candidates[0].template_id]),
        "i_nobody": (i["nobody"].query_id, "FJI", "identify", "NO_CANDIDATES", "", "", []),
        "v_fji_match": (
            v["fji_match"].query_id,
            "NZL",
            "verify",
            "MATCH",
            "",
            subject(3),
            [v["fji_match"].best_template_id],
        ),
    }


def test_operator_sees_every_verify_and_identify_with_kind_verdict_and_template_ids(
    server: ServerProcess, calls: Calls
) -> None:
    want = expected(calls)
    got = entries(server, "UTO", "operator")
    assert [summary(e) for e in got] == list(want.values())
    assert all(e.caller_role == "border" and e.peer and e.at for e in got)
    ids = [e.query_id for e in got]
    assert all(ids) and len(set(ids)) == len(ids)
    assert [summary(e) for e in entries(server, "UTO", "operator", verdicts=["NO_MATCH", "NO_CANDIDATES"])] == [
        want["v_nzl_no_match"],
        want["i_nobody"],
    ]
    assert [summary(e) for e in entries(server, "UTO", "operator", caller_member="NZL")] == [want["v_fji_match"]]


def test_member_sees_the_calls_that_matched_its_templates_and_not_others(server: ServerProcess, calls: Calls) -> None:
    want = expected(calls)
    nzl = [summary(e) for e in entries(server, "NZL", "member")]
    fji = [summary(e) for e in entries(server, "FJI", "member")]
    assert nzl == [want["v_nzl_match"], want["v_nzl_document"], want["i_nzl"]]
    assert fji == [want["i_fji"], want["v_fji_match"]]  # including FJI's own border call and NZL's verify
    assert entries(server, "NZL", "member", caller_member="FJI") == entries(server, "NZL", "member")


def test_member_keeps_seeing_calls_that_matched_a_template_it_removed(server: ServerProcess, calls: Calls) -> None:
    with bio(server, "NZL", "member") as nzl:
        assert nzl.remove(subject_ids=[subject(0)]).removed == 2
    want = expected(calls)
    nzl = [summary(e) for e in entries(server, "NZL", "member")]
    assert nzl == [want["v_nzl_match"], want["v_nzl_document"], want["i_nzl"]]
    assert want["v_nzl_match"] not in [summary(e) for e in entries(server, "FJI", "member")]


def test_document_checks_and_biometric_calls_share_the_log_and_the_owner_filter(
    server: ServerProcess, calls: Calls
) -> None:
    with server.client("NZL", "member") as nzl:
        nzl.upload(
            [
                {
                    "issuing_state": "NZL",
                    "document_number": "LA000001",
                    "document_class": 1,
                    "status": 2,
                    "event_date": "2025-01-15",
                }
            ],
            upload_id="n",
        )
    with server.client("FJI", "border") as border:
        border.check(state="NZL", number="LA000001")
    kinds = [(e.query_kind, e.verdict) for e in entries(server, "NZL", "member")]
    assert kinds == [("verify", "MATCH"), ("verify", "MATCH"), ("identify", "CANDIDATES"), ("typed", "HIT")]
    # record ids and template ids are separate number spaces: FJI's templates do not reveal NZL's record hits
    assert ("typed", "HIT") not in [(e.query_kind, e.verdict) for e in entries(server, "FJI", "member")]


def test_audit_command_lists_biometric_calls(
    server: ServerProcess, calls: Calls, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["audit", "--target", server.address, "--member", "FJI", "--role", "member", "--since", "2000-01-01", "--json"]
    )
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["query_kind"], x["verdict"], x["subject_id"], x["query_id"]) for x in lines] == [
        ("identify", "CANDIDATES", "", calls.identify["fji"].query_id),
        ("verify", "MATCH", subject(3), calls.verify["fji_match"].query_id),
    ]
    code = main(
        [
            "audit",
            "--target",
            server.address,
            "--member",
            "UTO",
            "--role",
            "operator",
            "--since",
            "2000-01-01",
            "--verdict",
            "NO_CANDIDATES",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "identify" in out and calls.identify["nobody"].query_id in out
