"""The schema version kept in the database, and refusing a database newer than the code."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from idcheck.icao import DocumentClass
from idcheck.records import DocumentKey, RecordStatus, validate_record
from idcheck.register.columns import accepted_from_records, in_key_order
from idcheck.store import RegisterStore
from idcheck.store.schema import SCHEMA_VERSION, SchemaError, current_version, migrate
from idcheck.uploads import UploadColumns, UploadMode


def stored_version(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]


def test_new_database_records_the_schema_version(tmp_path: Path) -> None:
    store = RegisterStore(tmp_path / "register.db")
    store.close()
    assert stored_version(tmp_path / "register.db") == str(SCHEMA_VERSION)


def test_empty_database_is_version_zero_and_migrate_reports_it(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        assert current_version(conn) == 0
        assert migrate(conn) == 0
        assert current_version(conn) == SCHEMA_VERSION
        assert migrate(conn) == SCHEMA_VERSION  # nothing left to do, and no error
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"meta", "records", "changes", "uploads", "audit"} <= tables
    finally:
        conn.close()


def test_reopening_keeps_the_version_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "register.db"
    RegisterStore(path).close()
    RegisterStore(path).close()
    assert stored_version(path) == str(SCHEMA_VERSION)


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "register.db"
    RegisterStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(SchemaError, match="newer"):
        RegisterStore(path)
    assert stored_version(path) == str(SCHEMA_VERSION + 1)


def test_version_2_database_gains_the_audit_subject_column_and_keeps_its_rows() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, up_to=2)  # the database as a version-2 idcheck left it
    conn.execute("INSERT INTO audit_calls VALUES (1, 'u', '2026-01-01T00:00:00.000Z', 'NZL', 'border', '', 3, 1, 1)")
    conn.execute("INSERT INTO audit VALUES (1, 0, 'typed', 'NZL', 'LA1', 'CLEAR', '')")
    assert migrate(conn) == 2
    row = conn.execute("SELECT query_id, verdict, subject_id FROM audit_log").fetchone()
    assert row == ("u", "CLEAR", "")


def test_version_6_database_keeps_its_change_log_and_numbers_on_from_it(tmp_path: Path) -> None:
    path = tmp_path / "register.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, up_to=6)  # the database as a version-6 idcheck left it
    at = "2026-01-01T00:00:00.000Z"
    conn.execute(  # a record created and then cancelled before version 7: two `changes` rows
        "INSERT INTO records (record_id, issuing_state, number_canonical, doc_class, number_printed, owner, status,"
        " event_date, recorded_at, seq) VALUES (1, 'NZL', 'OLD1', 1, 'OLD1', 'NZL', 6, '2025-01-01', ?, 2)",
        (at,),
    )
    conn.execute("INSERT INTO changes VALUES (1, 1, 'CREATED', 2, 'NZL', 'u0', '', ?)", (at,))
    conn.execute("INSERT INTO changes VALUES (2, 1, 'CANCELLED', 6, 'NZL', '', 'found', ?)", (at,))
    conn.close()
    store = RegisterStore(path)
    try:
        assert stored_version(path) == str(SCHEMA_VERSION)
        assert store.last_sequence == 2
        _, history = store.get_record("NZL", DocumentKey("NZL", "OLD1", DocumentClass.PASSPORT))
        assert [(c.sequence, c.operation, c.status) for c in history] == [
            (1, "CREATED", RecordStatus.STOLEN),
            (2, "CANCELLED", RecordStatus.CANCELLED),
        ]
        new = validate_record(
            issuing_state="NZL", document_number="NEW1", document_class=1, status=1, event_date="2025-01-01"
        )
        ordered, _ = in_key_order(accepted_from_records([(0, new)]))
        outcome, _ = store.commit_upload("NZL", "u1", UploadMode.INCREMENTAL, "", UploadColumns(ordered), [], [], 1)
        assert outcome.register_sequence == 3
        _, history = store.get_record("NZL", DocumentKey("NZL", "NEW1", DocumentClass.PASSPORT))
        assert [(c.sequence, c.operation, c.status, c.upload_id) for c in history] == [
            (3, "CREATED", RecordStatus.LOST, "u1")
        ]
    finally:
        store.close()


def test_version_7_database_finds_an_owners_records_through_the_owner_index() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, up_to=7)
    conn.execute(
        "INSERT INTO records (record_id, issuing_state, number_canonical, doc_class, number_printed, owner, status,"
        " event_date, recorded_at, seq) VALUES (1, 'NZL', 'A1', 1, 'A1', 'NZL', 2, '2025-01-01', '', 1)"
    )
    assert migrate(conn, up_to=8) == 7
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'records'")}
    assert "records_owner" in indexes and "records_owner_status" not in indexes
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT record_id FROM records WHERE owner = ? AND status <> 6", ("NZL",))
    assert any("records_owner" in row[-1] for row in plan.fetchall())
    assert conn.execute("SELECT record_id FROM records WHERE owner = 'NZL'").fetchall() == [(1,)]
