"""Speed of the document key index through its public interface: `apply`, `lookup`, `lookup_many`.

A register of 1,000,000 synthetic passports of one member; queries mix listed numbers (HIT), OCR misreadings
of listed numbers (POSSIBLE_MATCH) and unlisted numbers, as `idcheck bench` sends them. Only the public
interface is used, so the benchmark stays valid while the index internals change.
Run with ``.venv/bin/pytest bench/test_bench_index.py --benchmark-only -q`` (building the index takes a few
seconds; ``IDCHECK_BENCH_INDEX_RECORDS`` sets another register size).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from idcheck.client.bench import V_HIT, V_POSSIBLE, listed_numbers, make_queries
from idcheck.icao import DocumentClass
from idcheck.index.documents import DocumentIndex, Lookup, MatchKind
from idcheck.records import DocumentKey, RecordData, RecordStatus, StoredRecord

RECORDS = int(float(os.environ.get("IDCHECK_BENCH_INDEX_RECORDS", "1e6")))
STATE = "NZL"


def stored(record_id: int, number: str, status: RecordStatus = RecordStatus.STOLEN) -> StoredRecord:
    key = DocumentKey(STATE, number, DocumentClass.PASSPORT)
    return StoredRecord(record_id, RecordData(key, number, status, "2025-06-01"), STATE, "2025-06-02", record_id)


@pytest.fixture(scope="module")
def register() -> tuple[DocumentIndex, list[str], np.ndarray]:
    listed = listed_numbers(RECORDS, seed=7).astype(str).tolist()
    index = DocumentIndex()
    index.apply(stored(i + 1, n) for i, n in enumerate(listed))
    numbers, expected = make_queries(np.asarray(listed, dtype="S9"), 10_000, seed=7)
    assert len(index) == RECORDS
    return index, numbers, expected


def _verdict(matches: tuple) -> int:
    if any(m.kind == MatchKind.EXACT for m in matches):
        return V_HIT
    return V_POSSIBLE if matches else 1


def test_bench_lookup_single_listed(benchmark, register) -> None:
    index, numbers, expected = register
    number = numbers[int(np.flatnonzero(expected == V_HIT)[0])]
    matches = benchmark(index.lookup, Lookup(STATE, number))
    assert [m.kind for m in matches] == [MatchKind.EXACT]


def test_bench_lookup_single_unlisted(benchmark, register) -> None:
    index, numbers, expected = register
    number = numbers[int(np.flatnonzero(expected == 1)[0])]
    assert benchmark(index.lookup, Lookup(STATE, number)) == ()


def test_bench_lookup_many_manifest_of_1000(benchmark, register) -> None:
    index, numbers, expected = register
    queries = [Lookup(STATE, n) for n in numbers[:1000]]
    answers = benchmark(index.lookup_many, queries)
    assert [_verdict(m) for m in answers] == expected[:1000].tolist()


def test_bench_lookup_many_manifest_of_10000(benchmark, register) -> None:
    index, numbers, expected = register
    queries = [Lookup(STATE, n) for n in numbers]
    answers = benchmark.pedantic(index.lookup_many, args=(queries,), rounds=10, iterations=1)
    assert [_verdict(m) for m in answers] == expected.tolist()


def test_bench_apply_upload_of_10000(benchmark, register) -> None:
    """Applying an upload of 10,000 new records (then cancelling them again, outside the timing)."""
    index, _numbers, _expected = register
    fresh = [f"Z{k:08d}" for k in range(10_000)]
    first_id = 10 * RECORDS
    added = [stored(first_id + k, n) for k, n in enumerate(fresh)]
    cancelled = [r._replace(data=r.data._replace(status=RecordStatus.CANCELLED)) for r in added]

    def cancel() -> tuple[tuple, dict]:
        index.apply(cancelled)
        return (added,), {}

    benchmark.pedantic(index.apply, setup=cancel, rounds=10, iterations=1)
    assert len(index) == RECORDS + 10_000
    assert [m.kind for m in index.lookup(Lookup(STATE, fresh[0]))] == [MatchKind.EXACT]
    index.apply(cancelled)
    assert len(index) == RECORDS and index.lookup(Lookup(STATE, fresh[0])) == ()
