"""The Operations servicer: service statistics for operators, and the counters behind them.

Counters are kept where the things happen, without adding a lock to the check path: the audit writer counts
answered calls and verdicts on its own thread (`idcheck.store.audit`), `CallCounter` counts RPCs in per-thread
cells, `CountingRateLimiter` counts refusals on the refusal path only, and the rest (register size, sequence
numbers, templates, overload state) is read when asked.

Only operators may read them: the totals include every member's records and traffic, so a member could subtract
its own figures and learn the others'.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from idcheck.biometrics import Gallery
from idcheck.register import Register
from idcheck.server.limits import ConcurrencyLimiter, RateLimited, RateLimiter
from idcheck.v1 import operations_pb2 as pb
from idcheck.v1 import operations_pb2_grpc

DOCUMENT_VERDICTS = ("HIT", "POSSIBLE_MATCH", "CLEAR")


class ThreadCounter:
    """A counter that threads increment without a lock: each thread adds to its own cell, a reader sums them.

    Only the owning thread writes a cell, so no increment is lost; a read may miss increments made while it
    sums (it is a snapshot, not a barrier). Cells of threads that ended stay counted."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._cells: list[list[int]] = []
        self._lock = threading.Lock()  # taken once per thread, when its cell is made

    def add(self, n: int = 1) -> None:
        try:
            cell = self._local.cell
        except AttributeError:
            cell = self._local.cell = [0]
            with self._lock:
                self._cells.append(cell)
        cell[0] += n

    @property
    def value(self) -> int:
        with self._lock:
            cells = list(self._cells)
        return sum(c[0] for c in cells)


class CallCounter(grpc.ServerInterceptor):
    """Counts every RPC started and finished (health and reflection included); in flight = started - finished.

    Put it first among the interceptors, so that calls refused by the ones after it are counted too."""

    def __init__(self) -> None:
        self.started = ThreadCounter()
        self.finished = ThreadCounter()

    @property
    def in_flight(self) -> int:
        finished = self.finished.value  # read first: a call finishing between the reads is not counted negative
        return self.started.value - finished

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        started, finished = self.started, self.finished

        def counted(behaviour: Callable[..., Any]) -> Callable[..., Any]:
            def run(request: Any, context: grpc.ServicerContext) -> Any:
                started.add()
                try:
                    return behaviour(request, context)
                finally:
                    finished.add()

            return run

        def counted_stream(behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                started.add()
                try:
                    yield from behaviour(request, context)
                finally:
                    finished.add()

            return run

        if handler.unary_unary:
            return handler._replace(unary_unary=counted(handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=counted(handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=counted_stream(handler.unary_stream))
        if handler.stream_stream:
            return handler._replace(stream_stream=counted_stream(handler.stream_stream))
        return handler


class CountingRateLimiter(RateLimiter):
    """The per-member rate limiter, counting the calls it refuses (the count costs nothing on admitted calls)."""

    def __init__(self, per_second: float, burst: int, **kwargs: Any) -> None:
        super().__init__(per_second, burst, **kwargs)
        self.refusals = ThreadCounter()

    def acquire(self, member: str) -> None:
        try:
            super().acquire(member)
        except RateLimited:
            self.refusals.add()
            raise


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    """gRPC face of the service statistics."""

    def __init__(
        self,
        register: Register,
        gallery: Gallery,
        calls: CallCounter,
        *,
        rate_limiter: CountingRateLimiter | None = None,
        shedder: ConcurrencyLimiter | None = None,
        worker: tuple[int, int] = (1, 1),
    ) -> None:
        self.register = register
        self.worker = worker  # (this process's number from 1, processes serving the port)
        self.gallery = gallery
        self.calls = calls
        self.rate_limiter = rate_limiter
        self.shedder = shedder
        self.started_at = dt.datetime.now(dt.UTC)
        self._started = time.monotonic()

    def GetStatistics(self, request: pb.GetStatisticsRequest, context: grpc.ServicerContext) -> pb.Statistics:
        audit = self.register.audit.counts()  # includes every call answered before this one
        index = self.gallery.index.stats()
        stats = pb.Statistics(
            started_at=self.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            uptime_seconds=time.monotonic() - self._started,
            records_by_status=self.register.store.count_records(),
            active_records=len(self.register.index),
            register_sequence=self.register.sequence,
            templates_enrolled=index.ntotal,
            template_sequence=index.sequence,
            template_index=index.kind,
            calls_by_kind=audit.calls_by_kind,
            documents_checked=sum(audit.answers_by_verdict.get(v, 0) for v in DOCUMENT_VERDICTS),
            answers_by_verdict=audit.answers_by_verdict,
            audit_enabled=audit.enabled,
            audit_calls_queued=audit.calls_queued,
            audit_rows_pending=audit.rows_pending,
            audit_calls_written=audit.calls_written,
            audit_rows_written=audit.rows_written,
            audit_write_failures=audit.write_failures,
            audit_calls_set_aside=audit.calls_set_aside,
            rate_limited_calls=self.rate_limiter.refusals.value if self.rate_limiter is not None else 0,
            rpcs_in_flight=self.calls.in_flight,
            rpcs_started=self.calls.started.value,
            background_tasks=self.register.background_tasks() + int(index.rebuilding),
            worker=self.worker[0],
            worker_processes=self.worker[1],
        )
        if self.shedder is not None:
            running, waiting, streams = self.shedder.load()
            stats.calls_in_work = running
            stats.calls_waiting = waiting
            stats.streams_open = streams
            stats.streams_max = self.shedder.streams
            stats.overload_refusals = self.shedder.refused
            stats.check_streams_open = self.shedder.open_check_streams
            stats.check_streams_max = self.shedder.check_streams
        return stats
