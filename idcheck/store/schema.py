"""Schema of the register database and its forward migrations.

The schema version lives in the database (`meta.schema_version`). Each migration is applied once, in
order, inside its own transaction; a database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3

# Each entry takes the database from version i to i+1. Never edit a released entry: append a new one.
MIGRATIONS: list[str] = [
    # 0 -> 1: records, change log, uploads, audit log.
    """
    CREATE TABLE records (
        record_id        INTEGER PRIMARY KEY,
        issuing_state    TEXT    NOT NULL,
        number_canonical TEXT    NOT NULL,
        doc_class        INTEGER NOT NULL,
        number_printed   TEXT    NOT NULL,
        owner            TEXT    NOT NULL,
        status           INTEGER NOT NULL,
        event_date       TEXT    NOT NULL,
        surname          TEXT    NOT NULL DEFAULT '',
        given_names      TEXT    NOT NULL DEFAULT '',
        birth_date       TEXT    NOT NULL DEFAULT '',
        nationality      TEXT    NOT NULL DEFAULT '',
        expiry_date      TEXT    NOT NULL DEFAULT '',
        instructions     TEXT    NOT NULL DEFAULT '',
        recorded_at      TEXT    NOT NULL,
        seq              INTEGER NOT NULL,
        UNIQUE (issuing_state, number_canonical, doc_class)
    );
    CREATE INDEX records_owner_status ON records (owner, status);

    -- The change log: every accepted change gets the next sequence number.
    CREATE TABLE changes (
        seq        INTEGER PRIMARY KEY,
        record_id  INTEGER NOT NULL REFERENCES records (record_id),
        op         TEXT    NOT NULL CHECK (op IN ('CREATED', 'UPDATED', 'CANCELLED')),
        status     INTEGER NOT NULL,
        actor      TEXT    NOT NULL,
        upload_id  TEXT    NOT NULL DEFAULT '',
        reason     TEXT    NOT NULL DEFAULT '',
        changed_at TEXT    NOT NULL
    );
    CREATE INDEX changes_record ON changes (record_id, seq);

    -- One row per committed upload; `result` is the JSON answer returned to the uploader, replayed when
    -- the same upload id is sent again.
    CREATE TABLE uploads (
        member       TEXT    NOT NULL,
        upload_id    TEXT    NOT NULL,
        mode         TEXT    NOT NULL,
        description  TEXT    NOT NULL DEFAULT '',
        received     INTEGER NOT NULL,
        accepted     INTEGER NOT NULL,
        rejected     INTEGER NOT NULL,
        first_seq    INTEGER,
        last_seq     INTEGER,
        committed_at TEXT    NOT NULL,
        result       TEXT    NOT NULL,
        PRIMARY KEY (member, upload_id)
    );

    -- The audit log: one row per check call, and one narrow row per checked document, clustered by call so
    -- that appending is cheap. Query ids are the call's uid for a single check, `uid-position` in a manifest.
    CREATE TABLE audit_calls (
        call_id       INTEGER PRIMARY KEY,
        call_uid      TEXT    NOT NULL UNIQUE,
        at            TEXT    NOT NULL,
        caller_member TEXT    NOT NULL,
        caller_role   TEXT    NOT NULL,
        peer          TEXT    NOT NULL DEFAULT '',
        register_seq  INTEGER NOT NULL,
        documents     INTEGER NOT NULL,
        single        INTEGER NOT NULL
    );
    CREATE INDEX audit_calls_at ON audit_calls (at);
    CREATE TABLE audit (
        call_id         INTEGER NOT NULL,
        position        INTEGER NOT NULL,
        query_kind      TEXT    NOT NULL,
        issuing_state   TEXT    NOT NULL,
        document_number TEXT    NOT NULL,
        verdict         TEXT    NOT NULL,
        matched_records TEXT    NOT NULL DEFAULT '',
        PRIMARY KEY (call_id, position)
    ) WITHOUT ROWID;
    -- One row per checked document with everything about it.
    CREATE VIEW audit_log AS
        SELECT CASE WHEN c.single THEN c.call_uid ELSE c.call_uid || '-' || a.position END AS query_id,
               c.at, c.caller_member, c.caller_role, c.peer, a.query_kind, a.issuing_state, a.document_number,
               a.verdict, a.matched_records, c.register_seq, a.call_id, a.position
        FROM audit AS a JOIN audit_calls AS c USING (call_id);
    """,
    # 1 -> 2: biometric templates (vectors as little-endian float32 BLOBs, L2-normalised), their subjects and
    # linked documents, and the template change log whose sequence numbers tag the FAISS index snapshots.
    """
    CREATE TABLE template_subjects (
        subject_id  TEXT PRIMARY KEY,
        owner       TEXT NOT NULL,
        created_at  TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE templates (
        template_id INTEGER PRIMARY KEY,  -- the sequence number of its ENROLLED change: never reused
        subject_id  TEXT    NOT NULL REFERENCES template_subjects (subject_id),
        modality    INTEGER NOT NULL,
        dimension   INTEGER NOT NULL,
        vector      BLOB    NOT NULL,
        quality     REAL,
        owner       TEXT    NOT NULL,
        enrolled_at TEXT    NOT NULL
    );
    CREATE INDEX templates_subject ON templates (subject_id);
    CREATE TABLE template_documents (
        template_id      INTEGER NOT NULL,
        issuing_state    TEXT    NOT NULL,
        number_canonical TEXT    NOT NULL,
        PRIMARY KEY (template_id, issuing_state, number_canonical)
    ) WITHOUT ROWID;
    CREATE INDEX template_documents_key ON template_documents (issuing_state, number_canonical);
    CREATE TABLE template_changes (
        seq         INTEGER PRIMARY KEY,
        op          TEXT    NOT NULL CHECK (op IN ('ENROLLED', 'REMOVED')),
        template_id INTEGER NOT NULL,
        subject_id  TEXT    NOT NULL,
        actor       TEXT    NOT NULL,
        changed_at  TEXT    NOT NULL
    );
    """,
    # 2 -> 3: biometric calls in the audit log. Verify and identify are audited like checks (query_kind
    # 'verify' or 'identify', matched_records holding template ids); `subject_id` is the subject a verify
    # claimed ('' for document checks, identify and verify by document).
    """
    ALTER TABLE audit ADD COLUMN subject_id TEXT NOT NULL DEFAULT '';
    DROP VIEW audit_log;
    CREATE VIEW audit_log AS
        SELECT CASE WHEN c.single THEN c.call_uid ELSE c.call_uid || '-' || a.position END AS query_id,
               c.at, c.caller_member, c.caller_role, c.peer, a.query_kind, a.issuing_state, a.document_number,
               a.verdict, a.matched_records, c.register_seq, a.call_id, a.position, a.subject_id
        FROM audit AS a JOIN audit_calls AS c USING (call_id);
    """,
    # 3 -> 4: hit outcomes. The owner of a record matched by a HIT or POSSIBLE_MATCH confirms or rejects it,
    # once per query id; the querying member reads it back.
    """
    CREATE TABLE hit_outcomes (
        query_id   TEXT PRIMARY KEY,
        outcome    TEXT NOT NULL CHECK (outcome IN ('CONFIRMED', 'REJECTED')),
        note       TEXT NOT NULL DEFAULT '',
        decided_by TEXT NOT NULL,
        decided_at TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 4 -> 5: replication. The change feed reads records by the sequence of their latest change; a mirror
    # keeps the upstream it follows and its position in that upstream's feed (one row; absent on an upstream).
    """
    CREATE INDEX records_seq ON records (seq);
    CREATE TABLE replication (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        upstream    TEXT    NOT NULL,
        resume_seq  INTEGER NOT NULL,  -- every upstream row with a seq up to here is stored: resume from it
        through_seq INTEGER NOT NULL,  -- the register equals the upstream's at this sequence
        contact_at  TEXT    NOT NULL DEFAULT '',  -- when the mirror last knew it held every upstream change
        updated_at  TEXT    NOT NULL
    );
    """,
    # 5 -> 6: packed plain-CLEAR documents. Most documents of a manifest are a plain CLEAR (typed query, no
    # match), and inserting one `audit` row each cost the audit writer ~2.7 ms per 1,000 documents, the ceiling
    # of manifest throughput; one row per call holding them packed costs a few hundredths of that. `documents`
    # is a JSON array of [position, issuing_state, document_number] (ascending positions), expanded by
    # json_each; `count` is its length, so that counting never parses it. Every other document (HIT,
    # POSSIBLE_MATCH, MRZ, verify/identify, single checks) stays an `audit` row, and `audit_log` still shows one
    # row per checked document: a packed one reads query_kind 'typed', verdict 'CLEAR', no matched records and
    # no subject.
    """
    CREATE TABLE audit_clear (
        call_id   INTEGER PRIMARY KEY,
        count     INTEGER NOT NULL,
        documents TEXT    NOT NULL
    );
    DROP VIEW audit_log;
    CREATE VIEW audit_log AS
        SELECT CASE WHEN c.single THEN c.call_uid ELSE c.call_uid || '-' || a.position END AS query_id,
               c.at, c.caller_member, c.caller_role, c.peer, a.query_kind, a.issuing_state, a.document_number,
               a.verdict, a.matched_records, c.register_seq, a.call_id, a.position, a.subject_id
        FROM audit AS a JOIN audit_calls AS c USING (call_id)
        UNION ALL
        SELECT CASE WHEN c.single THEN c.call_uid ELSE c.call_uid || '-' || (d.value ->> 0) END,
               c.at, c.caller_member, c.caller_role, c.peer, 'typed', d.value ->> 1, d.value ->> 2,
               'CLEAR', '', c.register_seq, k.call_id, d.value ->> 0, ''
        FROM audit_clear AS k JOIN audit_calls AS c ON c.call_id = k.call_id, json_each(k.documents) AS d;
    """,
    # 6 -> 7: created ranges. A bulk upload that creates N records writes one `created_ranges` row instead of N
    # `changes` rows (a fifth of its store time): the records numbered first_record_id .. first_record_id +
    # (last_seq - first_seq) were created in that order at sequences first_seq .. last_seq by one upload, each
    # with the status kept in its `created_status`. Records created otherwise keep a CREATED row in `changes`
    # (their created_status is NULL). The view `change_log` shows both as one change log, one row per change.
    """
    ALTER TABLE records ADD COLUMN created_status INTEGER;
    CREATE TABLE created_ranges (
        first_seq       INTEGER PRIMARY KEY,
        last_seq        INTEGER NOT NULL,
        first_record_id INTEGER NOT NULL,
        actor           TEXT    NOT NULL,
        upload_id       TEXT    NOT NULL DEFAULT '',
        reason          TEXT    NOT NULL DEFAULT '',
        changed_at      TEXT    NOT NULL,
        CHECK (last_seq >= first_seq)
    );
    -- Ranges never overlap and both their sequences and their record ids grow: a record's range is the last one
    -- starting at or before its id (one index seek, however many uploads there have been).
    CREATE UNIQUE INDEX created_ranges_record ON created_ranges (first_record_id);
    CREATE VIEW change_log AS
        SELECT seq, record_id, op, status, actor, upload_id, reason, changed_at FROM changes
        UNION ALL
        SELECT g.first_seq + (r.record_id - g.first_record_id), r.record_id, 'CREATED', r.created_status, g.actor,
               g.upload_id, g.reason, g.changed_at
        FROM records AS r JOIN created_ranges AS g ON g.first_record_id = (
            SELECT first_record_id FROM created_ranges WHERE first_record_id <= r.record_id
            ORDER BY first_record_id DESC LIMIT 1)
        WHERE r.created_status IS NOT NULL AND r.record_id <= g.first_record_id + (g.last_seq - g.first_seq);
    """,
    # 7 -> 8: records by owner alone. An index on (owner, status) took a bulk upload's new records at one place
    # per status, each in the middle of the index, which SQLite fills by splitting and rebalancing pages: 7 to
    # 9 s of a 10-million-row upload (of 21 to 24 s of inserts without it). (owner) takes them in record id order at one
    # place. Finding an owner's records (REPLACE_ALL) reads the same index; counting records by status, which
    # read the covering (owner, status) index, now reads the table (GetStatistics keeps its counts until the
    # register changes).
    """
    DROP INDEX records_owner_status;
    CREATE INDEX records_owner ON records (owner);
    """,
    # 8 -> 9: the records created by bulk uploads (created_status set) left out of the seq and owner indexes.
    # Their sequence and owner follow from their `created_ranges` row (owner = the range's actor, sequence = the
    # range's first_seq + their place in it, until a later change, which is a `changes` row), so the store finds
    # them through the ranges instead: keeping two index entries a record cost a 10-million-row upload 5 of its
    # 24 s of inserts. Records created otherwise, and every record on a mirror, stay in both indexes.
    """
    DROP INDEX records_seq;
    CREATE INDEX records_seq ON records (seq) WHERE created_status IS NULL;
    DROP INDEX records_owner;
    CREATE INDEX records_owner ON records (owner) WHERE created_status IS NULL;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(RuntimeError):
    """The database cannot be used by this version of idcheck."""


def current_version(conn: sqlite3.Connection) -> int:
    """Schema version stored in the database (0 for an empty one)."""
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if not has_meta:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection, up_to: int = SCHEMA_VERSION) -> int:
    """Bring the database to SCHEMA_VERSION (or to the older version `up_to`, as an older idcheck left it: tests
    of upgrades); returns the version it was at before."""
    before = current_version(conn)
    if before > SCHEMA_VERSION:
        raise SchemaError(
            f"database schema version {before} is newer than this idcheck ({SCHEMA_VERSION}); upgrade idcheck"
        )
    for version in range(before, up_to):
        # executescript() commits any open transaction first; wrap each step in its own.
        conn.executescript(
            "BEGIN IMMEDIATE;\n"
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
            + MIGRATIONS[version]
            + f"\nINSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '{version + 1}');\nCOMMIT;"
        )
    return before
