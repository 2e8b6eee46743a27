"""The Replication servicer: the register's change feed as a gRPC server stream.

No rules here: what is sent and when lives in idcheck.register.replication.ChangeFeed; this module only
turns its items into messages. Errors (a position beyond the register) are mapped by idcheck.server.errors.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from idcheck.register.replication import ChangeFeed, ChangePage, Heartbeat, SnapshotPart
from idcheck.v1 import replication_pb2 as pb
from idcheck.v1 import replication_pb2_grpc

DEFAULT_HEARTBEAT = 5.0
MIN_HEARTBEAT, MAX_HEARTBEAT = 0.1, 60.0


class ReplicationServicer(replication_pb2_grpc.ReplicationServicer):
    """gRPC face of the change feed."""

    def __init__(self, feed: ChangeFeed) -> None:
        self.feed = feed

    def WatchChanges(
        self, request: pb.WatchChangesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchChangesResponse]:
        heartbeat = request.heartbeat_seconds or DEFAULT_HEARTBEAT
        heartbeat = min(MAX_HEARTBEAT, max(MIN_HEARTBEAT, heartbeat))
        for item in self.feed.follow(request.from_sequence, heartbeat=heartbeat, active=context.is_active):
            if isinstance(item, ChangePage):
                yield pb.WatchChangesResponse(
                    changes=pb.ChangeBatch(
                        records=item.records,
                        rows=item.rows,
                        resume_sequence=item.resume_sequence,
                        through_sequence=item.through_sequence,
                    )
                )
            elif isinstance(item, Heartbeat):
                yield pb.WatchChangesResponse(
                    heartbeat=pb.Heartbeat(sequence=item.sequence, upstream_time=item.upstream_time)
                )
            elif isinstance(item, SnapshotPart):
                yield pb.WatchChangesResponse(
                    snapshot=pb.SnapshotBatch(
                        sequence=item.sequence,
                        batch=item.batch,
                        last=item.last,
                        rows=item.rows,
                        total_rows=item.total_rows,
                        records=item.records,
                    )
                )
