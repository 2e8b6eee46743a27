"""End to end: the per-member rate limit of a real server (README "Configuration")."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from idcheck.client.errors import ResourceExhausted
from idcheck.client.register import make_query
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc
from tests.conftest import ServerProcess


def healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return resp.status == health_pb2.HealthCheckResponse.SERVING


def test_member_over_its_rate_is_refused_with_retry_hint_while_others_are_served(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--rate-limit-per-second", "5", "--rate-limit-burst", "5")
    with server.client("NZL", "border") as nzl, server.client("FJI", "border") as fji:
        refused: ResourceExhausted | None = None
        for _ in range(50):  # 5 at once, then 5/s: a tight loop runs dry within a few calls
            try:
                nzl.check(state="NZL", number="LA123456")
            except ResourceExhausted as exc:
                refused = exc
                break
        assert refused is not None, "a burst beyond the limit was never refused"
        assert refused.reason == "RATE_LIMITED"
        assert refused.retry_after is not None and 0 < refused.retry_after <= 0.25
        assert "NZL" in refused.message and "FJI" not in refused.message
        assert healthy(server.address)  # health is never limited

        assert fji.check(state="NZL", number="LA123456").verdict == "CLEAR"  # another member is still served
        time.sleep(refused.retry_after)
        assert nzl.check(state="NZL", number="LA123456").verdict == "CLEAR"  # served again after the delay
        assert healthy(server.address)


def test_refusal_carries_retry_info_and_quota_failure(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--rate-limit-per-second", "0.5", "--rate-limit-burst", "1")
    metadata = (("x-idcheck-member", "WSM"), ("x-idcheck-role", "member"))
    with grpc.insecure_channel(server.address) as ch:
        stub = register_pb2_grpc.DocumentRegisterStub(ch)
        request = pb.CheckDocumentRequest(query=make_query({"state": "WSM", "number": "X1"}))
        stub.CheckDocument(request, metadata=metadata, timeout=5)
        with pytest.raises(grpc.RpcError) as failed:
            stub.CheckDocument(request, metadata=metadata, timeout=5)
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(failed.value)  # type: ignore[arg-type]
    assert status is not None
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
    assert any(d.Unpack(quota) for d in status.details if d.Is(quota.DESCRIPTOR))
    assert 1.0 < retry.retry_delay.ToTimedelta().total_seconds() <= 2.0
    [violation] = quota.violations
    assert violation.subject == "member:WSM"
