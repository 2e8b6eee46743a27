"""Restarts map the index snapshot and replay the change log after it, and answer as a full rebuild does."""

from __future__ import annotations

import shutil
from pathlib import Path

from idcheck.index import DocumentIndexSettings, Lookup
from idcheck.register import Register
from idcheck.register.checks import Query

from .conftest import BORDER, FJI, NZL, raw, upload


def settings(data: Path) -> DocumentIndexSettings:
    return DocumentIndexSettings(merge_threshold=50, snapshot_dir=data / "snapshots", snapshot_min_changes=1)


def answers(register: Register, numbers: list[str]) -> list[tuple[str, tuple[tuple[int, int, str], ...]]]:
    queries = [Query(issuing_state=s, document_number=n) for n in numbers for s in ("NZL", "FJI", "")]
    results, _ = register.check(BORDER, queries)
    return [
        (r.verdict.name, tuple((m.kind, m.record.record_id, m.record.data.status.name) for m in r.matches))
        for r in results
    ]


def test_restart_from_snapshot_plus_log_answers_like_a_full_rebuild(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Register.open(data, index_settings=settings(data))
    upload(first, NZL, "u1", [raw(f"NZ{i:06d}") for i in range(400)])  # bulk: index rebuilt, snapshot written
    first.index.wait_idle()
    snapshot_seq = first.index.snapshot_sequence
    assert snapshot_seq == first.sequence > 0
    # Changes after the snapshot: the change log must carry them over the restart.
    upload(first, FJI, "u2", [raw(f"NZ{i:06d}", state="FJI") for i in range(10)])
    first.cancel(NZL, [("NZL", f"NZ{i:06d}", 1) for i in range(0, 400, 40)], "recovered")
    upload(first, NZL, "u3", [raw("NZ000040", status=4)])  # cancelled above, listed again (revoked)
    first.audit.flush()
    expected_sequence = first.sequence
    # No close(): the process dies here as far as the index is concerned (the store is durable).

    numbers = [f"NZ{i:06d}" for i in range(0, 420, 3)] + ["NZ000040", "N2000040", "XX1"]
    restarted = Register.open(data, index_settings=settings(data))
    try:
        assert restarted.loaded_from_snapshot == snapshot_seq < expected_sequence
        assert restarted.sequence == expected_sequence
        shutil.copytree(data, tmp_path / "scratch", ignore=shutil.ignore_patterns("snapshots"))
        scratch = Register.open(tmp_path / "scratch", index_settings=DocumentIndexSettings(merge_threshold=50))
        try:
            assert scratch.loaded_from_snapshot == 0
            assert restarted.index.record_ids().tolist() == scratch.index.record_ids().tolist()
            assert len(restarted.index) == len(scratch.index) == 400 - 10 + 1 + 10
            assert answers(restarted, numbers) == answers(scratch, numbers)
            # And the answers are the right ones, not merely equal.
            assert restarted.index.lookup(Lookup("NZL", "NZ000080")) == ()
            got = dict(zip(numbers, answers(restarted, numbers)[::3], strict=False))
            assert got["NZ000040"][1][0][2] == "REVOKED"
        finally:
            scratch.close()
    finally:
        restarted.close()
