"""The schema version kept in the database, and refusing a database newer than the code."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from idcheck.store import RegisterStore
from idcheck.store.schema import MIGRATIONS, SCHEMA_VERSION, SchemaError, current_version, migrate


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
    for version, script in enumerate(MIGRATIONS[:2]):
        conn.executescript(
            "BEGIN;\nCREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
            + script
            + f"\nINSERT OR REPLACE INTO meta VALUES ('schema_version', '{version + 1}');\nCOMMIT;"
        )
    conn.execute("INSERT INTO audit_calls VALUES (1, 'u', '2026-01-01T00:00:00.000Z', 'NZL', 'border', '', 3, 1, 1)")
    conn.execute("INSERT INTO audit VALUES (1, 0, 'typed', 'NZL', 'LA1', 'CLEAR', '')")
    assert migrate(conn) == 2
    row = conn.execute("SELECT query_id, verdict, subject_id FROM audit_log").fetchone()
    assert row == ("u", "CLEAR", "")
