"""The compact document index: number keys, overlay merges, bulk rebuilds, snapshots, concurrent readers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idcheck.icao import DocumentClass, folded_key
from idcheck.index import (
    DocumentIndex,
    DocumentIndexSettings,
    Lookup,
    MatchKind,
    classify,
    documents,
    number_key,
    number_keys,
)
from idcheck.index.documents import _TWO_LEVEL_KEYS, PACKED_LENGTH, _Base, exact_number_keys, folded_number_key
from idcheck.records import DocumentKey, KeyColumns, RecordData, RecordStatus, StoredRecord

PASSPORT, ID_CARD = DocumentClass.PASSPORT, DocumentClass.ID_CARD
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def stored(rid: int, state: str, number: str, cls: DocumentClass = PASSPORT, status=RecordStatus.STOLEN, seq=None):
    data = RecordData(DocumentKey(state, number, cls), number, status, "2024-01-01")
    return StoredRecord(rid, data, "NZL", "2024-01-02T00:00:00.000Z", rid if seq is None else seq)


def columns(records: list[StoredRecord]) -> KeyColumns:
    return KeyColumns.from_records(records)


def found(index: DocumentIndex, query: Lookup) -> list[tuple[MatchKind, int]]:
    return [(c.kind, c.record_id) for c in index.lookup(query)]


# -- number keys ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=_ALNUM, min_size=1, max_size=24), min_size=1, max_size=20))
def test_vectorised_keys_equal_scalar_keys(numbers: list[str]) -> None:
    assert number_keys(numbers).tolist() == [number_key(n) for n in numbers]
    assert number_keys(numbers, fold=True).tolist() == [folded_number_key(n) for n in numbers]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ALNUM, min_size=1, max_size=PACKED_LENGTH), st.text(alphabet=_ALNUM, max_size=PACKED_LENGTH))
def test_numbers_up_to_twelve_characters_have_distinct_exact_keys(a: str, b: str) -> None:
    b = b or "0"
    assert (number_key(a) == number_key(b)) == (a == b)
    assert number_key(a) < 2**63  # packed keys never meet hashed ones, which have the top bit set


def test_long_numbers_are_hashed_into_the_upper_half() -> None:
    long = "A" * 13
    assert number_key(long) >= 2**63
    assert number_key(long) != number_key("A" * 14)
    assert number_key("ABC") != number_key("ABC0")  # padding is not a digit


# -- behaviour across merges and rebuilds -----------------------------------------------------------

_STATES = ("NZL", "FJI", "D")
_CHARS = "0OQD1IL2Z5S6G8B7UVA"
_numbers = st.text(alphabet=_CHARS, min_size=1, max_size=4) | st.text(alphabet=_CHARS, min_size=13, max_size=15)
_records = st.lists(
    st.tuples(
        st.sampled_from(_STATES),
        _numbers,
        st.sampled_from([PASSPORT, ID_CARD]),
        st.sampled_from([RecordStatus.STOLEN, RecordStatus.LOST, RecordStatus.CANCELLED]),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(_records, min_size=1, max_size=4),
    threshold=st.sampled_from([1, 2, 5, 65_536]),
    queries=st.lists(
        st.builds(Lookup, st.sampled_from(("", *_STATES)), _numbers, st.sampled_from(list(DocumentClass))),
        min_size=1,
        max_size=10,
    ),
)
def test_index_agrees_with_the_rules_whatever_merges_happen(
    batches: list[list[tuple[str, str, DocumentClass, RecordStatus]]], threshold: int, queries: list[Lookup]
) -> None:
    index = DocumentIndex(DocumentIndexSettings(merge_threshold=threshold))
    ids: dict[tuple[str, str, DocumentClass], int] = {}
    current: dict[int, StoredRecord] = {}
    seq = 0
    for batch in batches:
        changed = []
        for state, number, cls, status in batch:
            rid = ids.setdefault((state, number, cls), len(ids) + 1)
            seq += 1
            current[rid] = stored(rid, state, number, cls, status, seq)
            changed.append(current[rid])
        index.apply_columns(columns(changed))
    index.wait_idle()
    active = [r for r in current.values() if r.data.status.hits]
    assert len(index) == len(active)
    assert index.record_ids().tolist() == sorted(r.record_id for r in active)
    for q in queries:
        expected = sorted(
            (kind, r.record_id)
            for r in active
            if folded_key(r.data.key.number) == folded_key(q.number) and (kind := classify(q, r)) is not None
        )
        assert found(index, q) == expected
        assert [(c.kind, c.record_id) for c in index.lookup_many([q])[0]] == expected


def test_padded_bytes_reads_chunks_and_slices_and_refuses_what_does_not_fit() -> None:
    import pyarrow as pa

    from idcheck.index.documents import padded_bytes

    values = pa.array(["AB1", "", "XYZ9"])
    chunked = pa.chunked_array([values.slice(0, 1), values.slice(1, 0), values.slice(1)])
    expected = np.array([[65, 66, 49, 0], [0, 0, 0, 0], [88, 89, 90, 57]], np.uint8)
    assert np.array_equal(padded_bytes(values, 4), expected)
    assert np.array_equal(padded_bytes(chunked, 4), expected)
    assert np.array_equal(padded_bytes(values.slice(2), 4), expected[2:])
    assert padded_bytes(values, 3) is None  # "XYZ9" is longer than 3
    # Values of one length are read straight from the buffers, also from a slice and with an offset in the data.
    same = pa.array(["AB1", "CD2", "EF3", "GH4"]).slice(1, 2)
    assert np.array_equal(padded_bytes(same, 5), np.array([[67, 68, 50, 0, 0], [69, 70, 51, 0, 0]], np.uint8))
    assert padded_bytes(same, 2) is None
    assert padded_bytes(pa.array(["ÉA", "ÉB"]), 4) is None  # as for "é" above, with values of one length
    assert padded_bytes(pa.array(["é"]), 4) is None  # 2 bytes for 1 character: padding counts characters
    assert padded_bytes(pa.chunked_array([], pa.string()), 4).shape == (0, 4)


def test_columns_given_as_arrow_arrays_index_as_python_lists_do() -> None:
    """A bulk upload hands the index its states and numbers as Arrow arrays (no Python string per record)."""
    import pyarrow as pa

    records = [stored(i, ("NZL", "FJI", "D")[i % 3], f"N{i}O" if i % 5 else "X" * 30) for i in range(1, 61)]
    records.append(stored(7, "FJI", "N7O", status=RecordStatus.CANCELLED, seq=61))
    as_lists = columns(records)
    states, numbers = pa.array(list(as_lists.issuing_state)), pa.array(list(as_lists.number))
    indexes = []
    for given_states in (None, states, states.dictionary_encode()):
        given = as_lists
        if given_states is not None:
            given = KeyColumns(
                as_lists.record_id,
                given_states,
                numbers,
                as_lists.document_class,
                as_lists.status,
                as_lists.sequence,
            )
        index = DocumentIndex(DocumentIndexSettings(merge_threshold=10))
        index.apply_columns(given)
        indexes.append(index)
    queries = [Lookup(state, number) for state in ("NZL", "FJI", "D", "") for number in ("N10", "N1O", "N7O", "X" * 30)]
    answers = [[index.lookup(q) for q in queries] for index in indexes]
    assert answers[0] == answers[1] == answers[2]
    assert any(answers[0]) and len(indexes[1]) == 59


def test_bulk_change_rebuilds_columns_and_keeps_the_last_change_of_a_record() -> None:
    index = DocumentIndex(DocumentIndexSettings(merge_threshold=10))
    records = [stored(i, "NZL", f"N{i}") for i in range(1, 101)]
    records.append(stored(5, "NZL", "N5", status=RecordStatus.CANCELLED, seq=101))  # same batch, later change
    index.apply_columns(columns(records))
    assert len(index) == 99
    assert not index.lookup(Lookup("NZL", "N5"))
    assert found(index, Lookup("NZL", "N6")) == [(MatchKind.EXACT, 6)]
    assert index.sequence == 101
    # Cancelling and re-listing a record of the base columns flips it in place.
    index.apply([stored(6, "NZL", "N6", status=RecordStatus.CANCELLED, seq=102)])
    assert not index.lookup(Lookup("NZL", "N6")) and len(index) == 98
    index.apply([stored(6, "NZL", "N6", status=RecordStatus.LOST, seq=103)])
    assert found(index, Lookup("NZL", "N6")) == [(MatchKind.EXACT, 6)] and len(index) == 99


@pytest.fixture
def two_levels_from_small_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches searched in two levels in columns of test size too (in service: from 262,144 rows)."""
    monkeypatch.setattr(documents, "_TWO_LEVEL_ROWS", 0)


@pytest.mark.parametrize("listed", [50, 400])  # a batch searched in one level, and one searched in two
def test_manifest_lookup_vectorised_equals_single_lookups(listed: int, two_levels_from_small_columns: None) -> None:
    rng = np.random.default_rng(7)
    numbers = ["".join(rng.choice(list(_ALNUM), 9)) for _ in range(5000)]
    index = DocumentIndex(DocumentIndexSettings(merge_threshold=1000))
    index.apply_columns(columns([stored(i + 1, "NZL", n) for i, n in enumerate(numbers)]))
    index.apply([stored(9000, "FJI", numbers[3], seq=6000)])  # overlay row sharing a base row's number
    unlisted = ["".join(rng.choice(list(_ALNUM), 9)) for _ in range(listed)]
    queries = [Lookup("NZL", n) for n in numbers[:listed] + unlisted]
    queries += [Lookup("FJI", numbers[3]), Lookup("NZL", "NOSUCH1"), Lookup("NZL", "0"), Lookup("NZL", "Z" * 12)]
    assert (len(queries) >= _TWO_LEVEL_KEYS) == (listed == 400)
    single = [index.lookup(q) for q in queries]
    assert sum(map(bool, single)) >= listed + 1
    assert index.lookup_many(queries) == single
    assert found(index, Lookup("FJI", numbers[3])) == [(MatchKind.EXACT, 9000), (MatchKind.STATE_MISMATCH, 4)]


@pytest.mark.parametrize("rows", [0, 1, 127, 128, 129, 1000, 4097, 2_000_000])
@pytest.mark.parametrize("small_columns_in_two_levels", [False, True])
def test_batch_search_in_two_levels_equals_a_binary_search(
    rows: int, small_columns_in_two_levels: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keys of the column in runs of equal keys, and keys asked below, between, on and above them: whatever the
    # column's length (a multiple of the sample's block or not; 2,000,000 rows make blocks of 128 keys).
    if small_columns_in_two_levels:
        monkeypatch.setattr(documents, "_TWO_LEVEL_ROWS", 0)
    rng = np.random.default_rng(rows)
    column = np.sort(rng.integers(1, 2**64 - 2, rows, dtype=np.uint64, endpoint=True))
    if rows > 10:
        column[rows // 2 : rows // 2 + 9] = column[rows // 2]  # a run of equal keys
    empty = _Base.empty()
    base = _Base(column, empty.number, empty.state, empty.cls, empty.record_id, 0)  # search reads `folded` only
    edges = np.array([0, 1, 2**64 - 1, 2**63], np.uint64)
    for size in (1, _TWO_LEVEL_KEYS - 1, _TWO_LEVEL_KEYS, 1000):
        keys = np.concatenate(
            [
                rng.choice(column, size // 2) if rows else edges,
                rng.integers(0, 2**64 - 1, size // 2 + 1, dtype=np.uint64, endpoint=True),
                edges,
            ]
        )
        keys = np.sort(np.concatenate([keys, keys[:3] - np.uint64(1), keys[:3] + np.uint64(1)]))
        assert base.search(keys).tolist() == column.searchsorted(keys, "left").tolist(), size


def test_manifest_lookup_of_runs_of_equal_keys_with_cancelled_rows_equals_single_lookups(
    two_levels_from_small_columns: None,
) -> None:
    # Runs of several base rows per folded key (one number under several states, its OCR variants), some of them
    # cancelled, found by many queries of one batch: each query gets its own run, without the cancelled rows.
    rng = np.random.default_rng(11)
    numbers = ["".join(rng.choice(list("0O1I5S8B"), 7)) for _ in range(300)]
    records, rid = [], 0
    for n in numbers:
        for state in rng.choice(["NZL", "FJI", "AUS", "TON"], int(rng.integers(1, 4)), replace=False):
            rid += 1
            records.append(stored(rid, str(state), n))
    # The records go to the base columns, and their cancellations (fewer than the threshold) stay dead flags.
    assert len(records) >= 400
    index = DocumentIndex(DocumentIndexSettings(merge_threshold=400))
    index.apply_columns(columns(records))
    cancelled = rng.choice(rid, rid // 5, replace=False) + 1
    key_of = {r.record_id: r.data.key for r in records}
    index.apply(
        [
            stored(int(r), key_of[r].issuing_state, key_of[r].number, status=RecordStatus.CANCELLED, seq=1000 + k)
            for k, r in enumerate(cancelled.tolist())
        ]
    )
    index.wait_idle()
    assert int(index._view.dead.sum()) == len(cancelled)  # flagged in the base columns, not merged away
    flips = str.maketrans("0O1I5S8B", "O0I1S5B8")
    asked = [n if k % 3 else n.translate(flips) for k, n in enumerate(numbers)] + ["ZZZZZZZ"]
    queries = [Lookup(["NZL", "FJI", ""][k % 3], n) for k, n in enumerate(asked)]
    single = [index.lookup(q) for q in queries]
    assert sum(len(c) > 1 for c in single) > 20  # runs of several rows were found
    assert index.lookup_many(queries) == single
    by_array = index.lookup_sparse(pa.array(asked), lambda rows: [queries[i] for i in rows])
    assert [by_array.get(i, ()) for i in range(len(queries))] == single


# -- concurrent readers -----------------------------------------------------------------------------


def test_merges_under_concurrent_checks_never_drop_a_record() -> None:
    index = DocumentIndex(DocumentIndexSettings(merge_threshold=50))
    listed = [stored(i, "NZL", f"P{i:07d}") for i in range(1, 2001)]
    index.apply_columns(columns(listed))
    queries = [Lookup("NZL", r.data.key.number) for r in listed]
    missed: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for q, answer in zip(queries, index.lookup_many(queries), strict=True):
                if not answer:
                    missed.append(q.number)
            for q in queries[::97]:
                if not index.lookup(q):
                    missed.append(q.number)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    seq = 2000
    for rid in range(2001, 6001):  # new records one at a time: the overlay fills and merges again and again
        seq += 1
        index.apply([stored(rid, "NZL", f"Q{rid:07d}", seq=seq)])
        if rid % 7 == 0:  # and cancels of new ones, flipping rows while merges run
            seq += 1
            index.apply([stored(rid, "NZL", f"Q{rid:07d}", status=RecordStatus.CANCELLED, seq=seq)])
    stop.set()
    for t in threads:
        t.join()
    index.wait_idle()
    assert missed == []
    expected = {r.record_id for r in listed} | {rid for rid in range(2001, 6001) if rid % 7}
    assert set(index.record_ids().tolist()) == expected
    assert len(index) == len(expected)


# -- snapshots --------------------------------------------------------------------------------------


def snapshot_index(tmp_path: Path, **kw: int) -> DocumentIndex:
    return DocumentIndex(DocumentIndexSettings(merge_threshold=10, snapshot_dir=tmp_path, snapshot_min_changes=1, **kw))


def test_snapshot_round_trip_answers_identically(tmp_path: Path) -> None:
    index = snapshot_index(tmp_path)
    records = [stored(i, ("NZL", "D", "FJI")[i % 3], f"S{i:05d}", status=RecordStatus.STOLEN) for i in range(1, 301)]
    index.apply_columns(columns(records))
    index.apply([stored(7, "D", "S00007", status=RecordStatus.CANCELLED, seq=301)])
    path = index.write_snapshot()
    assert path.name == "documents-000000000000301"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["sequence"] == 301 and manifest["rows"] == 299

    again = snapshot_index(tmp_path)
    assert again.load_snapshot(max_sequence=301) == 301
    assert again.sequence == 301 and len(again) == 299
    queries = [Lookup(s, f"S{i:05d}") for i in range(0, 305) for s in ("NZL", "")]
    assert again.lookup_many(queries) == index.lookup_many(queries)
    folded = again._view.base.folded
    # Mapped, not copied: a plain ndarray over the memmap (whose per-element reads cost a microsecond each).
    assert type(folded) is np.ndarray and isinstance(folded.base, np.memmap)
    # A mapped index still takes changes (into the overlay and the dead flags).
    again.apply(
        [stored(500, "NZL", "NEW500", seq=302), stored(1, "D", "S00001", status=RecordStatus.CANCELLED, seq=303)]
    )
    assert found(again, Lookup("NZL", "NEW500")) == [(MatchKind.EXACT, 500)]
    assert not again.lookup(Lookup("D", "S00001"))


def test_torn_or_stale_snapshots_are_ignored(tmp_path: Path) -> None:
    index = snapshot_index(tmp_path, snapshots_kept=5)
    index.apply_columns(columns([stored(i, "NZL", f"T{i}") for i in range(1, 21)]))
    older = index.write_snapshot()
    index.apply([stored(21, "NZL", "T21", seq=21)])
    newer = index.write_snapshot()
    assert older.name < newer.name

    fresh = snapshot_index(tmp_path)
    assert fresh.load_snapshot(max_sequence=20) == 20  # the newer one covers more than the store has
    assert fresh.load_snapshot(max_sequence=21) == 21

    with open(newer / "record_id.npy", "r+b") as f:  # a flipped byte: torn or altered
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    assert snapshot_index(tmp_path).load_snapshot(max_sequence=21) == 20
    (older / "manifest.json").unlink()  # written last: a snapshot cut off before its manifest
    assert snapshot_index(tmp_path).load_snapshot(max_sequence=21) == 0


def test_background_merge_writes_a_snapshot_when_due(tmp_path: Path) -> None:
    index = snapshot_index(tmp_path)
    for i in range(1, 30):
        index.apply([stored(i, "NZL", f"B{i}", seq=i)])
    index.wait_idle()
    snapshots = sorted(tmp_path.glob("documents-*"))
    assert snapshots, "the merge should have written a snapshot"
    assert len(snapshots) <= 2  # older ones pruned
    loaded = snapshot_index(tmp_path)
    seq = loaded.load_snapshot(max_sequence=29)
    assert 10 <= seq <= 29
    assert loaded.record_ids().tolist() == list(range(1, seq + 1))


def test_a_running_merge_counts_as_background_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import idcheck.index.documents as documents

    release = threading.Event()
    real_merge = documents._merge

    def held_merge(*args: object) -> object:
        release.wait(10)
        return real_merge(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(documents, "_merge", held_merge)
    index = snapshot_index(tmp_path)
    assert index.background_tasks() == 0
    for i in range(1, 12):  # past merge_threshold (10): a merge starts in the background
        index.apply([stored(i, "NZL", f"B{i}", seq=i)])
    assert index.background_tasks() == 1
    release.set()
    index.wait_idle()
    assert index.background_tasks() == 0
    assert sorted(tmp_path.glob("documents-*")), "the merge wrote its snapshot"


def test_snapshot_needs_a_directory() -> None:
    with pytest.raises(ValueError):
        DocumentIndex().write_snapshot()


def test_numpy_columns_load_like_python_lists() -> None:
    states = ["NZL", "D", "FJI", "GBD", "D", "NZL"]
    numbers = ["A1", "B2", "C3", "D4", "E5", "LONGNUMBER1234567"]
    records = [stored(i + 1, s, n) for i, (s, n) in enumerate(zip(states, numbers, strict=True))]
    from_lists = DocumentIndex()
    from_lists.apply_columns(columns(records))
    lists = columns(records)
    arrays = KeyColumns(
        lists.record_id,
        np.array(states),
        np.array(numbers, dtype="S24"),
        lists.document_class,
        lists.status,
        lists.sequence,
    )
    from_arrays = DocumentIndex()
    from_arrays.apply_columns(arrays)
    queries = [Lookup(s, n) for s in ("NZL", "D", "FJI", "GBD", "") for n in numbers]
    assert from_arrays.lookup_many(queries) == from_lists.lookup_many(queries)
    assert found(from_arrays, Lookup("GBD", "D4")) == [(MatchKind.EXACT, 4)]


def _byte_matrix(numbers: list[str]) -> np.ndarray:
    return np.array(numbers, dtype=f"S{PACKED_LENGTH}").view(np.uint8).reshape(-1, PACKED_LENGTH)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=PACKED_LENGTH)))
def test_exact_number_keys_are_the_number_keys_and_sort_as_the_numbers(numbers: list[str]) -> None:
    keys = exact_number_keys(_byte_matrix(numbers))
    assert keys is not None
    assert keys.tolist() == [number_key(n) for n in numbers]
    assert [numbers[i] for i in np.argsort(keys, kind="stable")] == sorted(numbers)


def test_number_keys_of_large_batches_are_each_numbers_key() -> None:
    # Large batches are packed column by column (Horner), small ones by a matrix product: both give number_key.
    rng = np.random.default_rng(7)
    alphabet = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    lengths = rng.integers(1, 25, 20_000)
    numbers = ["".join(rng.choice(alphabet, n)) for n in lengths]
    short = [n[:PACKED_LENGTH] for n in numbers]
    assert number_keys(numbers).tolist() == [number_key(n) for n in numbers]
    assert number_keys(numbers, fold=True).tolist() == [folded_number_key(n) for n in numbers]
    keys = exact_number_keys(_byte_matrix(short))
    assert keys is not None and keys.tolist() == [number_key(n) for n in short]
    late = _byte_matrix(short * 15)  # past the first block of rows checked
    late[-1, 0] = ord("-")
    assert exact_number_keys(late) is None


@pytest.mark.parametrize("bad", ["", "AB-1", "ab1", "É1"])
def test_exact_number_keys_refuse_what_they_cannot_pack(bad: str) -> None:
    matrix = _byte_matrix(["A1", "B2"])
    raw = bad.encode()
    matrix[1] = 0
    matrix[1, : len(raw)] = np.frombuffer(raw, np.uint8)
    assert exact_number_keys(matrix) is None
    gap = _byte_matrix(["A1C", "B2"])
    gap[0, 1] = 0  # "A", a zero byte, "C"
    assert exact_number_keys(gap) is None


# -- changes prepared ahead of their commit ----------------------------------------------------------


def _answers(index: DocumentIndex, records: list[StoredRecord]) -> list[list[tuple[MatchKind, int]]]:
    return [found(index, Lookup(r.data.key.issuing_state, r.data.key.number)) for r in records]


def test_prepared_new_records_stay_invisible_until_applied_then_answer_as_apply_columns() -> None:
    records = [stored(i, "NZL" if i % 3 else "FJI", f"P{i:05d}") for i in range(1, 41)]
    direct = DocumentIndex(DocumentIndexSettings(merge_threshold=10))
    direct.apply_columns(columns(records), 40)
    ahead = DocumentIndex(DocumentIndexSettings(merge_threshold=10))
    prepared = ahead.prepare_columns(columns(records))
    assert prepared.rebuilt is not None and prepared.encoded is None  # new base columns made ahead, not both
    assert len(ahead) == 0 and ahead.sequence == 0
    assert all(a == [] for a in _answers(ahead, records))
    ahead.apply_prepared(prepared, 40)
    assert (len(ahead), ahead.sequence) == (40, 40)
    assert _answers(ahead, records) == _answers(direct, records)
    assert all(a for a in _answers(ahead, records))


def test_prepared_changes_outdated_by_another_change_are_applied_to_the_index_as_it_is() -> None:
    index = DocumentIndex(DocumentIndexSettings(merge_threshold=10))
    first = [stored(i, "NZL", f"A{i:04d}") for i in range(1, 21)]
    index.apply_columns(columns(first), 20)
    batch = [stored(i, "NZL", f"B{i:04d}", seq=i) for i in range(21, 41)]
    prepared = index.prepare_columns(columns(batch))
    assert prepared.rebuilt is not None
    # Another writer gets in first: one record cancelled, one added (a cancel, a small upload).
    cancelled = stored(5, "NZL", "A0005", status=RecordStatus.CANCELLED, seq=41)
    index.apply_columns(columns([cancelled, stored(41, "NZL", "C0041", seq=42)]), 42)
    index.apply_prepared(prepared, 40)  # encoded again and applied to the columns as they are now
    assert index.sequence == 42  # never goes back
    assert found(index, Lookup("NZL", "A0005")) == []
    assert found(index, Lookup("NZL", "C0041")) == [(MatchKind.EXACT, 41)]
    assert [found(index, Lookup("NZL", r.data.key.number)) for r in batch] == [
        [(MatchKind.EXACT, r.record_id)] for r in batch
    ]
    assert len(index) == 20 - 1 + 1 + 20


def test_prepared_changes_to_records_already_indexed_keep_their_encoding_and_apply_as_apply_columns() -> None:
    records = [stored(i, "NZL", f"A{i:04d}") for i in range(1, 31)]
    changes = [stored(i, "NZL", f"A{i:04d}", status=RecordStatus.CANCELLED, seq=30 + i) for i in range(1, 11)]
    changes += [stored(i, "NZL", f"N{i:04d}", seq=i + 10) for i in range(31, 36)]
    results = []
    for ahead in (False, True):
        index = DocumentIndex(DocumentIndexSettings(merge_threshold=10))
        index.apply_columns(columns(records), 30)
        if ahead:
            prepared = index.prepare_columns(columns(changes))
            assert prepared.rebuilt is None and prepared.encoded is not None  # not all new: nothing rebuilt ahead
            index.apply_prepared(prepared, 45)
        else:
            index.apply_columns(columns(changes), 45)
        results.append((len(index), index.sequence, _answers(index, records + changes)))
    assert results[0] == results[1]
    assert results[1][0] == 30 - 10 + 5
