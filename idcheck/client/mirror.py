"""`ReplicationClient`: the Python client of the register's change feed (role mirror or operator).

    with ReplicationClient("register.example:50051", tls=TlsOptions.from_dir("pki", member="NZL", role="mirror"))
            as client, client.watch_changes(from_sequence=0, timeout=0) as feed:
        for message in feed:
            ...  # replication_pb2.WatchChangesResponse: snapshot, changes or heartbeat

`idcheck mirror` (idcheck.server.mirror) is the subscriber that applies the feed to a register of its own.
"""

from __future__ import annotations

from idcheck.client.channel import ServiceClient, StreamWatch
from idcheck.v1 import replication_pb2 as pb
from idcheck.v1 import replication_pb2_grpc


class ReplicationClient(ServiceClient):
    """Client of the Replication service."""

    stub_class = replication_pb2_grpc.ReplicationStub

    def watch_changes(
        self, from_sequence: int = 0, *, heartbeat: float = 5.0, timeout: float | None = None
    ) -> FeedWatch:
        """The change feed from `from_sequence` (0: a snapshot first), heartbeats every `heartbeat` seconds while
        nothing changes, until `timeout` seconds pass (None: the client's timeout; 0: no deadline) or `cancel()`
        is called (from any thread)."""
        deadline = self.timeout if timeout is None else timeout
        request = pb.WatchChangesRequest(from_sequence=from_sequence, heartbeat_seconds=heartbeat)
        return FeedWatch(self._stub.WatchChanges(request, timeout=deadline or None, metadata=self._metadata))


class FeedWatch(StreamWatch[pb.WatchChangesResponse]):
    """An open WatchChanges stream: iterate it for messages; `cancel()` ends it (the iteration then stops).
    Failures raise `idcheck.client.errors.IdcheckError` subclasses."""
