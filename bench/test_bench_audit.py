"""Cost of writing the audit log on the audit writer's thread (`RegisterStore.write_audit`).

One commit of 40 manifest calls of 1,000 plain CLEAR documents each (the writer commits every 0.2 s; 40 such calls
are what 200,000 documents/s bring in that time), written as one `audit` row per document (the path of every
call before packing, still that of HITs, MRZ, verify/identify and single checks) or packed (`AuditClear`: one
`audit_clear` row per call). Each round appends to a real SQLite file (WAL, synchronous=NORMAL, as the writer's
connection), so the log grows as it does in service; each checks the documents arrived.
Packing alone (`_pack_clear`, from Python lists as check_batch gives them or Arrow columns) is measured apart.
Run with ``.venv/bin/pytest bench/test_bench_audit.py --benchmark-only -q``; divide by 40 for one call.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from idcheck.store import AuditCall, AuditClear, AuditDocument, RegisterStore
from idcheck.store.sqlite import _pack_clear, connect

CALLS = 40
DOCUMENTS = 1_000
STATES = ("NZL", "AUS", "GBR", "D", "UTO")
AT = "2026-06-01T00:00:00.000Z"


def documents(seed: int) -> tuple[list[str], list[str]]:
    """Issuing states and canonical numbers of one manifest, as the register holds them."""
    rng = np.random.default_rng(seed)
    states = [STATES[i] for i in rng.integers(0, len(STATES), DOCUMENTS).tolist()]
    numbers = [f"LA{n:07d}" for n in rng.integers(0, 10_000_000, DOCUMENTS).tolist()]
    return states, numbers


MANIFESTS = [documents(seed) for seed in range(CALLS)]


def calls(first_id: int, *, packed: bool) -> list[tuple[AuditCall, list[AuditDocument], AuditClear | None]]:
    out: list[tuple[AuditCall, list[AuditDocument], AuditClear | None]] = []
    for k, (states, numbers) in enumerate(MANIFESTS):
        call_id = first_id + k
        call = AuditCall(call_id, uuid.uuid4().hex, AT, "NZL", "border", "peer", 1, DOCUMENTS, False)
        if packed:
            out.append((call, [], AuditClear(np.arange(DOCUMENTS, dtype=np.int64), states, numbers)))
        else:
            rows = [
                AuditDocument(call_id, i, "typed", s, n, "CLEAR", "")
                for i, (s, n) in enumerate(zip(states, numbers, strict=True))
            ]
            out.append((call, rows, None))
    return out


@pytest.fixture
def store(tmp_path: Path):
    s = RegisterStore(tmp_path / "register.db")
    conn = connect(s.path, synchronous="NORMAL", cache_mib=8)  # as AuditWriter's own connection
    yield s, conn
    conn.close()
    s.close()


def write_rounds(benchmark, store, *, packed: bool) -> None:
    s, conn = store

    def setup():
        return (calls(s.last_audit_call_id() + 1, packed=packed), conn), {}

    before = s.audit_count()
    benchmark.pedantic(s.write_audit, setup=setup, rounds=30, iterations=1, warmup_rounds=2)
    assert s.audit_count() - before == 32 * CALLS * DOCUMENTS


def test_bench_write_audit_40_manifests_one_row_per_document(benchmark, store) -> None:
    write_rounds(benchmark, store, packed=False)


def test_bench_write_audit_40_manifests_packed(benchmark, store) -> None:
    write_rounds(benchmark, store, packed=True)


@pytest.mark.parametrize("columns", ["lists", "arrow"])
def test_bench_pack_one_manifest_of_1000(benchmark, columns: str) -> None:
    states, numbers = MANIFESTS[0]
    if columns == "arrow":  # as a columnar manifest hands them over
        clear = AuditClear(np.arange(DOCUMENTS, dtype=np.int64), pa.array(states), pa.array(numbers))
    else:
        clear = AuditClear(np.arange(DOCUMENTS, dtype=np.int64), states, numbers)
    count, text = benchmark(_pack_clear, clear)
    assert count == DOCUMENTS and text.startswith(f'[[0,"{states[0]}","{numbers[0]}"],')
