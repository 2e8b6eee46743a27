"""Interceptors applied per method when a service is added (idcheck.server.handlers), on a real gRPC server: they
wrap each method once, in grpc's order, and still do their per-call work on every call."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from idcheck.server.handlers import InterceptedServer, intercepted

SERVICE = "test.Echo"


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"echo:" + request


def _handlers() -> dict[str, grpc.RpcMethodHandler]:
    return {
        "Say": grpc.unary_unary_rpc_method_handler(_echo),
        "Refuse": grpc.unary_unary_rpc_method_handler(_echo),
    }


class Recording(grpc.ServerInterceptor):
    """Records each intercept_service (the method) and each call it wraps (its name, in call order)."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls
        self.intercepted: list[str] = []
        self._lock = threading.Lock()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        with self._lock:
            self.intercepted.append(handler_call_details.method)
        if handler is None:
            return None
        if handler_call_details.method.endswith("/Refuse"):
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: context.abort(grpc.StatusCode.PERMISSION_DENIED, f"refused by {self.name}")
            )
        behaviour = handler.unary_unary

        def run(request: Any, context: grpc.ServicerContext) -> Any:
            self.calls.append(self.name)
            return behaviour(request, context)

        return handler._replace(unary_unary=run)


@pytest.fixture
def served() -> Iterator[tuple[grpc.Channel, list[Recording], list[str]]]:
    calls: list[str] = []
    interceptors = [Recording("outer", calls), Recording("inner", calls)]
    server = grpc.server(futures.ThreadPoolExecutor(4))
    services = InterceptedServer(server, interceptors)
    handlers = _handlers()
    services.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    services.add_registered_method_handlers(SERVICE, handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, interceptors, calls
    finally:
        channel.close()
        server.stop(None)


def _call(channel: grpc.Channel, method: str, request: bytes = b"x") -> bytes:
    return channel.unary_unary(f"/{SERVICE}/{method}", _registered_method=True)(request, timeout=5)


def test_each_method_is_wrapped_once_and_every_call_runs_through_the_wrapping(
    served: tuple[grpc.Channel, list[Recording], list[str]],
) -> None:
    channel, interceptors, calls = served
    asked_at_start = [list(i.intercepted) for i in interceptors]
    for k in range(5):
        assert _call(channel, "Say", b"%d" % k) == b"echo:%d" % k
    assert calls == ["outer", "inner"] * 5  # the first interceptor outermost, as grpc orders them
    assert [list(i.intercepted) for i in interceptors] == asked_at_start  # nothing more asked per call
    assert all(f"/{SERVICE}/Say" in i.intercepted for i in interceptors)


def test_a_handler_an_interceptor_puts_in_place_answers(
    served: tuple[grpc.Channel, list[Recording], list[str]],
) -> None:
    channel, _, calls = served
    with pytest.raises(grpc.RpcError) as refused:
        _call(channel, "Refuse")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == "refused by outer"
    assert calls == []  # the echo never ran


def test_an_unknown_method_is_unimplemented(served: tuple[grpc.Channel, list[Recording], list[str]]) -> None:
    channel, _, calls = served
    with pytest.raises(grpc.RpcError) as unknown:
        channel.unary_unary(f"/{SERVICE}/Nothing")(b"x", timeout=5)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert calls == []
    assert _call(channel, "Say") == b"echo:x"  # and the server goes on answering


def test_the_generic_path_wraps_on_first_use_and_remembers() -> None:
    """A method found only through the generic handler (not registered by name) is wrapped on its first call."""
    calls: list[str] = []
    interceptor = Recording("only", calls)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    InterceptedServer(server, [interceptor]).add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, _handlers()),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(3):
                assert channel.unary_unary(f"/{SERVICE}/Say")(b"g", timeout=5) == b"echo:g"
    finally:
        server.stop(None)
    assert calls == ["only"] * 3
    assert interceptor.intercepted == [f"/{SERVICE}/Say"]


def test_intercepted_gives_none_for_no_handler() -> None:
    calls: list[str] = []
    assert intercepted(f"/{SERVICE}/Say", None, [Recording("a", calls)]) is None
    handler = _handlers()["Say"]
    assert intercepted(f"/{SERVICE}/Say", handler, []) is handler
