"""Raw request bytes, sent with generic multi-callables and identity serialisers, to every RPC of every service.

grpc-python itself answers INTERNAL ("Exception deserializing request!") when it cannot decode a request, before
any handler runs. Our guard (server/errors.py) decodes requests itself so that undecodable bytes — garbage,
truncated fields, overlong varints, invalid UTF-8 in a string field — are the caller's error: INVALID_ARGUMENT
with a BadRequest naming `request`. The empty message (all defaults) is a valid request and must get an answer
or a precise status. The server stays healthy and the store unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from idcheck.client.errors import from_rpc_error, from_status
from idcheck.server.app import SERVICE_NAMES
from idcheck.server.auth import RPC_ROLES
from idcheck.v1 import audit_pb2, biometrics_pb2, register_pb2  # noqa: F401  (register the descriptors)
from idcheck.v1 import register_pb2 as pb
from tests.conftest import ServerProcess, start_server, store_digest


def methods() -> list[MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [m for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods]


def path(m: MethodDescriptor) -> str:
    return f"/{m.containing_service.full_name}/{m.name}"


def metadata(m: MethodDescriptor) -> tuple[tuple[str, str], ...]:
    """A member and a role allowed to call `m`, so that the call gets as far as decoding its request."""
    roles = sorted(r.value for r in RPC_ROLES[path(m)])
    role = "member" if "member" in roles else roles[0]
    return (("x-idcheck-member", "NZL"), ("x-idcheck-role", role))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def invalid_utf8(message: Descriptor, depth: int = 0) -> bytes | None:
    """Wire bytes of `message` whose first string field (nested if need be) holds invalid UTF-8."""
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            value = b"NZ\xff\xfeL\xc0\x80"
            return _varint(field.number << 3 | 2) + _varint(len(value)) + value
    if depth < 3:
        for field in message.fields:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                inner = invalid_utf8(field.message_type, depth + 1)
                if inner is not None:
                    return _varint(field.number << 3 | 2) + _varint(len(inner)) + inner
    return None


GARBAGE = {
    "bad tag": b"\xff\xff\xff\xff",
    "truncated field": b"\x0a\x05\x12\x03",
    "overlong varint": b"\x0a" + b"\x80" * 12,
    "unterminated group": b"\x0b",
    "field number zero": b"\x00",
}


# A valid first message for client streams whose first message must be special.
GOOD_FIRST = {
    "idcheck.v1.UploadRecordsRequest": register_pb2.UploadRecordsRequest(
        header=register_pb2.UploadHeader(upload_id="raw-first", mode=register_pb2.UPLOAD_MODE_INCREMENTAL)
    ).SerializeToString()
}


def payloads(m: MethodDescriptor) -> dict[str, bytes]:
    cases = dict(GARBAGE)
    bad_text = invalid_utf8(m.input_type)
    if bad_text is not None:
        cases["invalid UTF-8"] = bad_text
    return cases


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, grpc.Channel]]:
    server = start_server(tmp_path_factory.mktemp("raw") / "data", "--rate-limit-per-second", "0")
    with server.client("NZL", "member") as c:
        c.upload(
            [{"issuing_state": "NZL", "document_number": "RAW1", "document_class": 1, "status": 2,
              "event_date": "2025-01-01"}]
        )  # fmt: skip
    channel = grpc.insecure_channel(server.address)
    yield server, channel
    channel.close()
    server.stop()


def call(channel: grpc.Channel, m: MethodDescriptor, requests: list[bytes], timeout: float = 10) -> object:
    identity = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    md = metadata(m)
    if m.client_streaming and m.server_streaming:
        return list(channel.stream_stream(path(m), **identity)(iter(requests), metadata=md, timeout=timeout))
    if m.client_streaming:
        return channel.stream_unary(path(m), **identity)(iter(requests), metadata=md, timeout=timeout)
    if m.server_streaming:
        return list(channel.unary_stream(path(m), **identity)(requests[0], metadata=md, timeout=timeout))
    return channel.unary_unary(path(m), **identity)(requests[0], metadata=md, timeout=timeout)


def assert_healthy(channel: grpc.Channel) -> None:
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_every_rpc_is_covered() -> None:
    assert {path(m) for m in methods()} == set(RPC_ROLES)


@pytest.mark.parametrize("method", methods(), ids=path)
def test_undecodable_request_bytes_are_invalid_argument(
    live: tuple[ServerProcess, grpc.Channel], method: MethodDescriptor
) -> None:
    server, channel = live
    before = store_digest(server.data_dir)
    for case, raw in payloads(method).items():
        # For a client stream the bad message also comes after a good first one.
        sequences = (
            [[raw], [GOOD_FIRST.get(method.input_type.full_name, b""), raw]] if method.client_streaming else [[raw]]
        )
        for requests in sequences:
            if method.output_type.full_name == "idcheck.v1.CheckStreamResponse":
                # A check stream answers each request: the bad one is refused, the stream goes on.
                answers = [pb.CheckStreamResponse.FromString(a) for a in call(channel, method, requests)]  # type: ignore[attr-defined]
                assert len(answers) == len(requests)
                exc = from_status(answers[-1].error)
            else:
                with pytest.raises(grpc.RpcError) as err:
                    call(channel, method, requests)
                exc = from_rpc_error(err.value)
            assert exc.code == grpc.StatusCode.INVALID_ARGUMENT, (case, requests, exc.code, exc.message)
            assert [f for f, _ in exc.violations] == ["request"] and "not a valid" in exc.message
    assert store_digest(server.data_dir) == before
    assert_healthy(channel)


@pytest.mark.parametrize("method", methods(), ids=path)
def test_empty_request_gets_an_answer_or_a_precise_status(
    live: tuple[ServerProcess, grpc.Channel], method: MethodDescriptor
) -> None:
    server, channel = live
    before = store_digest(server.data_dir)
    precise = {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ABORTED,  # an upload stream without its end message
        grpc.StatusCode.FAILED_PRECONDITION,
    }
    if method.server_streaming:
        precise.add(grpc.StatusCode.DEADLINE_EXCEEDED)  # a follow stream with nothing to send runs until then
    try:
        call(channel, method, [b""], timeout=2 if method.server_streaming else 10)
    except grpc.RpcError as err:
        assert err.code() in precise, (err.code(), err.details())
        assert err.details()
    assert store_digest(server.data_dir) == before
    assert_healthy(channel)
