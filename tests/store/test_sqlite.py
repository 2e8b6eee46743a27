"""The durable register: uploads, cancels, history and the change log in a real SQLite file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest

from idcheck.icao import DocumentClass
from idcheck.records import (
    DocumentKey,
    Holder,
    KeyColumns,
    RecordData,
    RecordStatus,
    StoredRecord,
    validate_record,
)
from idcheck.store import AmbiguousKey, NotOwner, RecordNotFound, RegisterStore
from idcheck.store.sqlite import PAGE_SIZE
from idcheck.uploads import Rejection, UploadMode, UploadOutcome

TODAY = dt.date(2025, 6, 1)
INCREMENTAL, REPLACE_ALL = UploadMode.INCREMENTAL, UploadMode.REPLACE_ALL
STOLEN, LOST, CANCELLED = RecordStatus.STOLEN, RecordStatus.LOST, RecordStatus.CANCELLED
PASSPORT, ID_CARD = DocumentClass.PASSPORT, DocumentClass.ID_CARD


def rec(
    number: str,
    status: RecordStatus = STOLEN,
    *,
    state: str = "NZL",
    cls: DocumentClass = PASSPORT,
    event: str = "2024-01-01",
    instructions: str = "",
) -> RecordData:
    return validate_record(
        issuing_state=state,
        document_number=number,
        document_class=int(cls),
        status=int(status),
        event_date=event,
        instructions=instructions,
        today=TODAY,
    )


def key(number: str, *, state: str = "NZL", cls: DocumentClass = PASSPORT) -> DocumentKey:
    return DocumentKey(state, number, cls)


def upload(
    store: RegisterStore,
    member: str,
    upload_id: str,
    records: Sequence[RecordData],
    mode: UploadMode = INCREMENTAL,
    *,
    rejections: Sequence[Rejection] = (),
    protected: Sequence[tuple[int, DocumentKey]] = (),
    description: str = "",
) -> UploadOutcome:
    """Commit `records` as rows 0..n-1, followed by the rows of `rejections` (indexed by the caller)."""
    rows = list(enumerate(records))
    outcome, changed = store.commit_upload(
        member, upload_id, mode, description, rows, rejections, protected, len(rows) + len(rejections)
    )
    assert [r.sequence for r in changed] == sorted(r.sequence for r in changed)
    return outcome


def state_of(store: RegisterStore) -> dict[tuple[str, str, int], tuple[str, RecordStatus, int]]:
    """Every record (cancelled included): key -> (owner, status, sequence)."""
    return {
        (r.data.key.issuing_state, r.data.key.number, int(r.data.key.document_class)): (
            r.owner,
            r.data.status,
            r.sequence,
        )
        for r in store.iter_records(active_only=False)
    }


def change_seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [s for (s,) in conn.execute("SELECT seq FROM change_log ORDER BY seq")]


@pytest.fixture
def store(tmp_path: Path) -> RegisterStore:
    s = RegisterStore(tmp_path / "register.db")
    yield s
    s.close()


# -- uploads ------------------------------------------------------------------------------------------


def test_new_rows_are_created_with_sequence_numbers_in_row_order(store: RegisterStore) -> None:
    rows = [rec("C3"), rec("A1"), rec("B2", LOST)]
    outcome, changed = store.commit_upload("NZL", "u1", INCREMENTAL, "first", list(enumerate(rows)), [], [], 3)
    assert (outcome.received, outcome.accepted, outcome.created, outcome.updated, outcome.unchanged) == (3, 3, 3, 0, 0)
    assert outcome.cancelled == 0 and outcome.rejections == () and not outcome.replayed
    assert outcome.register_sequence == 3 == store.last_sequence
    assert [(r.data.key.number, r.sequence, r.owner) for r in changed] == [
        ("C3", 1, "NZL"),
        ("A1", 2, "NZL"),
        ("B2", 3, "NZL"),
    ]
    assert change_seqs(store.path) == [1, 2, 3]


def test_reupload_counts_created_updated_and_unchanged(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2"), rec("C3")])
    rows = [rec("A1"), rec("B2", LOST), rec("D4"), rec("C3", instructions="Seize it.")]
    outcome, changed = store.commit_upload("NZL", "u2", INCREMENTAL, "", list(enumerate(rows)), [], [], 4)
    assert (outcome.created, outcome.updated, outcome.unchanged, outcome.accepted) == (1, 2, 1, 4)
    # Unchanged rows consume no sequence number; the others are numbered in row order.
    assert [(r.data.key.number, r.sequence) for r in changed] == [("B2", 4), ("D4", 5), ("C3", 6)]
    assert outcome.register_sequence == 6 == store.last_sequence
    assert state_of(store)[("NZL", "B2", 1)] == ("NZL", LOST, 4)
    assert state_of(store)[("NZL", "A1", 1)] == ("NZL", STOLEN, 1)
    assert change_seqs(store.path) == [1, 2, 3, 4, 5, 6]


def test_identical_reupload_changes_nothing(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2")])
    outcome, changed = store.commit_upload(
        "NZL", "u2", INCREMENTAL, "", list(enumerate([rec("A1"), rec("B2")])), [], [], 2
    )
    assert (outcome.created, outcome.updated, outcome.unchanged) == (0, 0, 2)
    assert changed == []
    assert outcome.register_sequence == 2 == store.last_sequence


def test_same_number_under_two_classes_or_states_is_two_records(store: RegisterStore) -> None:
    outcome = upload(store, "NZL", "u1", [rec("A1"), rec("A1", cls=ID_CARD), rec("A1", state="D")])
    assert outcome.created == 3
    assert len(state_of(store)) == 3


def test_replace_all_cancels_only_the_members_records_left_out(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2"), rec("C3"), rec("D4")])
    upload(store, "FJI", "f1", [rec("X9", state="FJI"), rec("Y8", state="FJI")])
    before = state_of(store)
    # Row 0 keeps A1; row 1 was rejected before the store but its key (C3) is protected; B2 and D4 are left out.
    outcome, changed = store.commit_upload(
        "NZL",
        "u3",
        REPLACE_ALL,
        "full list",
        [(0, rec("A1"))],
        [Rejection(1, "event_date", "bad date")],
        [(1, key("C3"))],
        2,
    )
    assert outcome.cancelled == 2
    assert (outcome.accepted, outcome.unchanged, outcome.rejected) == (1, 1, 1)
    after = state_of(store)
    assert after[("NZL", "B2", 1)][:2] == ("NZL", CANCELLED)
    assert after[("NZL", "D4", 1)][:2] == ("NZL", CANCELLED)
    assert after[("NZL", "A1", 1)] == before[("NZL", "A1", 1)]
    assert after[("NZL", "C3", 1)] == before[("NZL", "C3", 1)]
    assert after[("FJI", "X9", 1)] == before[("FJI", "X9", 1)]
    assert after[("FJI", "Y8", 1)] == before[("FJI", "Y8", 1)]
    assert sorted(r.sequence for r in changed) == [7, 8]
    assert outcome.register_sequence == 8 == store.last_sequence
    _, history = store.get_record("NZL", key("B2"))
    assert [(c.operation, c.status, c.upload_id, c.reason) for c in history][-1] == (
        "CANCELLED",
        CANCELLED,
        "u3",
        "not in REPLACE_ALL upload",
    )
    assert change_seqs(store.path) == list(range(1, 9))


def test_replace_all_does_not_cancel_again_what_is_already_cancelled(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2")])
    store.cancel("NZL", [key("B2")], "recovered")
    outcome = upload(store, "NZL", "u2", [rec("A1")], REPLACE_ALL)
    assert outcome.cancelled == 0
    assert outcome.register_sequence == 3 == store.last_sequence


def test_replace_all_numbers_rows_before_cancels(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2")])
    outcome, changed = store.commit_upload(
        "NZL", "u2", REPLACE_ALL, "", [(0, rec("C3")), (1, rec("A1", LOST))], [], [], 2
    )
    assert (outcome.created, outcome.updated, outcome.cancelled) == (1, 1, 1)
    assert [(r.data.key.number, r.data.status, r.sequence) for r in changed] == [
        ("C3", STOLEN, 3),
        ("A1", LOST, 4),
        ("B2", CANCELLED, 5),
    ]
    assert change_seqs(store.path) == [1, 2, 3, 4, 5]


def test_rows_touching_another_members_record_are_rejected_on_key(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1")])
    before = state_of(store)
    outcome = upload(store, "FJI", "f1", [rec("F1", state="FJI"), rec("A1", LOST), rec("A1", CANCELLED, cls=PASSPORT)])
    assert outcome.created == 1
    assert [(r.row_index, r.field) for r in outcome.rejections] == [(1, "key"), (2, "key")]
    assert state_of(store)[("NZL", "A1", 1)] == before[("NZL", "A1", 1)]
    assert outcome.register_sequence == 2


def test_replace_all_by_another_member_leaves_foreign_records_alone(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1")])
    outcome = upload(store, "FJI", "f1", [rec("A1")], REPLACE_ALL)
    assert outcome.cancelled == 0
    assert [r.field for r in outcome.rejections] == ["key"]
    assert state_of(store)[("NZL", "A1", 1)] == ("NZL", STOLEN, 1)


def test_cancelled_row_for_unknown_record_is_rejected(store: RegisterStore) -> None:
    outcome = upload(store, "NZL", "u1", [rec("A1"), rec("ZZ99", CANCELLED)])
    assert outcome.created == 1
    assert [(r.row_index, r.field) for r in outcome.rejections] == [(1, "status")]
    assert ("NZL", "ZZ99", 1) not in state_of(store)


def test_cancelled_row_for_own_record_cancels_it(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1")])
    outcome = upload(store, "NZL", "u2", [rec("A1", CANCELLED)], description="recovered")
    assert (outcome.updated, outcome.register_sequence) == (1, 2)
    _, history = store.get_record("NZL", key("A1"))
    assert [(c.sequence, c.operation, c.status) for c in history] == [
        (1, "CREATED", STOLEN),
        (2, "CANCELLED", CANCELLED),
    ]
    assert history[1].reason == "recovered"


def test_cancelled_record_can_be_listed_again_by_its_owner(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1")])
    store.cancel("NZL", [key("A1")], "recovered")
    outcome = upload(store, "NZL", "u2", [rec("A1", LOST)])
    assert outcome.updated == 1
    _, history = store.get_record("NZL", key("A1"))
    assert [c.operation for c in history] == ["CREATED", "CANCELLED", "UPDATED"]


def test_rejections_from_before_the_store_are_merged_in_row_order(store: RegisterStore) -> None:
    upload(store, "FJI", "f1", [rec("A1")])
    outcome, _ = store.commit_upload(
        "NZL",
        "u1",
        INCREMENTAL,
        "",
        [(0, rec("B2")), (2, rec("A1")), (4, rec("C3"))],
        [Rejection(3, "event_date", "bad"), Rejection(1, "status", "bad")],
        [],
        5,
    )
    assert [(r.row_index, r.field) for r in outcome.rejections] == [(1, "status"), (2, "key"), (3, "event_date")]
    assert (outcome.received, outcome.accepted, outcome.rejected) == (5, 2, 3)


def test_replayed_upload_id_returns_the_stored_outcome_and_changes_nothing(store: RegisterStore) -> None:
    first = upload(store, "NZL", "u1", [rec("A1"), rec("B2")], rejections=[Rejection(2, "status", "bad")])
    before = state_of(store)
    again, changed = store.commit_upload(
        "NZL", "u1", REPLACE_ALL, "", [(0, rec("C3")), (1, rec("A1", LOST))], [], [], 2
    )
    assert again.replayed and not first.replayed
    assert again == dataclasses.replace(first, replayed=True)
    assert changed == []
    assert state_of(store) == before
    assert store.last_sequence == 2
    assert change_seqs(store.path) == [1, 2]
    assert store.find_upload("NZL", "u1") == again
    assert store.find_upload("NZL", "nope") is None


def test_same_upload_id_from_another_member_is_not_a_replay(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1")])
    outcome = upload(store, "FJI", "u1", [rec("F1", state="FJI")])
    assert not outcome.replayed and outcome.created == 1
    assert store.find_upload("FJI", "u1") == UploadOutcome.from_json(outcome.to_json(), replayed=True)


def test_failed_upload_leaves_nothing_and_the_store_usable(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1")])
    # Two rows with one key never reach the store from the register; here they break the UNIQUE constraint.
    with pytest.raises(sqlite3.IntegrityError):
        store.commit_upload("NZL", "u2", REPLACE_ALL, "", [(0, rec("B2")), (1, rec("B2"))], [], [], 2)
    assert state_of(store) == {("NZL", "A1", 1): ("NZL", STOLEN, 1)}
    assert store.last_sequence == 1
    assert store.find_upload("NZL", "u2") is None
    outcome = upload(store, "NZL", "u2", [rec("B2")])
    assert (outcome.created, outcome.register_sequence, outcome.replayed) == (1, 2, False)
    assert change_seqs(store.path) == [1, 2]


# -- cancel -------------------------------------------------------------------------------------------


def test_cancel_changes_own_records_in_key_order(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2"), rec("C3")])
    outcome = store.cancel("NZL", [key("C3"), key("A1")], "recovered")
    assert (outcome.cancelled, outcome.already_cancelled, outcome.register_sequence) == (2, 0, 5)
    assert [(r.data.key.number, r.sequence, r.data.status) for r in outcome.changed] == [
        ("C3", 4, CANCELLED),
        ("A1", 5, CANCELLED),
    ]
    assert store.last_sequence == 5
    assert state_of(store)[("NZL", "B2", 1)] == ("NZL", STOLEN, 2)


def test_cancel_of_already_cancelled_record_is_counted_and_takes_no_sequence(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2")])
    store.cancel("NZL", [key("A1")], "recovered")
    outcome = store.cancel("NZL", [key("A1"), key("B2"), key("B2")], "recovered")
    assert (outcome.cancelled, outcome.already_cancelled, outcome.register_sequence) == (1, 1, 4)
    assert change_seqs(store.path) == [1, 2, 3, 4]


def test_cancel_is_all_or_nothing_when_a_key_belongs_to_another_member(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1")])
    upload(store, "FJI", "f1", [rec("F1", state="FJI")])
    before = state_of(store)
    with pytest.raises(NotOwner) as exc:
        store.cancel("NZL", [key("A1"), key("F1", state="FJI")], "mine")
    assert exc.value.field == "keys[1]"
    assert state_of(store) == before
    assert store.last_sequence == 2
    assert change_seqs(store.path) == [1, 2]


def test_cancel_is_all_or_nothing_when_a_key_is_unknown(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2")])
    before = state_of(store)
    with pytest.raises(RecordNotFound) as exc:
        store.cancel("NZL", [key("A1"), key("B2"), key("Q7")], "gone")
    assert exc.value.field == "keys[2]"
    assert state_of(store) == before
    assert store.last_sequence == 2


def test_cancel_without_class_is_ambiguous_when_two_classes_match(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("A1", cls=ID_CARD), rec("B2")])
    before = state_of(store)
    with pytest.raises(AmbiguousKey) as exc:
        store.cancel("NZL", [key("B2", cls=DocumentClass.UNSPECIFIED), key("A1", cls=DocumentClass.UNSPECIFIED)], "x")
    assert exc.value.field == "keys[1].document_class"
    assert state_of(store) == before
    # With the class it is precise; without a class a single record is found.
    outcome = store.cancel("NZL", [key("A1", cls=ID_CARD), key("B2", cls=DocumentClass.UNSPECIFIED)], "x")
    assert outcome.cancelled == 2
    assert state_of(store)[("NZL", "A1", 1)][1] == STOLEN
    assert state_of(store)[("NZL", "A1", 2)][1] == CANCELLED


# -- reading ------------------------------------------------------------------------------------------


def test_get_record_returns_the_record_and_its_history(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1")], description="daily")
    upload(store, "NZL", "u2", [rec("A1", LOST)])
    store.cancel("NZL", [key("A1")], "document recovered")
    record, history = store.get_record("NZL", key("A1"))
    assert record.owner == "NZL" and record.data.status == CANCELLED and record.sequence == 3
    assert [(c.sequence, c.operation, c.status, c.actor, c.upload_id, c.reason) for c in history] == [
        (1, "CREATED", STOLEN, "NZL", "u1", "daily"),
        (2, "UPDATED", LOST, "NZL", "u2", ""),
        (3, "CANCELLED", CANCELLED, "NZL", "", "document recovered"),
    ]
    assert all(c.changed_at.endswith("Z") for c in history)


def test_records_read_back_equal_what_was_uploaded_field_for_field(store: RegisterStore) -> None:
    # Records read for a check are built with tuple.__new__ (store/sqlite.py `_row_to_record`), which skips the
    # NamedTuples' own argument checks: a field added to one of them and not read here fails this comparison.
    with_holder = validate_record(
        issuing_state="NZL",
        document_number="H1",
        document_class=int(PASSPORT),
        status=int(STOLEN),
        event_date="2024-01-01",
        surname="ERIKSSON",
        given_names="ANNA MARIA",
        birth_date="1974-08-12",
        nationality="UTO",
        expiry_date="2030-04-15",
        instructions="seize the document",
        today=TODAY,
    )
    upload(store, "NZL", "u1", [with_holder, rec("P1", LOST, cls=ID_CARD)])
    by_id = store.records_by_ids([1, 2])
    assert [by_id[1].data, by_id[2].data] == [with_holder, rec("P1", LOST, cls=ID_CARD)]
    for r in by_id.values():
        assert r == StoredRecord(*r) and r.data == RecordData(*r.data)
        assert r.data.key == DocumentKey(*r.data.key) and r.data.holder == Holder(*r.data.holder)
    assert [(r.record_id, r.owner, r.sequence) for r in by_id.values()] == [(1, "NZL", 1), (2, "NZL", 2)]
    assert by_id[2].data.holder == Holder()


def test_get_record_of_another_member_is_refused(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1")])
    with pytest.raises(NotOwner):
        store.get_record("FJI", key("A1"))
    with pytest.raises(RecordNotFound):
        store.get_record("NZL", key("A2"))


def key_rows(columns: KeyColumns) -> list[tuple[str, int, int]]:
    rows = zip(columns.number, columns.status.tolist(), columns.sequence.tolist(), strict=True)
    return sorted(((n, RecordStatus(st), q) for n, st, q in rows), key=lambda r: r[2])


def test_key_columns_give_current_state_of_records_changed_since_a_sequence(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2"), rec("C3")])
    upload(store, "NZL", "u2", [rec("A1", LOST)])
    store.cancel("NZL", [key("B2")], "x")
    columns, last = store.key_columns(since=3)
    assert last == 5
    assert key_rows(columns) == [("A1", LOST, 4), ("B2", CANCELLED, 5)]
    assert key_rows(store.key_columns(since=5)[0]) == []
    # From the beginning: the records that can hit, as an index is loaded.
    assert key_rows(store.key_columns()[0]) == [("C3", STOLEN, 3), ("A1", LOST, 4)]


def test_iter_records_skips_cancelled_by_default(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2"), rec("C3", LOST)])
    store.cancel("NZL", [key("B2")], "x")
    assert [r.data.key.number for r in store.iter_records()] == ["A1", "C3"]
    assert [r.data.key.number for r in store.iter_records(active_only=False)] == ["A1", "B2", "C3"]
    assert store.count_records() == {"STOLEN": 1, "LOST": 1, "CANCELLED": 1}


def test_record_counts_are_counted_again_only_after_a_change(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec("A1"), rec("B2"), rec("C3", LOST)])
    statements: list[str] = []
    store._reader().set_trace_callback(statements.append)
    try:
        assert store.count_records() == {"STOLEN": 2, "LOST": 1}
        assert store.count_records() == {"STOLEN": 2, "LOST": 1}
        assert sum("FILTER (WHERE status" in s for s in statements) == 1  # the second answer came from the cache
        upload(store, "NZL", "u2", [rec("A1"), rec("B2")])  # unchanged rows: no new sequence, same counts
        assert store.count_records() == {"STOLEN": 2, "LOST": 1}
        assert sum("FILTER (WHERE status" in s for s in statements) == 1
        store.cancel("NZL", [key("B2")], "recovered")
        assert store.count_records() == {"STOLEN": 1, "LOST": 1, "CANCELLED": 1}
        # a change made through another store on the same file (another worker process) is seen too
        other = RegisterStore(store.path)
        try:
            upload(other, "NZL", "u3", [rec("D4", RecordStatus.REVOKED)])
        finally:
            other.close()
        assert store.count_records() == {"STOLEN": 1, "LOST": 1, "CANCELLED": 1, "REVOKED": 1}
        assert sum("FILTER (WHERE status" in s for s in statements) == 3
    finally:
        store._reader().set_trace_callback(None)


def test_change_log_has_no_gaps_after_mixed_changes(store: RegisterStore) -> None:
    upload(store, "NZL", "u1", [rec(f"N{i}") for i in range(10)])
    upload(store, "FJI", "f1", [rec(f"F{i}", state="FJI") for i in range(5)])
    upload(store, "NZL", "u2", [rec("N1"), rec("N2", LOST), rec("N11")], REPLACE_ALL)
    store.cancel("FJI", [key("F0", state="FJI"), key("F3", state="FJI")], "x")
    upload(store, "FJI", "f2", [rec("F0", LOST, state="FJI"), rec("N5")])  # N5 rejected: NZL's
    upload(store, "NZL", "u1", [rec("Z9")])  # replay: nothing
    seqs = change_seqs(store.path)
    assert seqs == list(range(1, len(seqs) + 1))
    assert seqs[-1] == store.last_sequence == 15 + 2 + 8 + 2 + 1
    assert max(r.sequence for r in store.iter_records(active_only=False)) == store.last_sequence


# -- persistence --------------------------------------------------------------------------------------


def test_reopening_the_file_gives_the_same_records(tmp_path: Path) -> None:
    path = tmp_path / "register.db"
    store = RegisterStore(path)
    upload(store, "NZL", "u1", [rec("A1"), rec("B2", LOST, instructions="Call the NCP.")])
    store.cancel("NZL", [key("A1")], "x")
    records = list(store.iter_records(active_only=False))
    store.close()
    reopened = RegisterStore(path)
    try:
        assert list(reopened.iter_records(active_only=False)) == records
        assert reopened.last_sequence == 3
        assert reopened.find_upload("NZL", "u1") is not None
        outcome = upload(reopened, "NZL", "u2", [rec("C3")])
        assert outcome.register_sequence == 4
    finally:
        reopened.close()


def page_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def test_an_existing_database_keeps_its_page_size_and_its_records(tmp_path: Path) -> None:
    path = tmp_path / "register.db"
    other = 16384 if PAGE_SIZE != 16384 else 8192
    with sqlite3.connect(path) as conn:  # a file created with another page size
        conn.execute(f"PRAGMA page_size={other}")
        conn.execute("PRAGMA journal_mode=WAL")
    store = RegisterStore(path)
    upload(store, "NZL", "u1", [rec("A1"), rec("B2", LOST)])
    store.close()
    reopened = RegisterStore(path)
    try:
        assert page_size(path) == other
        assert state_of(reopened) == {
            ("NZL", "A1", int(PASSPORT)): ("NZL", STOLEN, 1),
            ("NZL", "B2", int(PASSPORT)): ("NZL", LOST, 2),
        }
        assert upload(reopened, "NZL", "u2", [rec("C3")]).created == 1
    finally:
        reopened.close()


def open_handles(path: Path) -> list[str]:
    """Files of this process that are the database or its WAL/shared-memory files (Linux /proc)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc/self/fd")
    handles = []
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(path)):
            handles.append(target)
    return handles


def test_close_releases_every_handle_on_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "register.db"
    store = RegisterStore(path)
    upload(store, "NZL", "u1", [rec("A1")])
    list(store.iter_records())
    store.find_upload("NZL", "u1")
    store.get_record("NZL", key("A1"))
    store.close()
    gc.collect()
    assert open_handles(path) == []
