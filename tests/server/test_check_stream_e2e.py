"""End to end: single checks over one stream (CheckDocumentStream, `RegisterClient.check_stream`) on a real server.

Each check of a stream must be exactly the check CheckDocument makes: the same answer, its own audit row and query
id, the member's rate limit, the same precise error for bad input. A refused check changes nothing and the stream
goes on; the number of open streams is capped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import grpc
import pytest

from idcheck.client.audit import AuditClient
from idcheck.client.errors import IdcheckError, InvalidArgument, PermissionDenied, ResourceExhausted, from_status
from idcheck.client.operations import OperationsClient
from idcheck.client.register import CheckAnswer
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc
from tests.conftest import ServerProcess, store_digest, wait_until

SPECIMEN = "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<\nL898902C36UTO7408122F1204159ZE184226B<<<<<10"
RECORDS = [
    {"issuing_state": "NZL", "document_number": "LA000001", "document_class": 1, "status": 2,
     "event_date": "2025-01-01", "instructions": "seize document"},
    {"issuing_state": "UTO", "document_number": "L898902C3", "document_class": 1, "status": 1,
     "event_date": "2024-06-01"},
]  # fmt: skip
QUERIES: list[dict[str, str]] = [
    {"state": "NZL", "number": "LA000001", "reference": "gate 3"},  # HIT
    {"state": "NZL", "number": "LA00000I"},  # POSSIBLE_MATCH (OCR confusion)
    {"state": "NZL", "number": "ZZ999999"},  # CLEAR
    {"mrz": SPECIMEN},  # HIT, read from the MRZ
    {"state": "", "number": "LA000001"},  # POSSIBLE_MATCH (no issuing state)
]


def seeded(server_factory: Callable[..., ServerProcess], *args: str) -> ServerProcess:
    server = server_factory(*args)
    with server.client("NZL", "member") as nzl:
        nzl.upload([r for r in RECORDS if r["issuing_state"] == "NZL"])
    with server.client("UTO", "member") as uto:
        uto.upload([r for r in RECORDS if r["issuing_state"] == "UTO"])
    return server


def comparable(answer: CheckAnswer) -> CheckAnswer:
    return dataclasses.replace(answer, query_id="")  # unique to each check


def test_stream_answers_each_check_as_check_document_does_and_audits_it(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = seeded(server_factory, "--rate-limit-per-second", "0")
    with server.client("FJI", "border") as fji:
        unary = [fji.check(**q) for q in QUERIES]  # type: ignore[arg-type]
        with fji.check_stream() as stream:
            streamed = [stream.check(**q) for q in QUERIES]  # type: ignore[arg-type]
            streamed_again = [stream.check(**q) for q in QUERIES]  # type: ignore[arg-type]
    assert [a.verdict for a in streamed] == ["HIT", "POSSIBLE_MATCH", "CLEAR", "HIT", "POSSIBLE_MATCH"]
    assert [comparable(a) for a in streamed] == [comparable(a) for a in unary]
    assert [comparable(a) for a in streamed_again] == [comparable(a) for a in unary]
    assert streamed[0].reference == "gate 3" and streamed[0].matches[0].instructions == "seize document"
    assert streamed[3].mrz_valid is True
    ids = [a.query_id for a in unary + streamed + streamed_again]
    assert all(ids) and len(set(ids)) == len(ids)
    # Every streamed check is in the audit log under its own query id, as a CheckDocument call is.
    with AuditClient(server.address, member="UTO", role="operator") as auditor:
        entries = {e.query_id: e for e in auditor.entries("2000-01-01")}
    for answer in streamed + streamed_again:
        entry = entries[answer.query_id]
        assert (entry.caller_member, entry.verdict) == ("FJI", answer.verdict)


def test_bad_input_is_refused_for_that_check_only_and_changes_nothing(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = seeded(server_factory, "--rate-limit-per-second", "0")
    before = store_digest(server.data_dir)
    with server.client("FJI", "border") as fji, fji.check_stream() as stream:
        assert stream.check(state="NZL", number="LA000001").verdict == "HIT"
        with pytest.raises(InvalidArgument) as bad_mrz:
            stream.check(mrz="P<UTOERIKSSON<<ANNA\nshort")
        assert [f for f, _ in bad_mrz.value.violations] == ["query.mrz"]
        with pytest.raises(InvalidArgument) as unknown_state:
            stream.check(state="QQQ", number="LA000001")
        assert unknown_state.value.violations and "QQQ" in str(unknown_state.value)
        assert not stream.broken
        assert stream.check(state="NZL", number="ZZ1").verdict == "CLEAR"  # the stream went on
    assert store_digest(server.data_dir) == before  # the audit log is not part of the digest


def test_undecodable_message_is_refused_and_the_stream_goes_on(server: ServerProcess) -> None:
    good = pb.CheckDocumentRequest(
        query=pb.DocumentQuery(typed=pb.TypedQuery(issuing_state="NZL", document_number="X1"))
    )
    raw = [good.SerializeToString(), b"\xff\xff\xff\xff", b"", good.SerializeToString()]
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(
            "/idcheck.v1.DocumentRegister/CheckDocumentStream",
            request_serializer=lambda b: b,
            response_deserializer=pb.CheckStreamResponse.FromString,
        )
        answers = list(
            call(iter(raw), metadata=(("x-idcheck-member", "NZL"), ("x-idcheck-role", "border")), timeout=10)
        )
    assert [a.WhichOneof("outcome") for a in answers] == ["response", "error", "error", "response"]
    garbage = from_status(answers[1].error)
    assert garbage.code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in garbage.violations] == ["request"]
    empty = from_status(answers[2].error)  # a valid message with no query
    assert empty.code == grpc.StatusCode.INVALID_ARGUMENT and [f for f, _ in empty.violations] == ["query"]
    assert answers[3].response.result.verdict == pb.Verdict.Value("VERDICT_CLEAR")


def test_each_check_takes_a_rate_limit_token(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--rate-limit-per-second", "2", "--rate-limit-burst", "4")
    with server.client("NZL", "border") as nzl, nzl.check_stream() as stream:
        refused: ResourceExhausted | None = None
        served = 0
        for _ in range(20):  # opening took one token; then 3 left, refilling at 2/s
            try:
                stream.check(state="NZL", number="X1")
                served += 1
            except ResourceExhausted as exc:
                refused = exc
                break
        assert refused is not None and refused.reason == "RATE_LIMITED", "checks beyond the limit were served"
        assert 3 <= served <= 5
        assert refused.retry_after is not None and 0 < refused.retry_after <= 0.5
        time.sleep(refused.retry_after)
        assert stream.check(state="NZL", number="X1").verdict == "CLEAR"  # same stream, served again


def test_roles_without_checks_cannot_open_a_stream(server: ServerProcess) -> None:
    with server.client("NZL", "operator") as operator, operator.check_stream() as stream:
        with pytest.raises(PermissionDenied):
            stream.check(state="NZL", number="X1")
        with pytest.raises(PermissionDenied):  # the stream ended with the refusal; it stays refused
            stream.check(state="NZL", number="X1")


def test_open_check_streams_are_capped(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--max-check-streams", "1", "--rate-limit-per-second", "0")
    with server.client("NZL", "border") as nzl:
        first = nzl.check_stream()
        assert first.check(state="NZL", number="X1").verdict == "CLEAR"  # open and counted
        with nzl.check_stream() as second, pytest.raises(ResourceExhausted) as refused:
            second.check(state="NZL", number="X1")
        assert refused.value.reason == "OVERLOADED" and refused.value.retry_after
        assert second.broken and not first.broken
        assert nzl.check(state="NZL", number="X1").verdict == "CLEAR"  # unary checks are not affected
        with OperationsClient(server.address, member="UTO", role="operator") as ops:
            stats = ops.statistics()
            assert (stats.check_streams_open, stats.check_streams_max) == (1, 1)
            first.close()
            assert wait_until(lambda: ops.statistics().check_streams_open == 0)
        with nzl.check_stream() as third:  # the first one's place is free again
            assert third.check(state="NZL", number="X1").verdict == "CLEAR"


def test_stub_without_the_client_wrapper(server: ServerProcess) -> None:
    """The generated stub, as another language's client would use it: answers arrive as the requests are sent."""
    requests = [
        pb.CheckDocumentRequest(query=pb.DocumentQuery(typed=pb.TypedQuery(issuing_state="NZL", document_number=n)))
        for n in ("A1", "B2", "C3")
    ]
    with grpc.insecure_channel(server.address) as channel:
        stub = register_pb2_grpc.DocumentRegisterStub(channel)
        answers = list(
            stub.CheckDocumentStream(
                iter(requests), metadata=(("x-idcheck-member", "NZL"), ("x-idcheck-role", "border"))
            )
        )
    assert [a.response.result.searched_key.document_number for a in answers] == ["A1", "B2", "C3"]
    assert all(a.response.register_sequence == 0 for a in answers)


def test_stopping_server_ends_an_idle_stream_at_once(server_factory: Callable[..., ServerProcess]) -> None:
    """A gate waiting for its next traveller must not hold the shutdown for the whole grace period."""
    server = server_factory("--grace-seconds", "30")
    with server.client("NZL", "border") as nzl, nzl.check_stream() as stream:
        assert stream.check(state="NZL", number="X1").verdict == "CLEAR"
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 15, "the idle stream held the shutdown"
        with pytest.raises(IdcheckError) as ended:
            stream.check(state="NZL", number="X1")
        assert ended.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
