"""Hostile input against a live server: random and malformed values, huge strings, bad enums, odd streams.

The only outcomes allowed are a correct answer or a precise status code (never UNKNOWN, never a crash), the
server stays healthy, and a refused write changes nothing.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow as pa
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idcheck.client.files import ipc_bytes
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc
from tests.conftest import ServerProcess, start_server

MEMBER_MD = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member"))
SPECIMEN_MRZ = "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<\nL898902C36UTO7408122F1204159ZE184226B<<<<<10"
UPLOAD_IDS = itertools.count()
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that stresses normalisation: control characters, fillers, look-alike letters, non-ASCII, long runs.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="AB01<- ./\t\n\x00\x7f\x9bßİÄ0OoIl", max_size=40),
    st.sampled_from(["", " ", "<<<", "NZL", "nzl", "D<<", "ZZZ", "L898902C3", "x" * 5000, "\u202eNZL"]),
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, grpc.Channel]]:
    server = start_server(tmp_path_factory.mktemp("hostile") / "data")
    channel = grpc.insecure_channel(server.address)
    with server.client("NZL", "member") as c:
        c.upload(
            [
                {
                    "issuing_state": "NZL",
                    "document_number": "LA123456",
                    "document_class": 1,
                    "status": 2,
                    "event_date": "2025-01-01",
                }
            ],
            upload_id="seed",
        )
    yield server, channel
    channel.close()
    server.stop()


def assert_healthy(channel: grpc.Channel) -> None:
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def store_state(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path / "register.db") as db:
        return (
            db.execute("SELECT COALESCE(MAX(seq), 0) FROM change_log").fetchone()[0],
            db.execute("SELECT COUNT(*) FROM uploads").fetchone()[0],
        )


@HYPOTHESIS
@given(state=nasty_text, number=nasty_text, cls=st.integers(-5, 2**31 - 1), birth=nasty_text)
def test_random_typed_checks_get_an_answer_or_invalid_argument(
    live: tuple[ServerProcess, grpc.Channel], state: str, number: str, cls: int, birth: str
) -> None:
    _, channel = live
    stub = register_pb2_grpc.DocumentRegisterStub(channel)
    query = pb.DocumentQuery(
        typed=pb.TypedQuery(issuing_state=state, document_number=number, document_class=cls, birth_date=birth)
    )
    try:
        resp = stub.CheckDocument(pb.CheckDocumentRequest(query=query), metadata=MEMBER_MD, timeout=10)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
        assert err.details()
    else:
        assert resp.result.verdict in (pb.VERDICT_CLEAR, pb.VERDICT_HIT, pb.VERDICT_POSSIBLE_MATCH)


# Columnar manifests: random values in every column, odd column types, and payloads cut short.
_manifest_columns = st.fixed_dictionaries(
    {},
    optional={
        "issuing_state": st.lists(nasty_text, min_size=1, max_size=5),
        "document_number": st.lists(nasty_text, min_size=1, max_size=5),
        "birth_date": st.lists(nasty_text, min_size=1, max_size=5),
        "mrz": st.lists(st.one_of(nasty_text, st.just(SPECIMEN_MRZ)), min_size=1, max_size=5),
        "client_reference": st.lists(nasty_text, min_size=1, max_size=5),
        "document_class": st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=5),
        "seat": st.lists(nasty_text, min_size=1, max_size=5),
    },
)


@HYPOTHESIS
@given(columns=_manifest_columns, as_binary=st.booleans(), cut=st.integers(0, 64))
def test_random_columnar_manifests_get_answers_or_invalid_argument(
    live: tuple[ServerProcess, grpc.Channel], columns: dict[str, list[object]], as_binary: bool, cut: int
) -> None:
    server, channel = live
    stub = register_pb2_grpc.DocumentRegisterStub(channel)
    rows = min((len(v) for v in columns.values()), default=0)
    arrays = {}
    for name, values in columns.items():
        if name == "document_class":
            arrays[name] = pa.array(values[:rows], pa.int64())
        elif as_binary and name == "document_number":
            arrays[name] = pa.array([str(v).encode("utf-8", "surrogatepass") for v in values[:rows]], pa.binary())
        else:
            arrays[name] = pa.array(values[:rows], pa.string())
    payload = ipc_bytes(pa.table(arrays)) if arrays else b""
    if cut:
        payload = payload[: max(0, len(payload) - cut)]
    before = store_state(server.data_dir)
    try:
        resp = stub.CheckManifest(pb.CheckManifestRequest(queries_arrow_ipc=payload), metadata=MEMBER_MD, timeout=10)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
        assert err.details()
    else:
        assert len(resp.verdicts) == rows and set(resp.verdicts) <= {1, 2, 3}
        assert resp.hits + resp.possible_matches + resp.clear == rows
    assert store_state(server.data_dir) == before
    assert_healthy(channel)


@HYPOTHESIS
@given(
    mrz=st.one_of(
        st.text(max_size=120),
        st.text(alphabet="P<UTO0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\n", max_size=120),
        st.just("x" * 100_000),
    )
)
def test_random_mrz_checks_get_an_answer_or_invalid_argument(
    live: tuple[ServerProcess, grpc.Channel], mrz: str
) -> None:
    _, channel = live
    stub = register_pb2_grpc.DocumentRegisterStub(channel)
    try:
        stub.CheckDocument(pb.CheckDocumentRequest(query=pb.DocumentQuery(mrz=mrz)), metadata=MEMBER_MD, timeout=10)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())


@HYPOTHESIS
@given(
    rows=st.lists(
        st.tuples(nasty_text, nasty_text, st.integers(-3, 9), st.integers(-3, 9), nasty_text, nasty_text),
        min_size=1,
        max_size=20,
    ),
    end=st.sampled_from(["right", "wrong", "missing"]),
)
def test_random_uploads_commit_with_rejections_or_change_nothing(
    live: tuple[ServerProcess, grpc.Channel], rows: list[tuple[str, str, int, int, str, str]], end: str
) -> None:
    server, channel = live
    stub = register_pb2_grpc.DocumentRegisterStub(channel)
    before = store_state(server.data_dir)
    records = [
        pb.Record(
            key=pb.DocumentKey(issuing_state=s, document_number=n, document_class=c),
            status=st_,
            event_date=d,
            holder=pb.HolderData(surname=name),
        )
        for s, n, c, st_, d, name in rows
    ]
    messages = [
        pb.UploadRecordsRequest(
            header=pb.UploadHeader(upload_id=f"hostile-{next(UPLOAD_IDS)}", mode=pb.UPLOAD_MODE_INCREMENTAL)
        ),
        pb.UploadRecordsRequest(batch=pb.RecordBatch(records=records)),
    ]
    if end != "missing":
        total = len(records) + (1 if end == "wrong" else 0)
        messages.append(pb.UploadRecordsRequest(end=pb.UploadEnd(total_rows=total)))
    try:
        resp = stub.UploadRecords(iter(messages), metadata=MEMBER_MD, timeout=10)
    except grpc.RpcError as err:
        assert end != "right", (err.code(), err.details())
        expected = grpc.StatusCode.ABORTED if end == "missing" else grpc.StatusCode.INVALID_ARGUMENT
        assert err.code() == expected
        assert store_state(server.data_dir) == before  # nothing applied, not even the upload id
    else:
        assert end == "right"
        assert resp.received == len(records) and resp.accepted + resp.rejected == len(records)
    assert_healthy(channel)


def test_empty_and_header_only_streams_are_refused_cleanly(live: tuple[ServerProcess, grpc.Channel]) -> None:
    server, channel = live
    stub = register_pb2_grpc.DocumentRegisterStub(channel)
    before = store_state(server.data_dir)
    with pytest.raises(grpc.RpcError) as empty:
        stub.UploadRecords(iter([]), metadata=MEMBER_MD, timeout=10)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    header = pb.UploadRecordsRequest(header=pb.UploadHeader(upload_id="only-header", mode=pb.UPLOAD_MODE_INCREMENTAL))
    with pytest.raises(grpc.RpcError) as only:
        stub.UploadRecords(iter([header]), metadata=MEMBER_MD, timeout=10)
    assert only.value.code() == grpc.StatusCode.ABORTED
    two_headers = [header, header]
    with pytest.raises(grpc.RpcError) as twice:
        stub.UploadRecords(iter(two_headers), metadata=MEMBER_MD, timeout=10)
    assert twice.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert store_state(server.data_dir) == before
    assert_healthy(channel)


def test_undecodable_request_bytes_are_refused_and_server_stays_up(live: tuple[ServerProcess, grpc.Channel]) -> None:
    _, channel = live
    raw = channel.unary_unary(
        "/idcheck.v1.DocumentRegister/CheckDocument", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05\x12\x03\xff\xfe\xfd", b"\x0a" + b"\x80" * 12):
        with pytest.raises(grpc.RpcError) as err:
            raw(garbage, metadata=MEMBER_MD, timeout=5)
        # The guard decodes requests itself (grpc-python alone would answer INTERNAL), naming `request`
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_healthy(channel)
