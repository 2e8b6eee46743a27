"""`OperationsClient`: service statistics for operators (role operator)."""

from __future__ import annotations

from idcheck.client.channel import ServiceClient
from idcheck.v1 import operations_pb2 as pb
from idcheck.v1 import operations_pb2_grpc


class OperationsClient(ServiceClient):
    """Client of the Operations service."""

    stub_class = operations_pb2_grpc.OperationsStub

    def statistics(self, *, timeout: float | None = None) -> pb.Statistics:
        """Counters of the server process: register size, calls and verdicts since start, audit, limits."""
        return self._call(self._stub.GetStatistics, pb.GetStatisticsRequest(), timeout)
