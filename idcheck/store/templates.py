"""Durable biometric templates: vectors, subjects, linked documents and the template change log.

Templates live in the same `register.db` as the records (tables of schema migration 2), written through their
own connection with `synchronous=FULL` in WAL mode, so an enrolment or removal is on stable storage when its
transaction commits, and the server acknowledges it only after that. Vectors are stored L2-normalised as
little-endian float32 BLOBs: the FAISS index is derived state, rebuilt from these rows whenever its snapshot
cannot be trusted, and the exact scores every answer reports are computed from them.

Every enrolled or removed template gets the next template sequence number (`template_changes.seq`); an
enrolled template's id is the sequence number of its enrolment, so ids are never reused. Index snapshots are
tagged with the sequence number they reflect and brought up to date from the change log at start-up.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idcheck.store.errors import NotOwner, StoreError
from idcheck.store.schema import migrate
from idcheck.store.sqlite import ReaderConnections, connect, side_connection, utc_now

_CHUNK = 500  # bound parameters per IN (...) query
WRITER_CACHE_KIB = 8192  # page cache of the template writer connection


class TemplateNotFound(StoreError):
    """No template with that id, or no subject with that id."""


@dataclass(frozen=True, slots=True)
class NewTemplate:
    """One validated template to enrol (the vector is passed separately, as a row of one matrix)."""

    subject_id: str
    modality: int
    quality: float | None
    documents: tuple[tuple[str, str], ...]  # (issuing state, canonical number)


@dataclass(frozen=True, slots=True)
class EnrolOutcome:
    template_ids: np.ndarray  # int64, in request order
    sequence: int
    subjects_created: int


@dataclass(frozen=True, slots=True)
class RemoveOutcome:
    template_ids: np.ndarray  # int64, the templates removed
    sequence: int


@dataclass(frozen=True, slots=True)
class StoredTemplates:
    """Templates read back: ids, normalised vectors (one row each), subject and owner per row."""

    ids: np.ndarray
    vectors: np.ndarray
    subjects: list[str]
    owners: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class ChangesSince:
    """What changed after a sequence number: templates to add (still present) and ids to remove."""

    sequence: int
    added: StoredTemplates
    removed: np.ndarray


def _chunks(items: Sequence[object], size: int = _CHUNK) -> Iterator[Sequence[object]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _vectors(blobs: Sequence[bytes], dimension: int) -> np.ndarray:
    if not blobs:
        return np.empty((0, dimension), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dimension).astype(np.float32, copy=False)


class TemplateSnapshot:
    """Every template as of one sequence number: one read transaction, held open until `close`.

    Implements `idcheck.index.templates.VectorSource`; `batches` may be iterated more than once.
    """

    def __init__(self, path: Path, dimension: int, batch_size: int = 65_536) -> None:
        self.dimension = dimension
        self._batch_size = batch_size
        self._conn = side_connection(path)
        self._conn.execute("BEGIN")
        self._sequence = int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM template_changes").fetchone()[0])
        self._count = int(self._conn.execute("SELECT COUNT(*) FROM templates").fetchone()[0])

    @property
    def sequence(self) -> int:
        return self._sequence

    @property
    def count(self) -> int:
        return self._count

    def sample(self, n: int) -> np.ndarray:
        """About `n` vectors drawn uniformly at random (seeded): k-means training data.

        Random, not every k-th row: ids follow enrolment order, which can be periodic in the data (batches
        per site, per camera, per cluster) and a systematic sample would then see only part of the space.
        """
        if n <= 0 or self._count == 0:
            return np.empty((0, self.dimension), dtype=np.float32)
        # All ids from the subject index (covering, small), not from the table of 2 KiB rows.
        ids = np.fromiter(
            (r[0] for r in self._conn.execute("SELECT template_id FROM templates INDEXED BY templates_subject")),
            dtype=np.int64,
        )
        if n < len(ids):
            ids = np.sort(np.random.default_rng(len(ids)).choice(ids, size=n, replace=False))
        blobs: list[bytes] = []
        for chunk in _chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            blobs += [
                r[0]
                for r in self._conn.execute(
                    f"SELECT vector FROM templates WHERE template_id IN ({marks}) ORDER BY template_id", chunk
                )
            ]
        return _vectors(blobs, self.dimension)

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        cur = self._conn.execute("SELECT template_id, vector FROM templates ORDER BY template_id")
        while rows := cur.fetchmany(self._batch_size):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, _vectors([r[1] for r in rows], self.dimension)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("COMMIT")
        self._conn.close()

    def __enter__(self) -> TemplateSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TemplateStore:
    """Templates, subjects, links and change log in the register database."""

    def __init__(self, path: Path, dimension: int) -> None:
        self.path = Path(path)
        self.dimension = dimension
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect(self.path)
        # Enrolments append rows of 2 KiB that are never read back through this connection: a small page
        # cache (the register's default is 64 MiB) is enough for the b-tree interiors it updates.
        self._conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        migrate(self._conn)
        self._closed = False
        self._lock = threading.Lock()
        self._readers = ReaderConnections(self.path)
        self._last_seq = self._query_last_seq()
        row = self._conn.execute("SELECT dimension FROM templates LIMIT 1").fetchone()
        if row is not None and int(row[0]) != dimension:
            self._conn.close()
            raise StoreError(
                f"{self.path} holds templates of dimension {row[0]}, the configuration says {dimension}",
                field="template_dimension",
            )

    # -- reading ------------------------------------------------------------------------------------

    @property
    def last_sequence(self) -> int:
        """Sequence number of the last committed template change (0 when none)."""
        return self._last_seq

    def note_sequence(self, sequence: int) -> None:
        """Another process sharing this file has committed through `sequence` (serve --workers)."""
        self._last_seq = max(self._last_seq, sequence)

    def _query_last_seq(self) -> int:
        return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM template_changes").fetchone()[0])

    def _reader(self) -> sqlite3.Connection:
        return self._readers.get()

    def count(self) -> int:
        """Number of templates held."""
        return int(self._reader().execute("SELECT COUNT(*) FROM templates").fetchone()[0])

    def fetch(self, template_ids: Sequence[int]) -> StoredTemplates:
        """The templates among `template_ids` that still exist (removed ones are simply absent), in id order."""
        conn = self._reader()
        rows: list[tuple[int, str, str, bytes]] = []
        ids = [int(i) for i in template_ids]
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            rows += conn.execute(
                f"SELECT template_id, subject_id, owner, vector FROM templates WHERE template_id IN ({marks})",
                chunk,
            ).fetchall()
        rows.sort()
        return self._stored(rows)

    def of_subject(self, subject_id: str) -> StoredTemplates:
        """Every template of one subject."""
        rows = (
            self._reader()
            .execute(
                "SELECT template_id, subject_id, owner, vector FROM templates WHERE subject_id = ? "
                "ORDER BY template_id",
                (subject_id,),
            )
            .fetchall()
        )
        return self._stored(rows)

    def of_document(self, issuing_state: str, number_canonical: str) -> StoredTemplates:
        """Every template linked to one document (issuing state, canonical number)."""
        rows = (
            self._reader()
            .execute(
                "SELECT t.template_id, t.subject_id, t.owner, t.vector FROM template_documents AS d "
                "JOIN templates AS t USING (template_id) "
                "WHERE d.issuing_state = ? AND d.number_canonical = ? ORDER BY t.template_id",
                (issuing_state, number_canonical),
            )
            .fetchall()
        )
        return self._stored(rows)

    def documents_of_subjects(self, subject_ids: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
        """Documents linked to any template of each subject, sorted."""
        conn = self._reader()
        subjects = sorted(set(subject_ids))
        out: dict[str, list[tuple[str, str]]] = {s: [] for s in subjects}
        for chunk in _chunks(subjects):
            marks = ",".join("?" * len(chunk))
            for subject, state, number in conn.execute(
                "SELECT DISTINCT t.subject_id, d.issuing_state, d.number_canonical FROM templates AS t "
                f"JOIN template_documents AS d USING (template_id) WHERE t.subject_id IN ({marks}) "
                "ORDER BY 1, 2, 3",
                chunk,
            ):
                out[subject].append((state, number))
        return out

    def subject_owner(self, subject_id: str) -> str | None:
        row = self._reader().execute("SELECT owner FROM template_subjects WHERE subject_id = ?", (subject_id,))
        found = row.fetchone()
        return str(found[0]) if found else None

    def open_snapshot(self) -> TemplateSnapshot:
        """A consistent read of every template (a context manager; the index rebuilds from it)."""
        return TemplateSnapshot(self.path, self.dimension)

    def changes_since(self, sequence: int) -> ChangesSince:
        """Templates enrolled after `sequence` that still exist, and templates removed after it."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            last = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM template_changes").fetchone()[0])
            rows = conn.execute(
                "SELECT t.template_id, t.subject_id, t.owner, t.vector FROM template_changes AS c "
                "JOIN templates AS t USING (template_id) WHERE c.seq > ? AND c.op = 'ENROLLED' ORDER BY 1",
                (sequence,),
            ).fetchall()
            removed = [
                r[0]
                for r in conn.execute(
                    "SELECT template_id FROM template_changes WHERE seq > ? AND op = 'REMOVED'", (sequence,)
                )
            ]
        finally:
            conn.execute("COMMIT")
        return ChangesSince(last, self._stored(rows), np.asarray(removed, dtype=np.int64))

    def _stored(self, rows: Sequence[tuple[int, str, str, bytes]]) -> StoredTemplates:
        return StoredTemplates(
            ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
            vectors=_vectors([r[3] for r in rows], self.dimension),
            subjects=[r[1] for r in rows],
            owners=[r[2] for r in rows],
        )

    # -- writing ------------------------------------------------------------------------------------

    def enrol(self, member: str, templates: Sequence[NewTemplate], vectors: np.ndarray) -> EnrolOutcome:
        """Enrol templates in one transaction (durable on return). Raises NotOwner, applying nothing, when a
        subject belongs to another member."""
        if len(templates) != len(vectors):
            raise ValueError("one vector per template")
        now = utc_now()
        blobs = np.ascontiguousarray(vectors, dtype="<f4")
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                subjects = list(dict.fromkeys(t.subject_id for t in templates))
                owners: dict[str, str] = {}
                for chunk in _chunks(subjects):
                    marks = ",".join("?" * len(chunk))
                    owners.update(
                        conn.execute(
                            f"SELECT subject_id, owner FROM template_subjects WHERE subject_id IN ({marks})", chunk
                        ).fetchall()
                    )
                for i, t in enumerate(templates):
                    owner = owners.get(t.subject_id)
                    if owner is not None and owner != member:
                        raise NotOwner(
                            f"subject {t.subject_id!r} is enrolled by another member",
                            field=f"templates[{i}].subject_id",
                        )
                new_subjects = [s for s in subjects if s not in owners]
                conn.executemany(
                    "INSERT INTO template_subjects (subject_id, owner, created_at) VALUES (?, ?, ?)",
                    ((s, member, now) for s in new_subjects),
                )
                first = self._query_last_seq() + 1  # another process may share this file (serve --workers)
                ids = np.arange(first, first + len(templates), dtype=np.int64)
                conn.executemany(
                    "INSERT INTO templates (template_id, subject_id, modality, dimension, vector, quality, owner, "
                    "enrolled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        (int(tid), t.subject_id, t.modality, self.dimension, blobs[i].tobytes(), t.quality, member, now)
                        for i, (tid, t) in enumerate(zip(ids, templates, strict=True))
                    ),
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO template_documents (template_id, issuing_state, number_canonical) "
                    "VALUES (?, ?, ?)",
                    (
                        (int(tid), state, number)
                        for tid, t in zip(ids, templates, strict=True)
                        for state, number in t.documents
                    ),
                )
                conn.executemany(
                    "INSERT INTO template_changes (seq, op, template_id, subject_id, actor, changed_at) "
                    "VALUES (?, 'ENROLLED', ?, ?, ?, ?)",
                    ((int(tid), int(tid), t.subject_id, member, now) for tid, t in zip(ids, templates, strict=True)),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if len(templates):
                self._last_seq = int(ids[-1])
        return EnrolOutcome(ids, self._last_seq, len(new_subjects))

    def remove(self, member: str, template_ids: Sequence[int], subject_ids: Sequence[str]) -> RemoveOutcome:
        """Remove templates by id and all templates of subjects, in one transaction, all or nothing.

        Raises TemplateNotFound for an unknown id or subject and NotOwner for another member's; the field
        names the offending request entry (`template_ids[i]`, `subject_ids[i]`). A subject left without
        templates is forgotten (its id may then be enrolled afresh by any member).
        """
        now = utc_now()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                doomed: dict[int, str] = {}
                for i, tid in enumerate(template_ids):
                    row = conn.execute(
                        "SELECT subject_id, owner FROM templates WHERE template_id = ?", (int(tid),)
                    ).fetchone()
                    if row is None:
                        raise TemplateNotFound(f"no template {tid}", field=f"template_ids[{i}]")
                    if row[1] != member:
                        raise NotOwner(f"template {tid} is enrolled by another member", field=f"template_ids[{i}]")
                    doomed[int(tid)] = row[0]
                for i, subject in enumerate(subject_ids):
                    row = conn.execute(
                        "SELECT owner FROM template_subjects WHERE subject_id = ?", (subject,)
                    ).fetchone()
                    if row is None:
                        raise TemplateNotFound(f"no subject {subject!r}", field=f"subject_ids[{i}]")
                    if row[0] != member:
                        raise NotOwner(f"subject {subject!r} is enrolled by another member", field=f"subject_ids[{i}]")
                    for (tid,) in conn.execute("SELECT template_id FROM templates WHERE subject_id = ?", (subject,)):
                        doomed[int(tid)] = subject
                ids = sorted(doomed)
                for chunk in _chunks(ids):
                    marks = ",".join("?" * len(chunk))
                    conn.execute(f"DELETE FROM template_documents WHERE template_id IN ({marks})", chunk)
                    conn.execute(f"DELETE FROM templates WHERE template_id IN ({marks})", chunk)
                affected = sorted(set(doomed.values()) | set(subject_ids))
                for chunk in _chunks(affected):
                    marks = ",".join("?" * len(chunk))
                    conn.execute(
                        f"DELETE FROM template_subjects WHERE subject_id IN ({marks}) AND NOT EXISTS "
                        "(SELECT 1 FROM templates AS t WHERE t.subject_id = template_subjects.subject_id)",
                        chunk,
                    )
                seqs = itertools.count(self._query_last_seq() + 1)
                changes = [(next(seqs), tid, doomed[tid], member, now) for tid in ids]
                conn.executemany(
                    "INSERT INTO template_changes (seq, op, template_id, subject_id, actor, changed_at) "
                    "VALUES (?, 'REMOVED', ?, ?, ?, ?)",
                    changes,
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if changes:
                self._last_seq = changes[-1][0]
        return RemoveOutcome(np.asarray(ids, dtype=np.int64), self._last_seq)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._readers.close()
            self._conn.close()


__all__ = [
    "ChangesSince",
    "EnrolOutcome",
    "NewTemplate",
    "RemoveOutcome",
    "StoredTemplates",
    "TemplateNotFound",
    "TemplateSnapshot",
    "TemplateStore",
]
