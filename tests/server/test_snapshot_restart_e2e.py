"""A real server killed with SIGKILL after an index snapshot restarts from the snapshot plus the change log,
and answers exactly as a server that rebuilt its index from the store alone."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ServerProcess

PASSPORT, STOLEN, REVOKED = 1, 2, 4
FAST_SNAPSHOTS = ("--index-merge-threshold", "100", "--index-snapshot-changes", "1")


def rec(state: str, number: str, status: int = STOLEN) -> dict[str, object]:
    return {
        "issuing_state": state,
        "document_number": number,
        "document_class": PASSPORT,
        "status": status,
        "event_date": "2025-01-15",
    }


def answers(server: ServerProcess, numbers: list[str]) -> list[tuple[str, list[tuple[str, str, str]]]]:
    queries = [{"state": s, "number": n} for n in numbers for s in ("NZL", "FJI", "")]
    with server.client(member="AUS", role="border") as c:
        return [
            (a.verdict, [(m.kind, m.issuing_state + m.document_number, m.status) for m in a.matches])
            for a in c.check_many(queries)
        ]


def test_killed_server_restarts_from_snapshot_and_log_like_a_full_rebuild(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = server_factory(*FAST_SNAPSHOTS, data_dir=data)
    with server.client(member="NZL") as nzl:
        nzl.upload([rec("NZL", f"K{i:07d}") for i in range(3000)], upload_id="bulk")
    deadline = time.monotonic() + 30
    while not list((data / "snapshots").glob("documents-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((data / "snapshots").glob("documents-*")), server.log
    # Changes after the snapshot, then SIGKILL: only the change log has them.
    with server.client(member="NZL") as nzl, server.client(member="FJI") as fji:
        fji.upload([rec("FJI", f"K{i:07d}") for i in range(20)], upload_id="fji")
        nzl.cancel([("NZL", f"K{i:07d}") for i in range(0, 3000, 100)], "recovered")
        nzl.upload([rec("NZL", "K0000100", REVOKED), rec("NZL", "NEW0001")], upload_id="late")
    server.stop(signal.SIGKILL)

    restarted = server_factory(*FAST_SNAPSHOTS, data_dir=data)
    assert "index snapshot at sequence" in restarted.log, restarted.log
    shutil.copytree(data, tmp_path / "scratch", ignore=shutil.ignore_patterns("snapshots"))
    scratch = server_factory(data_dir=tmp_path / "scratch")
    assert "index built from the store" in scratch.log, scratch.log

    numbers = [f"K{i:07d}" for i in range(0, 3000, 50)] + ["NEW0001", "NEWOOO1", "K0000I00", "NOPE"]
    got = answers(restarted, numbers)
    assert got == answers(scratch, numbers)
    by_query = dict(zip([(s, n) for n in numbers for s in ("NZL", "FJI", "")], got, strict=True))
    # Cancelled after the snapshot: only FJI's record of the same number is left, a possible match.
    assert by_query[("NZL", "K0000000")] == ("POSSIBLE_MATCH", [("STATE_MISMATCH", "FJIK0000000", "STOLEN")])
    assert by_query[("NZL", "K0000200")] == ("CLEAR", [])
    assert by_query[("NZL", "K0000100")] == ("HIT", [("EXACT", "NZLK0000100", "REVOKED")])
    assert by_query[("NZL", "NEWOOO1")][0] == "POSSIBLE_MATCH"  # O read for 0, added after the snapshot
    assert by_query[("FJI", "K0000000")][0] == "HIT"  # uploaded after the snapshot
