"""A call whose deadline passed while it waited for a worker is not worked on (no answer computed, no audit).

grpc-python already drops a unary call cancelled before a worker takes up its request; this test pins that
behaviour down end to end (through the audit log), so a change of server stack or threading cannot lose it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc
from tests.conftest import ServerProcess

MD = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member"))


def holding_upload(started: threading.Event, release: threading.Event) -> Iterator[pb.UploadRecordsRequest]:
    yield pb.UploadRecordsRequest(header=pb.UploadHeader(upload_id="hold", mode=pb.UPLOAD_MODE_INCREMENTAL))
    yield pb.UploadRecordsRequest(
        batch=pb.RecordBatch(
            records=[
                pb.Record(
                    key=pb.DocumentKey(issuing_state="NZL", document_number="H1", document_class=1),
                    status=2,
                    event_date="2025-01-01",
                )
            ]
        )
    )
    started.set()
    release.wait(30)
    yield pb.UploadRecordsRequest(end=pb.UploadEnd(total_rows=1))


def test_call_whose_deadline_passed_in_the_queue_is_not_worked_on(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory("--threads", "1")  # one worker: the upload below holds it
    stub = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(server.address))
    started, release = threading.Event(), threading.Event()
    upload = stub.UploadRecords.future(holding_upload(started, release), metadata=MD, timeout=60)
    assert started.wait(20)
    time.sleep(0.3)
    expired = pb.CheckDocumentRequest(
        query=pb.DocumentQuery(typed=pb.TypedQuery(issuing_state="NZL", document_number="EXPIRED1"))
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.CheckDocument(expired, metadata=MD, timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    release.set()
    assert upload.result(timeout=20).created == 1
    time.sleep(0.5)  # the queued, expired check is taken up (and refused) by the freed worker
    live = pb.CheckDocumentRequest(
        query=pb.DocumentQuery(typed=pb.TypedQuery(issuing_state="NZL", document_number="H1"))
    )
    assert stub.CheckDocument(live, metadata=MD, timeout=10).result.verdict == pb.VERDICT_HIT
    assert server.stop() == 0  # flushes the audit log
    with sqlite3.connect(server.data_dir / "register.db") as db:
        numbers = [n for (n,) in db.execute("SELECT document_number FROM audit_log")]
    assert numbers == ["H1"], "the expired check was worked on"
