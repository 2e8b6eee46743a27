"""Worker processes sharing one store: each catches up with the others' commits in the background."""

from __future__ import annotations

import threading
from pathlib import Path

from idcheck.register import Register
from idcheck.register.peers import REGISTER, PeerFollower, SequenceBoard
from tests.conftest import wait_until
from tests.register.conftest import NZL, raw, upload


def test_a_worker_catches_up_with_another_workers_upload_without_a_request(tmp_path: Path) -> None:
    board = SequenceBoard(2)
    writer, reader = Register.open(tmp_path), Register.open(tmp_path)  # two workers on one data directory
    try:
        writer.follow(board.channel(REGISTER))
        reader.follow(board.channel(REGISTER))
        upload(writer, NZL, "u1", [raw(f"LA{i:06d}") for i in range(500)])
        assert writer.sequence == 500
        # No request reaches `reader`: its follower applies the change from the store on its own.
        assert wait_until(lambda: reader.index.sequence == 500)
        assert len(reader.index) == 500
    finally:
        writer.close()
        reader.close()
    assert not reader._follower.running and not writer._follower.running  # type: ignore[union-attr]


def test_a_failing_catch_up_is_logged_and_retried(caplog: object) -> None:
    board = SequenceBoard(1)
    channel = board.channel(REGISTER)
    current = [0]
    calls: list[int] = []
    caught_up = threading.Event()

    def catch_up() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("database is locked")
        current[0] = channel.latest()
        caught_up.set()

    follower = PeerFollower(channel, lambda: current[0], catch_up, threading.Lock(), interval=0.01)
    follower.start()
    try:
        channel.publish(7)
        assert caught_up.wait(10)
        assert current[0] == 7 and len(calls) == 2
        assert "catching up with the other workers in the background failed" in caplog.text  # type: ignore[attr-defined]
    finally:
        follower.stop()
    assert not follower.running


def test_a_workers_own_commit_goes_to_its_index_directly_unless_another_worker_committed_first(
    tmp_path: Path,
) -> None:
    board = SequenceBoard(2)
    first, second = Register.open(tmp_path), Register.open(tmp_path)
    reads = {id(first): 0, id(second): 0}
    for worker in (first, second):
        key_columns = worker.store.key_columns

        def counted(*args, _worker=worker, _read=key_columns, **kwargs):  # type: ignore[no-untyped-def]
            reads[id(_worker)] += 1
            return _read(*args, **kwargs)

        worker.store.key_columns = counted  # type: ignore[method-assign]
    try:
        first.follow(board.channel(REGISTER))
        second.follow(board.channel(REGISTER))
        second._follower.stop()  # type: ignore[union-attr]  # second then learns of others' commits only when it writes
        # Nothing committed by anyone else since first's index: its own changes go to its index, no store read.
        upload(first, NZL, "u1", [raw(f"LA{i:06d}") for i in range(50)])
        assert (first.index.sequence, len(first.index), reads[id(first)]) == (50, 50, 0)
        assert board.channel(REGISTER).latest() == 50  # published for the others
        # second's index is still at 0 when it commits 51..60: it reads 1..60 from the store instead.
        upload(second, NZL, "u2", [raw(f"LB{i:06d}") for i in range(10)])
        assert (second.index.sequence, len(second.index), reads[id(second)]) == (60, 60, 1)
        assert board.channel(REGISTER).latest() == 60
        # first catches up in the background, then commits on top: directly again.
        assert wait_until(lambda: first.index.sequence == 60)
        before = reads[id(first)]
        outcome = first.cancel(NZL, [("NZL", "LA000001", 1)], "found")
        assert outcome.register_sequence == 61
        assert (first.index.sequence, len(first.index), reads[id(first)]) == (61, 59, before)
    finally:
        first.close()
        second.close()
