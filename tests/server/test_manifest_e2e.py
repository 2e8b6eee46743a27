"""End to end: CheckManifest (an Arrow table in, a verdict byte per row out) against a real server."""

from __future__ import annotations

import sqlite3

import grpc
import pyarrow as pa
import pytest

from idcheck.client.errors import InvalidArgument, PermissionDenied
from idcheck.client.files import ipc_bytes
from idcheck.client.register import RegisterClient
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc
from tests.conftest import ServerProcess
from tests.server.test_register_e2e import LOST, REVOKED, healthy, rec

SPECIMEN_MRZ = "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<\nL898902C36UTO7408122F1204159ZE184226B<<<<<10"
QUERIES = [
    {"state": "NZL", "number": "X1", "reference": "pax-0"},
    {"state": "nzl", "number": "LA 123-456", "reference": "pax-1", "birth_date": "1990-01-01"},
    {"state": "NZL", "number": "LA12345G", "reference": "pax-2"},  # OCR variant
    {"state": "FJI", "number": "LB654321"},  # same number, another state
    {"state": "", "number": "RA0OO1"},  # no state
    {"mrz": SPECIMEN_MRZ, "reference": "pax-5"},  # an MRZ: its reading comes back even when CLEAR
    {"state": "NZL", "number": "X2", "document_class": 2},
]


@pytest.fixture
def nzl(server: ServerProcess) -> RegisterClient:
    with server.client("NZL", "member") as c:
        c.upload(
            [
                rec("NZL", "LA123456", instructions="Seize", birth_date="1980-02-03"),
                rec("NZL", "LB654321", LOST),
                rec("NZL", "RA0OO1", REVOKED),
            ],
            upload_id="seed",
        )
    return server


def test_manifest_answers_as_check_documents(nzl: ServerProcess) -> None:
    with nzl.client("FJI", "border") as border:
        expected = list(border.check_many(QUERIES))
        answer = border.check_manifest(QUERIES)
    assert len(answer) == len(QUERIES)
    assert [answer.verdict(i) for i in range(len(answer))] == [a.verdict for a in expected]
    assert [answer.verdict(i) for i in range(len(answer))] == [
        "CLEAR",
        "HIT",
        "POSSIBLE_MATCH",
        "POSSIBLE_MATCH",
        "POSSIBLE_MATCH",
        "CLEAR",
        "CLEAR",
    ]
    assert (answer.hits, answer.possible_matches, answer.clear) == (1, 3, 3)
    assert sorted(answer.details) == [1, 2, 3, 4, 5]  # every row but the plain CLEAR ones
    for i, a in answer.details.items():
        want = expected[i]
        assert a.query_id == answer.query_id(i) != want.query_id
        assert (a.verdict, a.officer_action, a.matches, a.reference) == (
            want.verdict,
            want.officer_action,
            want.matches,
            want.reference,
        )
        assert (a.searched_state, a.searched_number, a.mrz_valid, a.mrz_fields) == (
            want.searched_state,
            want.searched_number,
            want.mrz_valid,
            want.mrz_fields,
        )
    assert "impostor" in answer.details[1].officer_action  # the birth date travelled in its column
    assert answer.answer(0).officer_action == expected[0].officer_action
    assert answer.register_sequence == expected[0].register_sequence


def test_every_document_of_a_manifest_is_in_the_audit_log(nzl: ServerProcess) -> None:
    with nzl.client("FJI", "border") as border:
        answer = border.check_manifest(QUERIES)
    assert nzl.stop() == 0
    with sqlite3.connect(nzl.data_dir / "register.db") as db:
        rows = db.execute("SELECT query_id, verdict, issuing_state, document_number FROM audit_log").fetchall()
    got = {q: (v, s, n) for q, v, s, n in rows}
    assert [got[answer.query_id(i)][0] for i in range(len(QUERIES))] == [answer.verdict(i) for i in range(len(QUERIES))]
    assert got[answer.query_id(0)] == ("CLEAR", "NZL", "X1")
    assert got[answer.query_id(1)] == ("HIT", "NZL", "LA123456")


def test_bad_manifests_are_invalid_argument_and_the_server_stays_up(nzl: ServerProcess) -> None:
    with nzl.client("FJI", "border") as border:
        with pytest.raises(InvalidArgument) as bad:
            border.check_manifest([{"state": "NZL", "number": "A1"}, {"state": "QQQ", "number": "A2"}, {"mrz": "x"}])
        assert [f for f, _ in bad.value.violations] == [
            "queries_arrow_ipc[1].issuing_state",
            "queries_arrow_ipc[2].mrz",
        ]
        with pytest.raises(InvalidArgument) as unknown:
            border.check_manifest(pa.table({"document_number": ["A1"], "seat": ["12A"]}))
        assert "unknown column(s) seat" in unknown.value.violations[0][1]
        stub = register_pb2_grpc.DocumentRegisterStub(border._channel)
        md = (("x-idcheck-member", "FJI"), ("x-idcheck-role", "border"))
        with pytest.raises(grpc.RpcError) as garbage:
            stub.CheckManifest(pb.CheckManifestRequest(queries_arrow_ipc=b"\xff" * 64), metadata=md, timeout=10)
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        too_many = ipc_bytes(pa.table({"issuing_state": ["NZL"] * 10_001, "document_number": ["A1"] * 10_001}))
        with pytest.raises(grpc.RpcError) as over:
            stub.CheckManifest(pb.CheckManifestRequest(queries_arrow_ipc=too_many), metadata=md, timeout=10)
        assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "10000" in over.value.details()
    assert healthy(nzl.address)


def test_only_checking_roles_may_check_a_manifest(nzl: ServerProcess) -> None:
    with nzl.client("AUS", "operator") as operator, pytest.raises(PermissionDenied):
        operator.check_manifest([{"state": "NZL", "number": "A1"}])
    with nzl.client("NZL", "member") as member:
        assert member.check_manifest([{"state": "NZL", "number": "LA123456"}]).hits == 1
