"""The gallery: enrol, verify, identify and remove templates over the durable store and the FAISS index.

Writes go to the store first (durable when it returns) and are then applied to the index, both under one
lock so the index follows the template change log in order; only then is the caller answered. Verify reads
the claimed subject's or document's stored vectors and scores them exactly. Identify asks the index for a
shortlist and re-scores it exactly from the stored vectors (which also drops anything removed meanwhile), so
every score reported is an exact cosine similarity whichever index kind served the search.

Every verify and identify answered is queued to the register's audit log when the gallery has an audit
writer (query kind 'verify' or 'identify', the template ids matched, the caller), under a query id that is
also returned to the caller.

The index is snapshotted in the background after `snapshot_changes` template changes or `snapshot_seconds`
with unsaved changes, and at shutdown, so a crash costs at most that much catching up from the change log.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from idcheck.biometrics.errors import TemplateError
from idcheck.cpus import on_every_cpu
from idcheck.icao import DocumentNumberError, StateCodeError, canonical_number, canonical_state
from idcheck.index.templates import IndexSettings, SnapshotError, TemplateIndex, normalise
from idcheck.register import Caller
from idcheck.register.peers import PeerFollower, SequenceChannel
from idcheck.register.queryids import new_query_id
from idcheck.store import AuditCall, AuditDocument, AuditWriter, utc_now
from idcheck.store.templates import NewTemplate, TemplateNotFound, TemplateStore

log = logging.getLogger(__name__)

SNAPSHOT_NAME = "templates.faissidx"
MAX_SUBJECT_ID_LENGTH = 128


class Modality(enum.IntEnum):
    """Same numbers as idcheck.v1.Modality."""

    UNSPECIFIED = 0
    FACE = 1
    FINGERPRINT = 2
    IRIS = 3


SERVED_MODALITIES = frozenset({Modality.FACE})


class Decision(enum.StrEnum):
    MATCH = "MATCH"
    NO_MATCH = "NO_MATCH"


# Audit verdict of an identify call.
CANDIDATES = "CANDIDATES"
NO_CANDIDATES = "NO_CANDIDATES"


@dataclass(frozen=True, slots=True)
class GallerySettings:
    """Thresholds, limits and index settings of the gallery.

    Default thresholds are calibrated on the synthetic face model (`idcheck.biometrics.synthetic`,
    `FaceGenerator().score_sample()`: 12,000 genuine and 2,000,000 impostor scores): verify FMR 1e-4 -> 0.3845
    (FNMR 0.24 %); identify FPIR 1e-3 for a gallery of 1,000,000 -> per-comparison FMR 1e-9 -> 0.5557
    (tail-extrapolated). Deployments recalibrate on their own model's scores with `idcheck calibrate`.
    """

    index: IndexSettings = field(default_factory=IndexSettings)
    verify_fmr: float = 1e-4
    verify_threshold: float = 0.3845
    identify_fpir: float = 1e-3
    identify_threshold: float = 0.5557
    max_templates_per_call: int = 10_000
    max_candidates: int = 100
    default_candidates: int = 10
    shortlist: int = 64  # templates re-scored exactly per identify, at least 4 * max_candidates asked
    # Background index snapshots: after this many template changes, or this long after the last snapshot
    # when there are unsaved changes (0 turns that trigger off). A snapshot of 1,000,000 templates takes
    # about 2 s to write and holds the index's reader lock only for its in-memory copy.
    snapshot_changes: int = 100_000
    snapshot_seconds: float = 300.0

    @property
    def dimension(self) -> int:
        return self.index.dimension


@dataclass(frozen=True, slots=True)
class TemplateInput:
    """One template as received (validated by `Gallery.enrol`)."""

    subject_id: str
    modality: int
    dimension: int
    data: bytes
    quality: float | None = None
    documents: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True)
class Probe:
    """A live capture as received."""

    modality: int
    dimension: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    threshold: float
    target_rate: float
    rate_kind: str  # FMR or FPIR


@dataclass(frozen=True, slots=True)
class EnrolResult:
    template_ids: tuple[int, ...]
    template_sequence: int
    subjects_created: int


@dataclass(frozen=True, slots=True)
class VerifyResult:
    decision: Decision
    score: float
    operating_point: OperatingPoint
    best_template_id: int
    subject_id: str
    templates_compared: int
    template_sequence: int
    query_id: str = ""


@dataclass(frozen=True, slots=True)
class Candidate:
    subject_id: str
    score: float
    owner_member: str
    documents: tuple[tuple[str, str], ...]
    template_id: int
    rank: int


@dataclass(frozen=True, slots=True)
class IdentifyResult:
    candidates: tuple[Candidate, ...]
    operating_point: OperatingPoint
    gallery_size: int
    template_sequence: int
    search_kind: str
    query_id: str = ""


@dataclass(frozen=True, slots=True)
class RemoveResult:
    removed: int
    template_sequence: int


def _check_modality(value: int) -> str | None:
    if value == Modality.UNSPECIFIED:
        return "modality is required (FACE)"
    if value not in Modality.__members__.values():
        return f"unknown modality {value}"
    if Modality(value) not in SERVED_MODALITIES:
        return f"{Modality(value).name} templates are not served by this deployment (FACE only)"
    return None


class Gallery:
    """The biometric template gallery of one node."""

    def __init__(
        self, store: TemplateStore, settings: GallerySettings, snapshot_path: Path, *, audit: AuditWriter | None = None
    ) -> None:
        self.store = store
        self.audit = audit  # where verify and identify calls are logged (None: not audited, e.g. offline tools)
        self.settings = settings
        self.snapshot_path = Path(snapshot_path)
        self._write_lock = threading.Lock()
        self._peers: SequenceChannel | None = None  # other worker processes sharing the store, if any
        self._follower: PeerFollower | None = None  # catches up with them in the background
        self.writes_snapshots = True
        started = time.perf_counter()
        self.saved_sequence = -1  # template sequence of the last snapshot written or loaded (-1: none)
        self.snapshots_written = 0
        self.last_snapshot_error: BaseException | None = None
        self.index, self.load_report = self._load_index()
        self.load_seconds = time.perf_counter() - started
        self._last_snapshot_time = time.monotonic()
        self._snapshot_wake = threading.Event()
        self._closing = False
        self._snapshotter = threading.Thread(
            target=on_every_cpu(self._snapshot_loop), name="template-index-snapshot", daemon=True
        )
        self._snapshotter.start()
        self.index.maybe_rebuild(self.store.open_snapshot)
        self._snapshot_if_due()

    @classmethod
    def open(
        cls, data_dir: Path, settings: GallerySettings | None = None, *, audit: AuditWriter | None = None
    ) -> Gallery:
        """Open (or create) the gallery in a data directory (templates in its register.db); `audit` is the
        register's audit writer, which then logs every verify and identify."""
        settings = settings or GallerySettings()
        data_dir = Path(data_dir)
        store = TemplateStore(data_dir / "register.db", settings.dimension)
        try:
            return cls(store, settings, data_dir / SNAPSHOT_NAME, audit=audit)
        except BaseException:
            store.close()
            raise

    def _load_index(self) -> tuple[TemplateIndex, str]:
        settings = self.settings.index
        try:
            index = TemplateIndex.load(self.snapshot_path, settings)
            if index.sequence > self.store.last_sequence:
                raise SnapshotError(
                    f"snapshot at template sequence {index.sequence} is ahead of the store ({self.store.last_sequence})"
                )
        except SnapshotError as exc:
            if self.snapshot_path.exists():
                log.warning("template index snapshot not used (%s); rebuilding from the store", exc)
                reason = f"snapshot not used ({exc})"
            else:
                reason = "no snapshot"
            with self.store.open_snapshot() as source:
                index = TemplateIndex.build(settings, source)
            if len(index):
                self.saved_sequence = index.save(self.snapshot_path)
            return index, f"built from the store: {reason}"
        loaded_at = self.saved_sequence = index.sequence
        changes = self.store.changes_since(loaded_at)
        index.remove(changes.removed, changes.sequence)
        index.add(changes.added.ids, changes.added.vectors, changes.sequence)
        return index, (
            f"snapshot at sequence {loaded_at} plus {len(changes.added)} enrolled and "
            f"{len(changes.removed)} removed since"
        )

    def close(self) -> None:
        """Let a running rebuild finish, stop background snapshots, save the index snapshot, close the store."""
        if self._follower is not None:
            self._follower.stop()
        self.index.wait_rebuild()
        self._closing = True
        self._snapshot_wake.set()
        self._snapshotter.join()
        with self._write_lock:
            try:
                current = self.index.sequence == self.store.last_sequence
                if self.writes_snapshots and current and self.index.sequence != self.saved_sequence:
                    self.saved_sequence = self.index.save(self.snapshot_path)
            finally:
                self.store.close()

    # -- background snapshots -----------------------------------------------------------------------

    @property
    def unsaved_changes(self) -> int:
        """Template changes applied to the index since its last snapshot (what a crash would replay)."""
        return self.index.sequence - max(self.saved_sequence, 0)

    def _snapshot_due(self) -> bool:
        if self._closing or self.store.closed or self.unsaved_changes <= 0 or not self.writes_snapshots:
            return False
        every = self.settings.snapshot_seconds
        return self.unsaved_changes >= self.settings.snapshot_changes or (
            every > 0 and time.monotonic() - self._last_snapshot_time >= every
        )

    def _snapshot_if_due(self) -> None:
        if self.settings.snapshot_changes > 0 and self.unsaved_changes >= self.settings.snapshot_changes:
            self._snapshot_wake.set()

    def _snapshot_loop(self) -> None:
        """The snapshot thread: wakes on enough changes (set by writers) or on its timer."""
        every = self.settings.snapshot_seconds
        while not self._closing:
            timeout = max(0.5, every - (time.monotonic() - self._last_snapshot_time)) if every > 0 else None
            self._snapshot_wake.wait(timeout)
            self._snapshot_wake.clear()
            if not self._snapshot_due():
                continue
            try:
                started = time.perf_counter()
                self.saved_sequence = self.index.save(self.snapshot_path)
                self.snapshots_written += 1
                log.info(
                    "template index snapshot: sequence %d, %d templates, in %.1fs",
                    self.saved_sequence,
                    len(self.index),
                    time.perf_counter() - started,
                )
            except Exception as exc:  # keep serving; the next trigger retries
                self.last_snapshot_error = exc
                log.exception("template index snapshot failed")
            finally:
                self._last_snapshot_time = time.monotonic()

    def __len__(self) -> int:
        return len(self.index)

    @property
    def sequence(self) -> int:
        return self.index.sequence

    # -- validation ---------------------------------------------------------------------------------

    def _vectors(
        self, items: Sequence[tuple[int, int, bytes]], prefix: Sequence[str]
    ) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """Decode (modality, dimension, data) items into normalised rows; violations name `prefix[i]`."""
        d = self.settings.dimension
        violations: list[tuple[str, str]] = []
        good = np.ones(len(items), dtype=bool)
        for i, (modality, dimension, data) in enumerate(items):
            if (problem := _check_modality(modality)) is not None:
                violations.append((f"{prefix[i]}modality", problem))
            if not data and dimension == 0:
                violations.append((f"{prefix[i]}vector", "a feature vector is required"))
                good[i] = False
            elif dimension != d:
                violations.append((f"{prefix[i]}vector.dimension", f"dimension {dimension}: this gallery holds {d}"))
                good[i] = False
            elif len(data) != 4 * d:
                violations.append(
                    (f"{prefix[i]}vector.data", f"{len(data)} bytes: {d} float32 values take {4 * d} bytes")
                )
                good[i] = False
        matrix = np.zeros((len(items), d), dtype=np.float32)
        rows = np.flatnonzero(good)
        if len(rows):
            data = b"".join(items[i][2] for i in rows.tolist())
            matrix[rows] = np.frombuffer(data, dtype="<f4").reshape(len(rows), d)
        finite = np.asarray(np.isfinite(matrix).all(axis=1))
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.linalg.norm(np.where(np.isfinite(matrix), matrix, 0), axis=1)
        for i in rows[~finite[rows]].tolist():
            violations.append((f"{prefix[i]}vector.data", "holds NaN or infinite values"))
        for i in rows[finite[rows] & ~(norms[rows] > 0)].tolist():
            violations.append((f"{prefix[i]}vector.data", "is all zeros (no direction to compare)"))
        violations.sort(key=lambda v: v[0])
        return normalise(np.where(finite[:, None], matrix, 0)), violations

    def _probe(self, probe: Probe) -> np.ndarray:
        if not probe.data and probe.dimension == 0:
            raise TemplateError.single("probe", "a probe feature vector is required")
        vectors, violations = self._vectors([(probe.modality, probe.dimension, probe.data)], [""])
        if violations:
            raise TemplateError([(f.replace("vector", "probe", 1), d) for f, d in violations])
        return vectors[0]

    def _prepare(self, templates: Sequence[TemplateInput]) -> tuple[list[NewTemplate], np.ndarray]:
        if not templates:
            raise TemplateError.single("templates", "at least one template is required")
        limit = self.settings.max_templates_per_call
        if len(templates) > limit:
            raise TemplateError.single("templates", f"{len(templates)} templates: at most {limit:,} per call")
        prefixes = [f"templates[{i}]." for i in range(len(templates))]
        vectors, violations = self._vectors([(t.modality, t.dimension, t.data) for t in templates], prefixes)
        prepared: list[NewTemplate] = []
        for i, t in enumerate(templates):
            p = prefixes[i]
            subject = t.subject_id
            if not subject.strip():
                violations.append((f"{p}subject_id", "a subject id is required"))
            elif len(subject) > MAX_SUBJECT_ID_LENGTH or not subject.isprintable() or subject != subject.strip():
                violations.append(
                    (f"{p}subject_id", f"1 to {MAX_SUBJECT_ID_LENGTH} printable characters, no outer spaces")
                )
            if t.quality is not None and not (math.isfinite(t.quality) and 0 <= t.quality <= 1):
                violations.append((f"{p}quality", f"{t.quality} is not between 0 and 1"))
            documents: list[tuple[str, str]] = []
            for j, (state, number) in enumerate(t.documents):
                try:
                    documents.append((canonical_state(state), canonical_number(number)))
                except StateCodeError as exc:
                    violations.append((f"{p}documents[{j}].issuing_state", str(exc)))
                except DocumentNumberError as exc:
                    violations.append((f"{p}documents[{j}].document_number", str(exc)))
            prepared.append(NewTemplate(subject, int(t.modality), t.quality, tuple(dict.fromkeys(documents))))
        if violations:
            raise TemplateError(violations)
        return prepared, vectors

    # -- operations ---------------------------------------------------------------------------------

    def enrol(self, member: str, templates: Sequence[TemplateInput]) -> EnrolResult:
        """Enrol templates under the member's subjects, all or nothing; durable and searchable on return."""
        prepared, vectors = self._prepare(templates)
        with self._write_lock:
            outcome = self.store.enrol(member, prepared, vectors)
            if self._peers is not None:
                self._catch_up()  # another worker may have enrolled just before: take it all from the store
            else:
                self.index.add(outcome.template_ids, vectors, outcome.sequence)
        self.index.maybe_rebuild(self.store.open_snapshot)
        self._snapshot_if_due()
        return EnrolResult(tuple(int(i) for i in outcome.template_ids), outcome.sequence, outcome.subjects_created)

    def remove(self, member: str, template_ids: Sequence[int], subject_ids: Sequence[str]) -> RemoveResult:
        """Remove the member's templates by id and by subject, all or nothing; never returned after this."""
        if not template_ids and not subject_ids:
            raise TemplateError.single("template_ids", "give template ids or subject ids to remove")
        with self._write_lock:
            outcome = self.store.remove(member, template_ids, subject_ids)
            if self._peers is not None:
                self._catch_up()
            else:
                self.index.remove(outcome.template_ids, outcome.sequence)
        self.index.maybe_rebuild(self.store.open_snapshot)
        self._snapshot_if_due()
        return RemoveResult(len(outcome.template_ids), outcome.sequence)

    # -- worker processes sharing the store (idcheck.register.peers) ------------------------------------

    def follow(self, peers: SequenceChannel, *, writes_snapshots: bool) -> None:
        """Share the store with other processes: catch up with their template changes before searching,
        publish ours. Only one of the processes should write the index snapshot (one file for all)."""
        self._peers = peers
        self.writes_snapshots = writes_snapshots
        peers.publish(self.index.sequence)
        self._follower = PeerFollower(
            peers, lambda: self.index.sequence, self._catch_up, self._write_lock, name="gallery-peer-follower"
        )
        self._follower.start()

    def _catch_up_with_peers(self) -> None:
        if self._follower is not None:
            self._follower.catch_up_if_behind()

    def _catch_up(self) -> None:
        """Apply every template change committed after the index's sequence (write lock held)."""
        changes = self.store.changes_since(self.index.sequence)
        if changes.sequence > self.index.sequence:
            self.index.remove(changes.removed, changes.sequence)
            self.index.add(changes.added.ids, changes.added.vectors, changes.sequence)
        self.store.note_sequence(changes.sequence)
        if self._peers is not None:
            self._peers.publish(changes.sequence)

    def verify_point(self) -> OperatingPoint:
        return OperatingPoint(self.settings.verify_threshold, self.settings.verify_fmr, "FMR")

    def identify_point(self) -> OperatingPoint:
        return OperatingPoint(self.settings.identify_threshold, self.settings.identify_fpir, "FPIR")

    def _audit(
        self,
        caller: Caller | None,
        kind: str,
        verdict: str,
        template_ids: Sequence[int],
        sequence: int,
        *,
        document: tuple[str, str] = ("", ""),
        subject_id: str = "",
    ) -> str:
        """Queue one verify or identify call for the audit log; returns its query id."""
        query_id = new_query_id()
        if self.audit is None:
            return query_id
        who = caller or Caller("", "")
        call_id = self.audit.next_call_id()
        matched = ",".join(str(int(t)) for t in template_ids)
        self.audit.submit(
            AuditCall(call_id, query_id, utc_now(), who.member, who.role, who.peer, sequence, 1, True),
            [AuditDocument(call_id, 0, kind, document[0], document[1], verdict, matched, subject_id)],
        )
        return query_id

    def verify(
        self,
        probe: Probe,
        *,
        subject_id: str | None = None,
        document: tuple[str, str] | None = None,
        caller: Caller | None = None,
    ) -> VerifyResult:
        """Compare the probe with the claimed subject's or document's templates (exact scores).

        The answer is audited for `caller` (matched: the best template when it is a MATCH)."""
        self._catch_up_with_peers()
        violations: list[tuple[str, str]] = []
        vector: np.ndarray | None = None
        try:
            vector = self._probe(probe)
        except TemplateError as exc:
            violations += exc.violations
        key: tuple[str, str] | None = None
        if subject_id is None and document is None:
            violations.append(("claim", "a subject_id or a document is required"))
        elif subject_id is not None and not subject_id.strip():
            violations.append(("subject_id", "a subject id is required"))
        elif document is not None:
            try:
                key = (canonical_state(document[0]), "")
            except StateCodeError as exc:
                violations.append(("document.issuing_state", str(exc)))
            try:
                key = (key[0] if key else "", canonical_number(document[1]))
            except DocumentNumberError as exc:
                violations.append(("document.document_number", str(exc)))
        if violations:
            raise TemplateError(violations)
        assert vector is not None
        sequence = self.store.last_sequence
        if key is not None:
            stored = self.store.of_document(*key)
            if not len(stored):
                raise TemplateNotFound(f"no template is linked to document {key[0]} {key[1]}", field="document")
        else:
            assert subject_id is not None
            stored = self.store.of_subject(subject_id)
            if not len(stored):
                raise TemplateNotFound(f"no templates for subject {subject_id!r}", field="subject_id")
        scores = stored.vectors @ vector
        best = int(np.argmax(scores))
        score = float(scores[best])
        point = self.verify_point()
        decision = Decision.MATCH if score >= point.threshold else Decision.NO_MATCH
        best_id = int(stored.ids[best])
        query_id = self._audit(
            caller,
            "verify",
            decision.value,
            [best_id] if decision == Decision.MATCH else [],
            sequence,
            document=key or ("", ""),
            subject_id=subject_id if key is None and subject_id is not None else "",
        )
        return VerifyResult(
            decision=decision,
            score=score,
            operating_point=point,
            best_template_id=best_id,
            subject_id=stored.subjects[best],
            templates_compared=len(stored),
            template_sequence=sequence,
            query_id=query_id,
        )

    def identify(self, probe: Probe, max_candidates: int = 0, *, caller: Caller | None = None) -> IdentifyResult:
        """Subjects scoring at or above the identify threshold, best first, at most `max_candidates`.

        The answer is audited for `caller` (matched: each candidate's best template, in rank order)."""
        self._catch_up_with_peers()
        violations: list[tuple[str, str]] = []
        limit = self.settings.max_candidates
        if not 0 <= max_candidates <= limit:
            violations.append(("max_candidates", f"{max_candidates}: between 1 and {limit} (0 for the default)"))
        vector: np.ndarray | None = None
        try:
            vector = self._probe(probe)
        except TemplateError as exc:
            violations = exc.violations + violations
        if violations:
            raise TemplateError(violations)
        assert vector is not None
        k = max_candidates or self.settings.default_candidates
        point = self.identify_point()
        sequence = self.index.sequence
        kind = str(self.index.kind)
        gallery_size = len(self.index)
        _scores, ids = self.index.search(vector[None, :], max(self.settings.shortlist, 4 * k))
        shortlist = ids[0][ids[0] >= 0]
        stored = self.store.fetch(shortlist)  # removed templates are absent: never returned
        exact = stored.vectors @ vector if len(stored) else np.empty(0, dtype=np.float32)
        order = np.lexsort((stored.ids, -exact))
        best: dict[str, tuple[float, int, str]] = {}
        for i in order:
            if exact[i] < point.threshold:
                break
            subject = stored.subjects[i]
            if subject not in best:
                best[subject] = (float(exact[i]), int(stored.ids[i]), stored.owners[i])
                if len(best) == k:
                    break
        documents = self.store.documents_of_subjects(best) if best else {}
        candidates = tuple(
            Candidate(subject, score, owner, tuple(documents.get(subject, ())), tid, rank)
            for rank, (subject, (score, tid, owner)) in enumerate(best.items(), start=1)
        )
        query_id = self._audit(
            caller,
            "identify",
            CANDIDATES if candidates else NO_CANDIDATES,
            [c.template_id for c in candidates],
            sequence,
        )
        return IdentifyResult(candidates, point, gallery_size, sequence, kind, query_id)


__all__ = [
    "Candidate",
    "Decision",
    "EnrolResult",
    "Gallery",
    "GallerySettings",
    "IdentifyResult",
    "Modality",
    "OperatingPoint",
    "Probe",
    "RemoveResult",
    "TemplateInput",
    "VerifyResult",
]
