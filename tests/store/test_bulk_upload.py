"""The store's bulk upload path (UploadColumns): all or nothing, idempotent, REPLACE_ALL, same end state as rows."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from idcheck.icao import DocumentClass
from idcheck.records import DocumentKey, KeyColumns, RecordData, RecordStatus, validate_record
from idcheck.register.columns import accepted_from_records, key_order
from idcheck.store import RegisterStore
from idcheck.uploads import Rejection, UploadColumns, UploadMode, UploadOutcome

TODAY = dt.date(2025, 6, 1)
INCREMENTAL, REPLACE_ALL = UploadMode.INCREMENTAL, UploadMode.REPLACE_ALL
STOLEN, LOST, CANCELLED = RecordStatus.STOLEN, RecordStatus.LOST, RecordStatus.CANCELLED
PASSPORT = DocumentClass.PASSPORT


def rec(number: str, status: RecordStatus = STOLEN, *, state: str = "NZL", surname: str = "") -> RecordData:
    return validate_record(
        issuing_state=state,
        document_number=number,
        document_class=int(PASSPORT),
        status=int(status),
        event_date="2024-01-01",
        surname=surname,
        today=TODAY,
    )


def columns(records: Sequence[RecordData], first_row: int = 0) -> UploadColumns:
    """The rows as the register hands them to the store: where they came, with their key order."""
    found, duplicates = key_order(accepted_from_records(list(enumerate(records, start=first_row))))
    assert duplicates == []
    return found


def bulk(
    store: RegisterStore,
    member: str,
    upload_id: str,
    records: Sequence[RecordData],
    mode: UploadMode = INCREMENTAL,
    *,
    rejections: Sequence[Rejection] = (),
    protected: Sequence[tuple[int, DocumentKey]] = (),
) -> tuple[UploadOutcome, KeyColumns]:
    outcome, changed = store.commit_upload(
        member, upload_id, mode, "", columns(records), rejections, protected, len(records) + len(rejections)
    )
    assert isinstance(changed, KeyColumns)
    return outcome, changed


def state_of(store: RegisterStore) -> dict[tuple[str, str], tuple[str, RecordStatus, str]]:
    """Every record: (state, number) -> (owner, status, surname)."""
    return {
        (r.data.key.issuing_state, r.data.key.number): (r.owner, r.data.status, r.data.holder.surname)
        for r in store.iter_records(active_only=False)
    }


def change_log(path: Path) -> list[tuple[int, int, str, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT seq, record_id, op, status FROM change_log ORDER BY seq").fetchall()


@pytest.fixture
def store(tmp_path: Path) -> RegisterStore:
    s = RegisterStore(tmp_path / "register.db")
    yield s
    s.close()


def test_new_records_are_created_in_key_order_with_their_change_log(store: RegisterStore) -> None:
    outcome, changed = bulk(store, "NZL", "u1", [rec("C3"), rec("A1"), rec("B2", LOST, surname="SMITH")])
    assert (outcome.received, outcome.created, outcome.updated, outcome.unchanged) == (3, 3, 0, 0)
    assert outcome.register_sequence == 3 == store.last_sequence
    assert changed.number.to_pylist() == ["A1", "B2", "C3"] and changed.issuing_state.to_pylist() == ["NZL"] * 3
    assert changed.sequence.tolist() == [1, 2, 3] and changed.record_id.tolist() == [1, 2, 3]
    assert changed.status.tolist() == [int(STOLEN), int(LOST), int(STOLEN)]
    assert changed.document_class.tolist() == [int(PASSPORT)] * 3
    assert change_log(store.path) == [(1, 1, "CREATED", 2), (2, 2, "CREATED", 1), (3, 3, "CREATED", 2)]
    assert state_of(store)[("NZL", "B2")] == ("NZL", LOST, "SMITH")
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT first_seq, last_seq, accepted FROM uploads").fetchone() == (1, 3, 3)


def test_rows_naming_held_records_are_updated_unchanged_or_rejected(store: RegisterStore) -> None:
    bulk(store, "NZL", "u1", [rec("A1"), rec("B2"), rec("C3")])
    bulk(store, "FJI", "f1", [rec("F1", state="FJI")])
    rows = [rec("A1"), rec("B2", LOST), rec("D4"), rec("F1", state="FJI"), rec("C3", CANCELLED), rec("Z9", CANCELLED)]
    outcome, changed = bulk(store, "NZL", "u2", rows)
    assert (outcome.created, outcome.updated, outcome.unchanged, outcome.accepted) == (1, 2, 1, 4)
    assert [(r.row_index, r.field) for r in outcome.rejections] == [(3, "key"), (5, "status")]
    assert "another member" in outcome.rejections[0].reason
    assert "no record to cancel" in outcome.rejections[1].reason
    # created first (seq 5), then the updates in key order (B2, C3)
    assert list(zip(changed.number.to_pylist(), changed.sequence.tolist(), strict=True)) == [
        ("D4", 5),
        ("B2", 6),
        ("C3", 7),
    ]
    assert outcome.register_sequence == 7 == store.last_sequence
    after = state_of(store)
    assert after[("NZL", "B2")][1] == LOST and after[("NZL", "C3")][1] == CANCELLED
    assert after[("FJI", "F1")] == ("FJI", STOLEN, "")
    assert [op for _, _, op, _ in change_log(store.path)][-3:] == ["CREATED", "UPDATED", "CANCELLED"]


def test_bulk_and_row_paths_reach_the_same_register(tmp_path: Path) -> None:
    first = [rec(f"N{i:04d}") for i in range(300)] + [rec("SHARED")]
    second = [rec(f"N{i:04d}", LOST if i % 3 == 0 else STOLEN) for i in range(0, 400, 2)] + [rec("SHARED", state="NZL")]
    protected = [(len(second), DocumentKey("NZL", "N0299", PASSPORT))]
    rejected = [Rejection(len(second), "event_date", "bad")]
    stores = [RegisterStore(tmp_path / f"{name}.db") for name in ("rows", "bulk")]
    outcomes = []
    for store in stores:
        for upload_id, records, mode in (("a", first, INCREMENTAL), ("b", second, REPLACE_ALL)):
            if store is stores[0]:
                rows = list(enumerate(records))
                extra = (rejected, protected) if upload_id == "b" else ([], [])
                outcome, _ = store.commit_upload("NZL", upload_id, mode, "", rows, *extra, len(rows) + len(extra[0]))
            else:
                outcome, _ = bulk(
                    store,
                    "NZL",
                    upload_id,
                    records,
                    mode,
                    rejections=rejected if upload_id == "b" else (),
                    protected=protected if upload_id == "b" else (),
                )
        outcomes.append(outcome)
    rows_outcome, bulk_outcome = outcomes
    for name in ("received", "created", "updated", "unchanged", "cancelled", "register_sequence", "rejections"):
        assert getattr(rows_outcome, name) == getattr(bulk_outcome, name), name
    assert bulk_outcome.cancelled == 300 - 150 - 1  # odd numbers below 300 left out, N0299 protected
    assert state_of(stores[0]) == state_of(stores[1])
    for store in stores:
        store.close()


def test_replace_all_cancels_what_the_upload_leaves_out_and_reports_it_in_columns(store: RegisterStore) -> None:
    bulk(store, "NZL", "u1", [rec("A1"), rec("B2"), rec("C3"), rec("D4")])
    bulk(store, "FJI", "f1", [rec("X9", state="FJI")])
    outcome, changed = bulk(
        store,
        "NZL",
        "u2",
        [rec("A1"), rec("E5")],
        REPLACE_ALL,
        rejections=[Rejection(2, "event_date", "bad date")],
        protected=[(2, DocumentKey("NZL", "C3", PASSPORT))],
    )
    assert (outcome.created, outcome.unchanged, outcome.cancelled, outcome.rejected) == (1, 1, 2, 1)
    assert list(zip(changed.number.to_pylist(), changed.status.tolist(), strict=True)) == [
        ("E5", int(STOLEN)),
        ("B2", int(CANCELLED)),
        ("D4", int(CANCELLED)),
    ]
    assert changed.sequence.tolist() == [6, 7, 8] == list(range(6, 9))
    after = state_of(store)
    assert after[("NZL", "B2")][1] == after[("NZL", "D4")][1] == CANCELLED
    assert after[("NZL", "C3")][1] == after[("NZL", "A1")][1] == STOLEN
    assert after[("FJI", "X9")][1] == STOLEN
    _, history = store.get_record("NZL", DocumentKey("NZL", "B2", PASSPORT))
    assert (history[-1].operation, history[-1].reason, history[-1].upload_id) == (
        "CANCELLED",
        "not in REPLACE_ALL upload",
        "u2",
    )


def test_resent_upload_id_is_replayed_and_changes_nothing(store: RegisterStore) -> None:
    first, _ = bulk(store, "NZL", "u1", [rec("A1"), rec("B2")])
    before, log = state_of(store), change_log(store.path)
    again, changed = bulk(store, "NZL", "u1", [rec("C3"), rec("A1", LOST)], REPLACE_ALL)
    assert again.replayed and (again.created, again.register_sequence) == (first.created, first.register_sequence)
    assert len(changed) == 0
    assert state_of(store) == before and change_log(store.path) == log and store.last_sequence == 2


def test_failure_inside_the_transaction_leaves_nothing(store: RegisterStore, monkeypatch: pytest.MonkeyPatch) -> None:
    bulk(store, "NZL", "u1", [rec("A1")])
    before, log = state_of(store), change_log(store.path)

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    # after the records and the change log were written, before the upload row and the commit
    monkeypatch.setattr(RegisterStore, "_insert_upload_row", staticmethod(fail))
    with pytest.raises(OSError, match="disk full"):
        bulk(store, "NZL", "u2", [rec(f"B{i}") for i in range(5000)] + [rec("A1", LOST)], REPLACE_ALL)
    monkeypatch.undo()
    assert state_of(store) == before and change_log(store.path) == log
    assert store.last_sequence == 1 and store.find_upload("NZL", "u2") is None
    outcome, _ = bulk(store, "NZL", "u2", [rec("B1")])  # the same id applies cleanly afterwards
    assert (outcome.created, outcome.register_sequence, outcome.replayed) == (1, 2, False)


def test_a_key_held_by_the_register_falls_back_from_the_all_new_insert(store: RegisterStore) -> None:
    bulk(store, "FJI", "f1", [rec("M5000")])
    numbers = [f"M{i}" for i in range(10_000)]
    outcome, changed = bulk(store, "NZL", "u1", [rec(n) for n in numbers])
    assert (outcome.created, outcome.rejected) == (9_999, 1)
    assert len(changed) == 9_999 and "M5000" not in set(changed.number.to_pylist())
    assert np.array_equal(changed.sequence, np.arange(2, 10_001))
    assert sorted(changed.record_id.tolist()) == list(range(2, 10_001))
    assert sum(1 for owner, _, _ in state_of(store).values() if owner == "NZL") == 9_999


def test_text_with_quotes_backslashes_tabs_and_unicode_is_stored_exactly(store: RegisterStore) -> None:
    data = validate_record(
        issuing_state="nzl",
        document_number=" ab\t12-34\x0b5 ",
        document_class=int(PASSPORT),
        status=int(LOST),
        event_date="2024-02-29",
        surname='O"BRIEN \\ ŁÓDŹ',
        given_names="名 前",
        birth_date="1970-01-01",
        nationality="D<<",
        instructions='Seize; call "NCB" \\\\ 24/7 ☎',
        today=TODAY,
    )
    outcome, _ = bulk(store, "NZL", "u1", [data, rec("PLAIN")])
    assert outcome.created == 2
    stored = {r.data.key.number: r.data for r in store.iter_records()}
    assert stored["AB12345"] == data and stored["PLAIN"] == rec("PLAIN")


def test_created_records_take_one_change_log_range_and_keep_their_history(tmp_path: Path) -> None:
    path = tmp_path / "register.db"
    store = RegisterStore(path)
    bulk(store, "NZL", "u1", [rec("A1"), rec("B2", LOST), rec("C3")])
    store.cancel("NZL", [DocumentKey("NZL", "B2", PASSPORT)], "found")  # seq 4, one `changes` row
    outcome, _ = bulk(store, "NZL", "u2", [rec("A1", LOST), rec("D4")])  # D4 created at 5, A1 updated at 6
    assert outcome.register_sequence == 6
    with sqlite3.connect(path) as conn:
        ranges = conn.execute("SELECT first_seq, last_seq, first_record_id, upload_id FROM created_ranges").fetchall()
        assert ranges == [(1, 3, 1, "u1"), (5, 5, 4, "u2")]
        assert conn.execute("SELECT seq, op FROM changes ORDER BY seq").fetchall() == [(4, "CANCELLED"), (6, "UPDATED")]
    expected_log = [
        (1, 1, "CREATED", int(STOLEN)),
        (2, 2, "CREATED", int(LOST)),
        (3, 3, "CREATED", int(STOLEN)),
        (4, 2, "CANCELLED", int(CANCELLED)),
        (5, 4, "CREATED", int(STOLEN)),
        (6, 1, "UPDATED", int(LOST)),
    ]
    assert change_log(path) == expected_log
    # A record's history shows the status it was created with, whatever it is now.
    _, history = store.get_record("NZL", DocumentKey("NZL", "A1", PASSPORT))
    assert [(c.sequence, c.operation, c.status, c.upload_id) for c in history] == [
        (1, "CREATED", STOLEN, "u1"),
        (6, "UPDATED", LOST, "u2"),
    ]
    store.close()
    reopened = RegisterStore(path)  # the last sequence is found in the ranges too
    try:
        assert reopened.last_sequence == 6
        columns_since, last = reopened.key_columns(since=4)
        assert (sorted(columns_since.number), last) == (["A1", "D4"], 6)
        outcome, _ = bulk(reopened, "NZL", "u3", [rec("E5")])
        assert outcome.register_sequence == 7
        assert change_log(path)[-1] == (7, 5, "CREATED", int(STOLEN))
    finally:
        reopened.close()


def test_chunked_writes_and_matching_cross_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import idcheck.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_BULK_CHUNK", 7)  # every step of the bulk path then runs in many chunks
    first = [rec(f"K{i:03d}") for i in range(50)]
    second = [rec(f"K{i:03d}", LOST if i % 3 == 0 else STOLEN) for i in range(10, 50)]
    second += [rec(f"N{i:03d}") for i in range(5)]
    results = []
    for name in ("bulk", "rows"):
        store = RegisterStore(tmp_path / f"{name}.db")
        if name == "bulk":
            bulk(store, "NZL", "a", first)
            outcome, changed = bulk(store, "NZL", "b", second, REPLACE_ALL)
            assert len(changed) == outcome.created + outcome.updated + outcome.cancelled
            assert changed.sequence.tolist() == list(range(51, 51 + len(changed)))
        else:
            store.commit_upload("NZL", "a", INCREMENTAL, "", list(enumerate(first)), [], [], len(first))
            outcome, _ = store.commit_upload("NZL", "b", REPLACE_ALL, "", list(enumerate(second)), [], [], len(second))
        results.append(((outcome.created, outcome.updated, outcome.unchanged, outcome.cancelled), state_of(store)))
        store.close()
    assert results[0] == results[1]
    assert results[0][0] == (5, 13, 27, 10)  # 13 of K010..K049 turned LOST; K000..K009 cancelled


def test_rows_gathered_in_key_order_or_given_with_their_order_make_the_same_register(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import idcheck.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_BULK_CHUNK", 5)  # several chunks, each gathered in the JSON thread
    first = [rec(f"K{(i * 7) % 23:03d}", surname="S" if i % 4 == 0 else "") for i in range(23)]
    second = [rec(f"K{i:03d}", LOST if i % 2 else STOLEN) for i in range(5, 30, 2)]
    results = []
    for gathered in (False, True):
        store = RegisterStore(tmp_path / f"{gathered}.db")
        for upload_id, rows, mode in (("a", first, INCREMENTAL), ("b", second, REPLACE_ALL)):
            given = columns(rows)
            assert given.order is not None
            if gathered:
                given = UploadColumns(given.in_key_order())
            store.commit_upload("NZL", upload_id, mode, "", given, [], [], len(rows))
        results.append((state_of(store), change_log(store.path)))
        store.close()
    assert results[0] == results[1]
    final = results[0][0]
    assert final[("NZL", "K000")] == ("NZL", CANCELLED, "S")  # not in the REPLACE_ALL upload
    assert (final[("NZL", "K005")], final[("NZL", "K029")]) == (("NZL", LOST, ""), ("NZL", LOST, ""))


def test_a_background_checkpoint_counts_as_background_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import idcheck.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_BACKGROUND_CHECKPOINT_ROWS", 20)
    store = RegisterStore(tmp_path / "register.db")
    try:
        release = threading.Event()
        real_run = store._checkpointer._run
        monkeypatch.setattr(store._checkpointer, "_run", lambda: (release.wait(10), real_run()))
        assert store.background_tasks() == 0
        bulk(store, "NZL", "big", [rec(f"B{i:04d}") for i in range(100)])
        assert store.background_tasks() == 1
        release.set()
        store._checkpointer.wait()
        assert store.background_tasks() == 0 and store._checkpointer.done == 1
    finally:
        store.close()


def _records_in_copy(files: dict[str, Path], tmp: Path) -> int:
    """Records in a copy of the given database files (as a crash would leave them), opened afresh."""
    tmp.mkdir()
    for suffix, source in files.items():
        (tmp / f"copy.db{suffix}").write_bytes(source.read_bytes())
    with sqlite3.connect(tmp / "copy.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM records").fetchone()[0])


def test_a_big_upload_is_durable_in_the_wal_and_reaches_the_file_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import idcheck.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_BACKGROUND_CHECKPOINT_ROWS", 20)
    monkeypatch.setattr(sqlite_store, "_AUTOCHECKPOINT_PAGES", 1)  # any commit would checkpoint, as a big one does
    path = tmp_path / "register.db"
    store = RegisterStore(path)
    store._conn.execute("PRAGMA wal_autocheckpoint=1")
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the schema into the file: only the upload in the WAL
    try:
        started: list[bool] = []
        monkeypatch.setattr(store._checkpointer, "start", lambda: started.append(True))  # held back, as if slow
        bulk(store, "NZL", "big", [rec(f"B{i:04d}") for i in range(1000)])
        assert started == [True]
        assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1  # restored for small ones
        wal = path.with_name(path.name + "-wal")
        # Acknowledged: a crash now (the file and its WAL as they are) loses nothing ...
        assert _records_in_copy({"": path, "-wal": wal}, tmp_path / "crash") == 1000
        # ... though the database file alone does not hold the upload yet.
        assert _records_in_copy({"": path}, tmp_path / "file-only") == 0
        monkeypatch.undo()
        store._checkpointer.start()
        store._checkpointer.wait()
        assert (store._checkpointer.done, store._checkpointer.failed) == (1, 0)
        assert _records_in_copy({"": path}, tmp_path / "checkpointed") == 1000
        outcome, _ = bulk(store, "NZL", "small", [rec("S1")])  # below the threshold: SQLite's own checkpoint
        assert outcome.created == 1 and store._checkpointer.done == 1
    finally:
        store.close()


def test_lean_rows_and_json_rows_store_the_same_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads without optional text go through the lean encoding (substr() of one string per row, the state a
    parameter per run); every column of every record must be what the general JSON rows store."""
    import idcheck.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_BULK_CHUNK", 7)  # state runs and printed-number forms change inside chunks

    def one(i: int) -> RecordData:
        printed = f"AB-{i:03d} 7" if i % 5 == 0 else f"AB{i:03d}7"  # some chunks print numbers with fillers
        return validate_record(
            issuing_state=("D", "NZL", "FJI", "UTO")[i % 4] if i < 30 else "NZL",
            document_number=printed,
            document_class=int((DocumentClass.PASSPORT, DocumentClass.ID_CARD, DocumentClass.VISA)[i % 3]),
            status=int((STOLEN, LOST, RecordStatus.REVOKED)[i % 3]),
            event_date=f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}",
            today=TODAY,
        )

    first = [one(i) for i in range(60)]
    second = [one(i) for i in range(40, 90)]  # 20 held, 30 new
    real = sqlite_store._lean_batches
    calls: list[bool] = []

    def counted(part: object) -> object:
        calls.append(True)
        return real(part)

    dumps = []
    for lean in (True, False):
        calls.clear()
        monkeypatch.setattr(sqlite_store, "_lean_batches", counted if lean else (lambda part: None))
        store = RegisterStore(tmp_path / f"{lean}.db")
        bulk(store, "NZL", "a", first)
        bulk(store, "NZL", "b", second)
        store.close()
        assert bool(calls) == lean
        with sqlite3.connect(tmp_path / f"{lean}.db") as conn:
            rows = conn.execute(
                "SELECT record_id, issuing_state, number_canonical, doc_class, number_printed, owner, status, "
                "created_status, event_date, surname, seq, typeof(doc_class), typeof(status), typeof(created_status) "
                "FROM records ORDER BY record_id"
            ).fetchall()
        dumps.append([row[:5] + row[6:] for row in rows])  # owner column aside (same member)
    lean_rows, json_rows = dumps
    assert lean_rows == json_rows
    assert len(lean_rows) == 90
    assert lean_rows[0][1:5] == ("D", "AB0007", 1, "AB-000 7")  # printed form kept, state of one letter
    assert {row[-3:] for row in lean_rows} == {("integer", "integer", "integer")}


def test_an_upload_that_arrived_in_many_batches_is_written_as_one_that_arrived_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store makes a many-chunk upload table one array per column before taking rows from it."""
    import pyarrow as pa

    import idcheck.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_BULK_CHUNK", 5)
    first = [rec(f"K{(i * 7) % 23:03d}", LOST if i % 3 else STOLEN) for i in range(23)]
    second = [rec(f"K{i:03d}", LOST if i % 2 else STOLEN) for i in range(5, 30, 2)]
    results = []
    for batches in (1, 4):
        store = RegisterStore(tmp_path / f"{batches}.db")
        for upload_id, rows, mode in (("a", first, INCREMENTAL), ("b", second, REPLACE_ALL)):
            given = columns(rows)
            step = -(-given.table.num_rows // batches)
            table = pa.concat_tables([given.table.slice(s, step) for s in range(0, given.table.num_rows, step)])
            assert table.column(0).num_chunks == batches
            outcome, changed = store.commit_upload(
                "NZL", upload_id, mode, "", UploadColumns(table, given.order), [], [], len(rows)
            )
            results.append((outcome.created, outcome.updated, outcome.cancelled, changed.number.to_pylist()))
        results.append((state_of(store), change_log(store.path)))
        store.close()
    assert results[:3] == results[3:]
    # K000..K004 and the even numbers K006..K022 are cancelled: 14 of the 23
    assert results[0][:3] == (23, 0, 0) and results[1][2] == 14


def _key_rows(changed: KeyColumns) -> list[tuple[int, str, str, int, int]]:
    return [
        (int(i), str(s), str(n), int(st), int(q))
        for i, s, n, st, q in zip(
            changed.record_id,
            list(changed.issuing_state),
            list(changed.number),
            changed.status,
            changed.sequence,
            strict=True,
        )
    ]


def test_prepare_gets_an_all_new_uploads_changes_while_its_rows_are_inserted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import idcheck.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_BULK_CHUNK", 7)  # a "big" upload: several chunks
    store = RegisterStore(tmp_path / "register.db")
    given: list[tuple[KeyColumns, str, int]] = []

    def prepare(changes: KeyColumns) -> None:
        # Called beside the inserts, before the commit: a reader sees no record yet.
        with sqlite3.connect(store.path) as reader:
            (held,) = reader.execute("SELECT COUNT(*) FROM records").fetchone()
        given.append((changes, threading.current_thread().name, held))

    try:
        first = [rec(f"K{i:03d}", LOST if i % 4 == 0 else STOLEN) for i in range(30)]
        outcome, changed = store.commit_upload(
            "NZL", "a", INCREMENTAL, "", columns(first), [], [], len(first), prepare=prepare
        )
        assert outcome.created == 30
        assert len(given) == 1 and given[0][0] is changed  # the very object prepared is the one returned
        assert given[0][1].startswith("bulk-ahead") and given[0][2] == 0
        assert _key_rows(changed) == [
            (i + 1, "NZL", f"K{i:03d}", int(LOST if i % 4 == 0 else STOLEN), i + 1) for i in range(30)
        ]
        # Some keys already held: the rows are matched instead, and the changes returned are not what prepare
        # may have been given (whether it was depends on how far the inserts got first).
        given.clear()
        second = [rec(f"K{i:03d}", LOST) for i in range(25, 30)] + [rec(f"M{i:03d}") for i in range(10)]
        outcome, changed = store.commit_upload(
            "NZL", "b", INCREMENTAL, "", columns(second), [], [], len(second), prepare=prepare
        )
        assert (outcome.created, outcome.updated, outcome.unchanged) == (10, 4, 1)  # K028 was LOST already
        assert all(changes is not changed for changes, _, _ in given)
        assert [r[2] for r in _key_rows(changed)] == [f"M{i:03d}" for i in range(10)] + ["K025", "K026", "K027", "K029"]
        # Every key held (the first upload sent again as REPLACE_ALL): the first chunk fails, nothing is prepared.
        given.clear()
        outcome, changed = store.commit_upload(
            "NZL", "c", REPLACE_ALL, "", columns(first), [], [], len(first), prepare=prepare
        )
        assert given == []
        assert (outcome.unchanged, outcome.updated, outcome.cancelled) == (26, 4, 10)  # K025..K029 back but K028
        assert len(changed) == 4 + 10
    finally:
        store.close()


def test_a_failing_prepare_does_not_fail_the_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import idcheck.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_BULK_CHUNK", 7)

    def prepare(changes: KeyColumns) -> None:
        raise RuntimeError("index trouble")

    store = RegisterStore(tmp_path / "register.db")
    try:
        records = [rec(f"K{i:03d}") for i in range(20)]
        outcome, changed = store.commit_upload(
            "NZL", "a", INCREMENTAL, "", columns(records), [], [], len(records), prepare=prepare
        )
        assert outcome.created == 20 and len(changed) == 20
        assert [r[2] for r in _key_rows(changed)] == [f"K{i:03d}" for i in range(20)]
        assert "preparing a bulk upload's changes ahead failed" in caplog.text
        assert len(list(store.iter_records())) == 20
    finally:
        store.close()


def test_records_of_bulk_uploads_are_found_by_sequence_and_owner_without_their_indexes(tmp_path: Path) -> None:
    """Records a bulk upload creates are in neither the seq nor the owner index (schema 8 -> 9): whatever mix of
    bulk uploads, row uploads, updates and cancellations made the register, the records changed after any
    sequence (feed pages of any size, index catch-up) and a member's records (REPLACE_ALL) are exactly those a
    full read of the table finds."""
    store = RegisterStore(tmp_path / "register.db")
    try:
        bulk(store, "NZL", "a", [rec(f"A{i:03d}") for i in range(40)])
        bulk(store, "AUS", "b", [rec(f"B{i:03d}", state="AUS") for i in range(30)])
        rows = list(enumerate([rec("A005", LOST), rec("R001"), rec("R002")]))
        store.commit_upload("NZL", "c", INCREMENTAL, "", rows, [], [], len(rows))  # the row path: `changes` rows
        bulk(store, "NZL", "d", [rec(f"A{i:03d}", LOST) for i in range(10, 15)] + [rec("D001")])
        store.cancel("NZL", [DocumentKey("NZL", "A020", PASSPORT), DocumentKey("NZL", "R001", PASSPORT)], "found")
        bulk(store, "AUS", "e", [rec(f"B{i:03d}", LOST, state="AUS") for i in range(25, 35)])
        with sqlite3.connect(tmp_path / "register.db") as conn:
            in_seq_index = conn.execute(
                "SELECT COUNT(*) FROM records INDEXED BY records_seq WHERE created_status IS NULL AND seq > 0"
            ).fetchone()[0]
            everything = conn.execute("SELECT record_id, seq, owner FROM records").fetchall()
        assert in_seq_index == 2  # R001, R002: the rest came by bulk upload
        last = store.last_sequence
        assert last == max(seq for _, seq, _ in everything)
        for after in range(last + 1):
            expected = sorted((seq, rid) for rid, seq, _ in everything if seq > after)
            changed, covered = store.key_columns(since=after) if after else (None, last)
            assert covered == last
            if changed is not None:
                assert list(zip(changed.sequence.tolist(), changed.record_id.tolist(), strict=True)) == expected
            for limit in (1, 3, 1000):
                with store.feed_view() as view:
                    page = view.changed_rows(after, limit)
                assert [(row[-1], row[0]) for row in page] == expected[:limit]

        before = state_of(store)
        outcome, _ = bulk(store, "NZL", "f", [rec(f"A{i:03d}") for i in range(0, 40, 2)], REPLACE_ALL)
        after_replace = state_of(store)
        nzl_active = [k for k, (owner, status, _) in before.items() if owner == "NZL" and status != CANCELLED]
        kept = {("NZL", f"A{i:03d}") for i in range(0, 40, 2)}
        assert outcome.cancelled == len([k for k in nzl_active if k not in kept])
        for key, (owner, status, _) in after_replace.items():
            if owner == "AUS":
                assert (owner, status) == before[key][:2]  # another member's records untouched
            elif key not in kept:
                assert status == CANCELLED
    finally:
        store.close()


def test_a_version_8_register_moves_its_bulk_records_out_of_the_seq_and_owner_indexes(tmp_path: Path) -> None:
    from idcheck.store.schema import migrate

    path = tmp_path / "register.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, up_to=8)
    conn.close()
    store = RegisterStore(path)  # migrates to the current version
    try:
        bulk(store, "NZL", "a", [rec(f"A{i:03d}") for i in range(10)])
        assert store.count_records() == {"STOLEN": 10}
        store.cancel("NZL", [DocumentKey("NZL", "A003", PASSPORT)], "found")
        assert store.count_records() == {"STOLEN": 9, "CANCELLED": 1}  # counted again after the change
        with store.feed_view() as view:
            assert [row[-1] for row in view.changed_rows(0, 100)] == [*range(1, 4), *range(5, 12)]
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        sql = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'").fetchall())
    assert "WHERE created_status IS NULL" in sql["records_seq"]
    assert "WHERE created_status IS NULL" in sql["records_owner"]
