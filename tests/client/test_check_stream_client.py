"""The client side of a check stream against a server that stops answering (which our server never does on purpose:
a hung process or a black-holed link is what this stands for). Only the client is under test here."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from idcheck.client.errors import DeadlineExceeded
from idcheck.client.register import RegisterClient
from idcheck.v1 import register_pb2 as pb


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A gRPC server whose CheckDocumentStream answers the first request, then answers nothing and never ends the
    stream, not even when the client has half-closed it."""
    release = threading.Event()

    def stream(
        requests: Iterator[pb.CheckDocumentRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.CheckStreamResponse]:
        for n, request in enumerate(requests):
            if n == 0:
                answer = pb.CheckStreamResponse()
                answer.response.result.searched_key.document_number = request.query.typed.document_number
                yield answer
            else:
                release.wait(30)
        release.wait(30)

    handler = grpc.method_handlers_generic_handler(
        "idcheck.v1.DocumentRegister",
        {
            "CheckDocumentStream": grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=pb.CheckDocumentRequest.FromString,
                response_serializer=pb.CheckStreamResponse.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handler], options=[("grpc.so_reuseport", 0)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    release.set()
    server.stop(0)


def test_a_check_not_answered_in_time_cancels_the_stream(silent_server: str) -> None:
    with RegisterClient(silent_server, member="NZL", role="border", timeout=0.5) as client:
        stream = client.check_stream()
        assert stream.check(state="NZL", number="A1").searched_number == "A1"
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as late:
            stream.check(state="NZL", number="B2")
        assert 0.4 < time.monotonic() - started < 5
        assert "no answer within 0.5s" in late.value.message and stream.broken
        with pytest.raises(DeadlineExceeded):  # the stream stays broken
            stream.check(state="NZL", number="C3")
        started = time.monotonic()
        stream.close()
        assert time.monotonic() - started < 5
        with pytest.raises(ValueError, match="closed"):
            stream.check(state="NZL", number="D4")


def test_closing_a_stream_the_server_never_ends_gives_up_after_the_timeout(silent_server: str) -> None:
    with RegisterClient(silent_server, member="NZL", role="border", timeout=0.5) as client:
        stream = client.check_stream()
        assert stream.check(state="NZL", number="A1").searched_number == "A1"
        started = time.monotonic()
        stream.close()  # the server keeps the call open: the close is bounded by the timeout
        assert 0.4 < time.monotonic() - started < 5
        stream.close()  # again: nothing to do
