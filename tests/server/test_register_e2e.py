"""End to end: a real `idcheck serve` process, a real SQLite file, the real client."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from idcheck.client.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from idcheck.client.files import ipc_bytes
from idcheck.client.register import RegisterClient
from idcheck.icao import MRZFormat, compose_mrz
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc
from tests.conftest import ServerProcess

PASSPORT, ID_CARD = 1, 2
STOLEN, LOST, REVOKED = 2, 1, 4


def rec(state: str, number: str, status: int = STOLEN, cls: int = PASSPORT, **extra: str) -> dict[str, object]:
    return {
        "issuing_state": state,
        "document_number": number,
        "document_class": cls,
        "status": status,
        "event_date": "2025-01-15",
        **extra,
    }


def healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return resp.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def nzl(server: ServerProcess) -> Iterator[RegisterClient]:
    with server.client("NZL", "member") as c:
        c.upload(
            [
                rec(
                    "NZL",
                    "LA123456",
                    instructions="Seize document, contact NCB Wellington",
                    surname="SMITH",
                    birth_date="1980-02-03",
                ),
                rec("NZL", "LB654321", LOST),
                rec("NZL", "RA0OO1", REVOKED),
            ],
            upload_id="first",
        )
        yield c


def test_uploaded_record_is_hit(server: ServerProcess, nzl: RegisterClient) -> None:
    with server.client("FJI", "border") as border:
        answer = border.check(state="nzl", number="LA 123-456")
    assert answer.verdict == "HIT"
    [match] = answer.matches
    assert (match.kind, match.status, match.owner_member) == ("EXACT", "STOLEN", "NZL")
    assert match.instructions == "Seize document, contact NCB Wellington"
    assert match.event_date == "2025-01-15"
    assert "contact NCB Wellington" in answer.officer_action
    assert answer.query_id and answer.register_sequence == 3


def test_a_match_carries_the_holder_data_recorded_and_none_when_none_was(
    server: ServerProcess, nzl: RegisterClient
) -> None:
    stub = register_pb2_grpc.DocumentRegisterStub(nzl._channel)
    md = (("x-idcheck-member", "FJI"), ("x-idcheck-role", "border"))
    table = pa.table({"issuing_state": ["NZL", "NZL"], "document_number": ["LA123456", "LB654321"]})
    manifest = stub.CheckManifest(pb.CheckManifestRequest(queries_arrow_ipc=ipc_bytes(table)), metadata=md, timeout=10)
    single = [
        stub.CheckDocument(
            pb.CheckDocumentRequest(
                query=pb.DocumentQuery(typed=pb.TypedQuery(issuing_state="NZL", document_number=n))
            ),
            metadata=md,
            timeout=10,
        ).result
        for n in ("LA123456", "LB654321")
    ]
    for with_holder, without in (single, [d.result for d in manifest.details]):
        [recorded] = with_holder.matches
        assert recorded.HasField("holder")
        assert (recorded.holder.surname, recorded.holder.birth_date) == ("SMITH", "1980-02-03")
        [bare] = without.matches
        assert bare.record_id and not bare.HasField("holder")  # nothing recorded: no empty holder message


def test_unlisted_document_is_clear(server: ServerProcess, nzl: RegisterClient) -> None:
    answer = nzl.check(state="NZL", number="LA999999")
    assert answer.verdict == "CLEAR" and not answer.matches


def test_ocr_variant_is_possible_match_never_hit(server: ServerProcess, nzl: RegisterClient) -> None:
    answer = nzl.check(state="NZL", number="LA12345G")  # G read for 6
    assert answer.verdict == "POSSIBLE_MATCH"
    assert [m.kind for m in answer.matches] == ["OCR_VARIANT"]
    assert answer.matches[0].document_number == "LA123456"
    # 0/O confusions in the stored number work the other way round too.
    assert nzl.check(state="NZL", number="RA0001").verdict == "POSSIBLE_MATCH"


def test_same_number_other_or_missing_state_is_possible_match(server: ServerProcess, nzl: RegisterClient) -> None:
    other = nzl.check(state="AUS", number="LA123456")
    assert other.verdict == "POSSIBLE_MATCH" and other.matches[0].kind == "STATE_MISMATCH"
    missing = nzl.check(number="LA123456")
    assert missing.verdict == "POSSIBLE_MATCH" and missing.matches[0].kind == "STATE_MISSING"


def test_other_document_class_is_possible_match(server: ServerProcess, nzl: RegisterClient) -> None:
    answer = nzl.check(state="NZL", number="LA123456", document_class=ID_CARD)
    assert answer.verdict == "POSSIBLE_MATCH" and answer.matches[0].kind == "CLASS_MISMATCH"


def test_cancelled_record_never_hits_and_stays_in_history(server: ServerProcess, nzl: RegisterClient) -> None:
    result = nzl.cancel([("NZL", "LA123456")], reason="document recovered")
    assert (result.cancelled, result.already_cancelled) == (1, 0)
    assert nzl.check(state="NZL", number="LA123456").verdict == "CLEAR"
    assert nzl.check(state="NZL", number="LA12345G").verdict == "CLEAR"  # no near match either
    view = nzl.get("NZL", "LA123456")
    assert view.record.status == pb.RECORD_STATUS_CANCELLED
    assert [(c.operation, c.reason) for c in view.history] == [
        ("CREATED", ""),
        ("CANCELLED", "document recovered"),
    ]
    again = nzl.cancel([("NZL", "LA123456")])
    assert (again.cancelled, again.already_cancelled) == (0, 1)


def test_another_members_cancel_is_permission_denied_and_changes_nothing(
    server: ServerProcess, nzl: RegisterClient
) -> None:
    with server.client("FJI", "member") as fji:
        fji.upload([rec("FJI", "F1234567")], upload_id="fji-1")
        with pytest.raises(PermissionDenied) as err:
            fji.cancel([("FJI", "F1234567"), ("NZL", "LA123456")], reason="not mine")
        assert "keys[1]" in err.value.message and "NZL" not in err.value.message
        with pytest.raises(PermissionDenied):
            fji.get("NZL", "LA123456")
        # all or nothing: FJI's own record in the same call was not cancelled either
        assert fji.check(state="FJI", number="F1234567").verdict == "HIT"
        # an upload touching NZL's record is rejected row by row, NZL's record untouched
        result = fji.upload([rec("NZL", "LA123456", LOST)], upload_id="fji-2")
        assert result.rejected == 1 and "another member" in result.rejected_rows[0].reason
    assert nzl.check(state="NZL", number="LA123456").matches[0].status == "STOLEN"


def test_cancel_unknown_key_is_not_found(server: ServerProcess, nzl: RegisterClient) -> None:
    with pytest.raises(NotFound):
        nzl.cancel([("NZL", "LA123456"), ("NZL", "ZZ000000")])
    assert nzl.check(state="NZL", number="LA123456").verdict == "HIT"


def test_mrz_query_reports_check_digits_and_still_looks_up(server: ServerProcess) -> None:
    lines = compose_mrz(
        MRZFormat.TD3,
        document_type="P",
        issuing_state="NZL",
        document_number="LA123456",
        nationality="NZL",
        birth_date="800203",
        sex="M",
        expiry_date="300101",
        surname="SMITH",
        given_names="JOHN",
    )
    with server.client("NZL", "member") as c:
        c.upload([rec("NZL", "LA123456")], upload_id="u")
        good = c.check(mrz="\n".join(lines))
        assert good.verdict == "HIT" and good.mrz_valid is True
        assert set(good.mrz_checks) == {
            "document_number",
            "birth_date",
            "expiry_date",
            "optional_data",
            "composite",
        }
        # corrupt the birth date check digit: reported, lookup still runs
        bad_line2 = lines[1][:19] + str((int(lines[1][19]) + 1) % 10) + lines[1][20:]
        bad = c.check(mrz=lines[0] + "\n" + bad_line2)
        assert bad.verdict == "HIT" and bad.mrz_valid is False
        assert bad.mrz_checks["birth_date"] is False and bad.mrz_checks["document_number"] is True
        assert "check digit failed" in bad.officer_action


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"mrz": "P<UTOERIKSSON<<ANNA\nshort"}, "query.mrz"),
        ({"state": "ZZZ", "number": "A1234567"}, "query.typed.issuing_state"),
        ({"state": "NZL", "number": ""}, "query.typed.document_number"),
        ({"state": "NZL", "number": "<<--"}, "query.typed.document_number"),
        ({"state": "NZL", "number": "AB#123"}, "query.typed.document_number"),
        ({"state": "NZL", "number": "A1", "birth_date": "1980-13-01"}, "query.typed.birth_date"),
    ],
)
def test_bad_query_is_invalid_argument_with_field(server: ServerProcess, query: dict[str, str], field: str) -> None:
    with server.client("NZL", "border") as c, pytest.raises(InvalidArgument) as err:
        c.check(**query)
    assert [f for f, _ in err.value.violations] == [field]
    assert healthy(server.address)


def test_manifest_over_limit_and_bad_rows_are_invalid_argument(server: ServerProcess, nzl: RegisterClient) -> None:
    stub = register_pb2_grpc.DocumentRegisterStub(nzl._channel)
    md = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "border"))
    too_many = pb.CheckDocumentsRequest(
        queries=[pb.DocumentQuery(typed=pb.TypedQuery(issuing_state="NZL", document_number="A1"))] * 10_001
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.CheckDocuments(too_many, metadata=md, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "10000" in err.value.details()
    with pytest.raises(InvalidArgument) as bad:
        list(nzl.check_many([{"state": "NZL", "number": "A1"}, {"state": "QQQ", "number": "A2"}, {"mrz": "garbage"}]))
    assert [f for f, _ in bad.value.violations] == ["queries[1].typed.issuing_state", "queries[2].mrz"]


def test_manifest_answers_in_order(server: ServerProcess, nzl: RegisterClient) -> None:
    queries = [
        {"state": "NZL", "number": n, "reference": f"pax-{i}"}
        for i, n in enumerate(["X1", "LA123456", "LB654321", "LA12345G", "X2"])
    ]
    answers = list(nzl.check_many(queries, batch_size=2))
    assert [a.reference for a in answers] == [f"pax-{i}" for i in range(5)]
    assert [a.verdict for a in answers] == ["CLEAR", "HIT", "HIT", "POSSIBLE_MATCH", "CLEAR"]
    assert len({a.query_id for a in answers}) == 5


def test_oversize_message_is_resource_exhausted_and_server_stays_up(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--max-message-bytes", "100000")
    with server.client("NZL", "border") as c, pytest.raises(ResourceExhausted):
        list(
            c.check_many(
                [{"state": "NZL", "number": f"A{i:07d}", "reference": "x" * 40} for i in range(5000)],
                batch_size=5000,
            )
        )
    assert healthy(server.address)


def test_rejected_rows_are_listed_and_valid_rows_committed(server: ServerProcess) -> None:
    with server.client("WSM", "member") as c:
        result = c.upload(
            [
                rec("WSM", "1234567890"),
                rec("XYZ", "1"),
                rec("WSM", "", LOST),
                rec("WSM", "2", 0),
                rec("WSM", "3", event_date="2999-01-01"),
                rec("WSM", "1234567890", LOST),
                rec("WSM", "4", cls=0),
                rec("WSM", "5"),
            ],
            upload_id="mixed",
        )
        assert (result.received, result.accepted, result.rejected, result.created) == (8, 2, 6, 2)
        assert [(r.row_index, r.field) for r in result.rejected_rows] == [
            (1, "key.issuing_state"),
            (2, "key.document_number"),
            (3, "status"),
            (4, "event_date"),
            (5, "key"),
            (6, "key.document_class"),
        ]
        assert "duplicate of row 0" in result.rejected_rows[4].reason
        assert c.check(state="WSM", number="1234567890").verdict == "HIT"


def test_reupload_of_same_id_changes_nothing_and_returns_first_result(server: ServerProcess) -> None:
    with server.client("TON", "member") as c:
        first = c.upload([rec("TON", "T100001"), rec("TON", "T100002")], upload_id="daily-2025-01-15")
        again = c.upload([rec("TON", "T999999")], upload_id="daily-2025-01-15")
        assert not first.replayed and again.replayed
        assert (again.created, again.register_sequence) == (first.created, first.register_sequence)
        assert c.check(state="TON", number="T999999").verdict == "CLEAR"
        # the same id is per member: another member may use it
        with server.client("AUS", "member") as aus:
            assert not aus.upload([rec("AUS", "A1")], upload_id="daily-2025-01-15").replayed


def test_upload_unchanged_rows_consume_no_sequence(server: ServerProcess) -> None:
    with server.client("TON", "member") as c:
        first = c.upload([rec("TON", "T1"), rec("TON", "T2")], upload_id="a")
        second = c.upload([rec("TON", "T1"), rec("TON", "T2", LOST)], upload_id="b")
        assert (second.unchanged, second.updated, second.created) == (1, 1, 0)
        assert second.register_sequence == first.register_sequence + 1


def test_replace_all_cancels_records_left_out(server: ServerProcess) -> None:
    with server.client("FJI", "member") as c:
        c.upload([rec("FJI", "F1"), rec("FJI", "F2"), rec("FJI", "F3")], upload_id="full-1")
        result = c.upload(
            [rec("FJI", "F2"), rec("FJI", "F4"), rec("FJI", "F3", event_date="bad")],
            upload_id="full-2",
            mode="replace-all",
        )
        # F1 left out: cancelled; F3's row was rejected, so F3 is kept rather than cancelled
        assert (result.created, result.unchanged, result.cancelled, result.rejected) == (1, 1, 1, 1)
        verdicts = {n: c.check(state="FJI", number=n).verdict for n in ("F1", "F2", "F3", "F4")}
        assert verdicts == {"F1": "CLEAR", "F2": "HIT", "F3": "HIT", "F4": "HIT"}
        assert c.get("FJI", "F1").history[-1].reason == "not in REPLACE_ALL upload"


def _blocking_stream(started: threading.Event, release: threading.Event) -> Iterator[pb.UploadRecordsRequest]:
    yield pb.UploadRecordsRequest(header=pb.UploadHeader(upload_id="aborted", mode=pb.UPLOAD_MODE_INCREMENTAL))
    for i in range(3):
        yield pb.UploadRecordsRequest(
            batch=pb.RecordBatch(
                records=[
                    pb.Record(
                        key=pb.DocumentKey(issuing_state="NZL", document_number=f"AB{i}{j:05d}", document_class=1),
                        status=STOLEN,
                        event_date="2025-01-01",
                    )
                    for j in range(1000)
                ]
            )
        )
    started.set()
    release.wait(30)


def test_upload_is_all_or_nothing_when_client_aborts(server: ServerProcess) -> None:
    stub = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(server.address))
    md = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member"))
    started, release = threading.Event(), threading.Event()
    future = stub.UploadRecords.future(_blocking_stream(started, release), metadata=md, timeout=60)
    assert started.wait(20)
    time.sleep(0.5)  # let the server take the batches in
    future.cancel()
    release.set()
    with server.client("NZL", "member") as c:
        assert c.check(state="NZL", number="AB000000").verdict == "CLEAR"
        # the upload id was not used: a clean re-send applies
        assert not c.upload([rec("NZL", "AB000000")], upload_id="aborted").replayed
        assert c.check(state="NZL", number="AB000001").verdict == "CLEAR"
    assert healthy(server.address)


def test_upload_is_all_or_nothing_when_deadline_passes(server: ServerProcess) -> None:
    stub = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(server.address))
    md = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member"))
    started, release = threading.Event(), threading.Event()
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadRecords(_blocking_stream(started, release), metadata=md, timeout=1.5)
    release.set()
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with server.client("NZL", "border") as c:
        assert c.check(state="NZL", number="AB000000").verdict == "CLEAR"
        assert c.check(state="NZL", number="AB200999").verdict == "CLEAR"


def test_upload_without_header_is_invalid_argument(server: ServerProcess) -> None:
    stub = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(server.address))
    md = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member"))
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadRecords(iter([pb.UploadRecordsRequest(batch=pb.RecordBatch())]), metadata=md, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err2:
        stub.UploadRecords(
            iter([pb.UploadRecordsRequest(header=pb.UploadHeader(upload_id="x"))]), metadata=md, timeout=5
        )
    assert err2.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header.mode" in err2.value.details()


def _stream(upload_id: str, numbers: list[str], end: int | None) -> Iterator[pb.UploadRecordsRequest]:
    yield pb.UploadRecordsRequest(header=pb.UploadHeader(upload_id=upload_id, mode=pb.UPLOAD_MODE_INCREMENTAL))
    yield pb.UploadRecordsRequest(
        batch=pb.RecordBatch(
            records=[
                pb.Record(
                    key=pb.DocumentKey(issuing_state="NZL", document_number=n, document_class=1),
                    status=STOLEN,
                    event_date="2025-01-01",
                )
                for n in numbers
            ]
        )
    )
    if end is not None:
        yield pb.UploadRecordsRequest(end=pb.UploadEnd(total_rows=end))


def test_upload_without_end_message_is_aborted_and_not_applied(server: ServerProcess) -> None:
    stub = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(server.address))
    md = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member"))
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadRecords(_stream("no-end", ["E1", "E2"], None), metadata=md, timeout=10)
    assert err.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.RpcError) as err:
        stub.UploadRecords(_stream("bad-count", ["E1", "E2"], 3), metadata=md, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "end.total_rows" in err.value.details()
    with server.client("NZL", "border") as c:
        assert c.check(state="NZL", number="E1").verdict == "CLEAR"
    resp = stub.UploadRecords(_stream("no-end", ["E1", "E2"], 2), metadata=md, timeout=10)
    assert (resp.created, resp.replayed) == (2, False)


def test_oversize_batch_is_rejected_and_nothing_applied(server: ServerProcess) -> None:
    with server.client("NZL", "member") as c, pytest.raises(InvalidArgument) as err:
        c.upload([[rec("NZL", f"C{i:07d}") for i in range(10_001)]], upload_id="big")
    assert err.value.violations[0][0] == "batch.records"
    with server.client("NZL", "member") as c:
        assert c.check(state="NZL", number="C0000000").verdict == "CLEAR"


def test_identity_and_roles(server: ServerProcess, nzl: RegisterClient) -> None:
    with RegisterClient(server.address) as anonymous, pytest.raises(Unauthenticated):
        anonymous.check(state="NZL", number="LA123456")
    with (
        RegisterClient(server.address, member="QQQ", role="border") as unknown,
        pytest.raises(Unauthenticated),
    ):
        unknown.check(state="NZL", number="LA123456")
    with server.client("NZL", "border") as border, pytest.raises(PermissionDenied):
        border.upload([rec("NZL", "LZ1")], upload_id="by-border")
    with server.client("NZL", "operator") as operator, pytest.raises(PermissionDenied):
        operator.check(state="NZL", number="LA123456")
    assert healthy(server.address)


def test_health_and_reflection_without_identity(server: ServerProcess) -> None:
    assert healthy(server.address)
    with grpc.insecure_channel(server.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = list(
            stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        )
        names = {s.name for s in responses[0].list_services_response.service}
    assert {"idcheck.v1.DocumentRegister", "grpc.health.v1.Health"} <= names


def test_restart_keeps_everything(server_factory: Callable[..., ServerProcess]) -> None:
    first = server_factory()
    with first.client("NZL", "member") as c:
        c.upload([rec("NZL", "K1"), rec("NZL", "K2"), rec("NZL", "K3", LOST)], upload_id="k")
        c.cancel([("NZL", "K2")], reason="recovered")
        before = [
            (a.verdict, a.register_sequence)
            for a in c.check_many([{"state": "NZL", "number": n} for n in ("K1", "K2", "K3")])
        ]
    assert first.stop() == 0
    second = server_factory(data_dir=first.data_dir)
    with second.client("NZL", "member") as c:
        after = [
            (a.verdict, a.register_sequence)
            for a in c.check_many([{"state": "NZL", "number": n} for n in ("K1", "K2", "K3")])
        ]
        assert c.upload([rec("NZL", "K9")], upload_id="k").replayed  # upload ids survive too
    assert after == before == [("HIT", 4), ("CLEAR", 4), ("HIT", 4)]


def test_acknowledged_upload_survives_sigkill(server_factory: Callable[..., ServerProcess]) -> None:
    first = server_factory()
    with first.client("NZL", "member") as c:
        result = c.upload([rec("NZL", f"S{i}") for i in range(2000)], upload_id="s")
    first.stop(signal.SIGKILL)
    second = server_factory(data_dir=first.data_dir)
    with second.client("NZL", "border") as c:
        answers = list(c.check_many([{"state": "NZL", "number": f"S{i}"} for i in range(2000)]))
    assert {a.verdict for a in answers} == {"HIT"}
    assert answers[0].register_sequence == result.register_sequence


def test_audit_log_has_one_row_per_checked_document(server: ServerProcess, nzl: RegisterClient) -> None:
    with server.client("FJI", "border") as border:
        single = border.check(state="NZL", number="LA123456")
        many = list(border.check_many([{"state": "NZL", "number": n} for n in ("A1", "LB654321", "LA12345G")]))
    assert server.stop() == 0  # shutdown flushes the audit writer
    with sqlite3.connect(server.data_dir / "register.db") as db:
        rows = db.execute(
            "SELECT query_id, caller_member, caller_role, issuing_state, document_number, verdict, matched_records "
            "FROM audit_log ORDER BY call_id, position"
        ).fetchall()
    assert [r[0] for r in rows] == [single.query_id] + [a.query_id for a in many]
    assert [r[5] for r in rows] == ["HIT", "CLEAR", "HIT", "POSSIBLE_MATCH"]
    assert {(r[1], r[2]) for r in rows} == {("FJI", "border")}
    assert rows[0][3:5] == ("NZL", "LA123456") and rows[0][6] == str(single.matches[0].record_id)


def test_server_refuses_insecure_non_loopback(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "idcheck.server", "--listen", "0.0.0.0:0", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0:0" in proc.stderr and "loopback" in proc.stderr


def test_demo_register_has_the_specimens(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--demo")
    specimen = [
        "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<",
        "L898902C36UTO7408122F1204159ZE184226B<<<<<10",
    ]
    with server.client("NZL", "border") as c:
        answer = c.check(mrz="\n".join(specimen))
        assert answer.verdict == "HIT" and answer.mrz_valid is True
        assert answer.matches[0].owner_member == "UTO"
        answers = list(c.check_many([{"state": s, "number": "X"} for s in ("NZL", "FJI")]))
        assert all(a.verdict == "CLEAR" for a in answers)
    assert "5003 active records" in server.log


def test_shutdown_rolls_back_upload_in_progress(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--grace-seconds", "1")
    stub = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(server.address))
    md = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member"))
    started, release = threading.Event(), threading.Event()
    future = stub.UploadRecords.future(_blocking_stream(started, release), metadata=md, timeout=60)
    assert started.wait(20)
    time.sleep(0.3)
    t0 = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 10
    release.set()
    with pytest.raises(grpc.RpcError):
        future.result(timeout=10)
    assert "stopped" in server.log
    again = server_factory(data_dir=server.data_dir)
    with again.client("NZL", "member") as c:
        assert c.check(state="NZL", number="AB000000").verdict == "CLEAR"
        assert not c.upload([rec("NZL", "AB000000")], upload_id="aborted").replayed


def test_upload_of_unreadable_file_raises_the_file_error_and_applies_nothing(server: ServerProcess, tmp_path) -> None:
    from idcheck.client.files import FileFormatError

    missing = tmp_path / "no-status.csv"
    missing.write_text("issuing_state,document_number,document_class,event_date\nNZL,A1,passport,2025-01-01\n")
    # a CSV whose second block has a row with too many fields: fails part-way through the stream
    broken = tmp_path / "broken.csv"
    rows = [f"NZL,Q{i:07d},passport,stolen,2025-01-01" for i in range(60_000)]
    broken.write_text(
        "issuing_state,document_number,document_class,status,event_date\n"
        + "\n".join(rows)
        + "\nNZL,Q9,passport,stolen,2025-01-01,extra,fields\n"
    )
    with server.client("NZL", "member") as c:
        with pytest.raises(FileFormatError, match="missing column"):
            c.upload(missing)
        with pytest.raises(FileFormatError):
            c.upload(broken)
        assert c.check(state="NZL", number="Q0000000").verdict == "CLEAR"


def test_error_with_thousands_of_huge_violations_stays_within_trailer_limits(
    server: ServerProcess, nzl: RegisterClient
) -> None:
    # Each violation echoes a 2,000-character state code; the whole status must still reach the client.
    queries = [{"state": "Q" * 2000, "number": f"A{i}"} for i in range(1000)]
    with pytest.raises(InvalidArgument) as err:
        list(nzl.check_many(queries, batch_size=1000))
    assert 1 <= len(err.value.violations) <= 20
    assert err.value.violations[0][0] == "queries[0].typed.issuing_state"
    assert "1000 bad fields" in err.value.message and "(and 997 more)" in err.value.message
    assert healthy(server.address)
