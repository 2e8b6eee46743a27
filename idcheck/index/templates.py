"""The biometric template index: cosine similarity search over FAISS, exact while small, approximate when large.

Vectors are L2-normalised on the way in, so the inner product the indexes compute is the cosine similarity.

- Exact (`IndexIDMap2(IndexFlatIP)`) while the gallery holds at most `approximate_above` templates; it is
  also the reference every recall figure is measured against.
- Approximate above that: `IndexIVFScalarQuantizer` with 8-bit codes (512 bytes per 512-d template, against
  2,048 for float32), trained on the gallery itself, `nprobe` lists searched. An index trained on N templates
  serves N to `rebuild_growth` * N before it is retrained, so its `nlist` is sqrt of the geometric middle of
  that range (sqrt(N * sqrt(growth))): lists stay within growth^(1/4) of the ideal sqrt(size) length (1.19x
  at the default growth of 2), so search time stays flat as the gallery grows between trainings. IVF-SQ8
  is chosen for recall first at a bounded memory cost: it keeps every vector's code (no graph links to
  maintain), supports `remove_ids` directly, and its shortlist is re-scored exactly by the caller from the
  stored vectors, so the small quantisation error never reaches a reported score.
- Rebuilds happen in the background when the kind no longer fits the size (exact grown past
  `approximate_above`, approximate shrunk below half of it), when the gallery has grown or shrunk by
  `rebuild_growth` (2) since the size the index was trained on, or when as many templates were removed as the
  index held when it was built (churn). Queries keep using the current index while the new one is trained;
  changes made meanwhile are journaled and replayed on the new index (most of them before taking the writer
  lock, the tail under it), which is then swapped in. A rebuild that finds another one due when it ends (the
  gallery grew past the next trigger while it trained) chains it, so no rebuild waits for the next change.
- Memory: FAISS grows an inverted list's arrays by doubling, so a freshly filled index can hold up to twice
  its codes; a new index's lists are copied to their exact sizes before the swap, and after a swap or a
  snapshot the freed heap is handed back to the system (`malloc_trim`, glibc), which otherwise keeps the
  old index's pages resident in its arenas.
- Removal is immediate: `remove` deletes the ids from the index under the writer lock before it returns, so
  a removed template is never returned once the removal is acknowledged. IVF and flat indexes delete their
  entries physically (no tombstones), and rebuilds retrain and compact, so memory follows the gallery under
  enrol/remove churn.
- Concurrency: searches share a reader lock and run concurrently; changes take the writer lock. FAISS's
  OpenMP thread count is set explicitly from the configuration in every thread that calls FAISS (the OpenMP
  setting is per calling thread), so gRPC worker threads times OpenMP threads do not oversubscribe the cores.
- Snapshots: `save` writes the index with the template sequence number it reflects, its kind and dimension,
  and a SHA-256 of the serialised index, atomically (temporary file, fsync, rename). Only the in-memory
  serialisation holds the reader lock (searches go on; changes wait for it); the checksum and the disk write do
  not. `load` refuses anything whose magic, header, length or checksum does not match before FAISS parses it.

Pure compute: no gRPC, no server, no store (vectors come in through `VectorSource`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import enum
import hashlib
import json
import logging
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from idcheck.cpus import every_cpu, on_every_cpu

log = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"IDCKTIX1"
SNAPSHOT_FORMAT = 1
MIN_TRAINING_POINTS_PER_LIST = 39  # below this FAISS k-means warns and centroids are poor
MAX_TRAINING_POINTS_PER_LIST = 64


class IndexKind(enum.StrEnum):
    EXACT = "exact"
    APPROXIMATE = "approximate"


class SnapshotError(Exception):
    """A snapshot that cannot be trusted (missing, foreign, truncated, corrupt or for other settings)."""


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """How the template index is built and searched (see the module docstring)."""

    dimension: int = 512
    approximate_above: int = 50_000
    nprobe: int = 64
    nlist: int = 0  # 0: sqrt(N * sqrt(rebuild_growth)), chosen at each training
    rebuild_growth: float = 2.0
    omp_threads: int = 1

    def kind_for(self, n: int) -> IndexKind:
        return IndexKind.APPROXIMATE if n > self.approximate_above else IndexKind.EXACT

    def nlist_for(self, n: int) -> int:
        """Lists for an index trained on `n` templates: sized for the geometric middle of the sizes it will
        serve before the next training (n to rebuild_growth * n), about sqrt of that size."""
        expected = max(n, 1) * math.sqrt(max(self.rebuild_growth, 1.0))
        wanted = self.nlist or int(math.sqrt(expected))
        return max(1, min(wanted, n // MIN_TRAINING_POINTS_PER_LIST))


class VectorSource(Protocol):
    """A consistent read of every template: what a (re)build is made from."""

    @property
    def sequence(self) -> int: ...

    @property
    def count(self) -> int: ...

    def sample(self, n: int) -> np.ndarray:
        """About `n` normalised vectors drawn uniformly from the templates (for training)."""
        ...

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every template as (int64 ids, normalised float32 vectors) batches."""
        ...


SourceOpener = Callable[[], AbstractContextManager[VectorSource]]


class ArraySource:
    """A `VectorSource` over arrays in memory (tests, benchmarks, building from a file)."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, sequence: int = 0, batch: int = 65_536) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.vectors = normalise(vectors)
        self._sequence = sequence
        self._batch = batch

    @property
    def sequence(self) -> int:
        return self._sequence

    @property
    def count(self) -> int:
        return len(self.ids)

    def sample(self, n: int) -> np.ndarray:
        if n >= len(self.ids):
            return self.vectors
        pick = np.random.default_rng(0).choice(len(self.ids), size=n, replace=False)
        return self.vectors[np.sort(pick)]

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.ids), self._batch):
            yield self.ids[start : start + self._batch], self.vectors[start : start + self._batch]

    def __enter__(self) -> ArraySource:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as contiguous float32 (rows of norm 0 stay 0: callers refuse them first)."""
    out = np.array(vectors, dtype=np.float32, copy=True, order="C", ndmin=2)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers so changes are not starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


_omp = threading.local()


def set_omp_threads(n: int) -> None:
    """Set FAISS's OpenMP threads for the calling thread (the OpenMP setting is per thread)."""
    if getattr(_omp, "n", None) != n:
        faiss.omp_set_num_threads(max(1, n))
        _omp.n = n


def omp_cpus(n: int) -> AbstractContextManager[None]:
    """Where a FAISS call with `n` OpenMP threads runs: on every CPU when n is above 1, else where the caller is. A
    server process keeps its calls' threads on one CPU (idcheck/cpus.py), and the threads OpenMP starts for a call
    inherit the CPUs of the thread that first calls it: kept there, faiss_threads 2 would take turns on one core."""
    return every_cpu() if n > 1 else contextlib.nullcontext()


def _ids(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64)


def _libc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _libc_malloc_trim()


def release_free_memory() -> None:
    """Hand freed heap pages back to the system (glibc `malloc_trim`; a no-op elsewhere).

    A rebuild frees a whole index, its training sample and the store's read batches, much of it from the
    rebuild thread's own arena, which glibc does not trim by itself: without this the resident size keeps the
    old index's pages long after the swap.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def compact_lists(index: faiss.Index) -> None:
    """Copy every inverted list of an IVF index into arrays of its exact size (no-op for other kinds).

    FAISS appends to a list by growing its arrays geometrically, so an index filled by batches holds up to
    twice the memory its codes need. Not thread-safe: call on an index nobody else uses, or under the writer lock.
    """
    if not isinstance(index, faiss.IndexIVF):
        return
    old = index.invlists
    assert old is not None  # an IVF index always has its inverted lists
    fresh = faiss.ArrayInvertedLists(index.nlist, index.code_size)
    for list_no in range(index.nlist):
        size = old.list_size(list_no)
        if size:  # the first add_entries on an empty list allocates exactly `size` entries
            fresh.add_entries(list_no, size, old.get_ids(list_no), old.get_codes(list_no))
    index.replace_invlists(fresh, True)
    fresh.this.disown()  # type: ignore[attr-defined]  # the index owns it now (SWIG proxy, not in faiss's stubs)


def build_index(settings: IndexSettings, source: VectorSource) -> tuple[faiss.Index, IndexKind]:
    """A new index of the kind the source's size calls for, holding every template of the source."""
    set_omp_threads(settings.omp_threads)
    d = settings.dimension
    kind = settings.kind_for(source.count)
    if kind is IndexKind.EXACT:
        index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    else:
        nlist = settings.nlist_for(source.count)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.seed = 1234
        training = source.sample(nlist * MAX_TRAINING_POINTS_PER_LIST)
        index.train(np.ascontiguousarray(training, dtype=np.float32))
        index.nprobe = min(settings.nprobe, nlist)
    for ids, vectors in source.batches():
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), _ids(ids))
    compact_lists(index)
    return index, kind


def _replay(index: faiss.Index, journal: list[tuple[int, str, np.ndarray, np.ndarray | None]], base: int) -> None:
    """Apply journaled changes made after sequence `base` (the read a new index was built from) to it."""
    for seq, op, ids, vectors in journal:
        if seq <= base:
            continue  # already in the read the new index was built from
        if op == "add" and vectors is not None and len(ids):
            index.add_with_ids(vectors, ids)
        elif op == "remove" and len(ids):
            index.remove_ids(faiss.IDSelectorBatch(ids))


@dataclass(frozen=True, slots=True)
class IndexStats:
    kind: IndexKind
    ntotal: int
    sequence: int
    built_size: int
    trained_size: int
    removed_since_build: int
    nlist: int
    nprobe: int
    rebuilding: bool
    rebuilds: int


class TemplateIndex:
    """The gallery's FAISS index: add, remove, search, background rebuild, checksummed snapshots."""

    def __init__(self, settings: IndexSettings, index: faiss.Index | None = None, sequence: int = 0) -> None:
        self.settings = settings
        self._lock = ReadWriteLock()
        if index is None:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(settings.dimension))
        self._index = index
        self._kind = IndexKind.APPROXIMATE if isinstance(index, faiss.IndexIVF) else IndexKind.EXACT
        self._configure(index)
        self._sequence = sequence
        self._built_size = index.ntotal
        self._trained_size = index.ntotal  # templates the approximate index was trained on
        self._removed_since_build = 0
        self._journal: list[tuple[int, str, np.ndarray, np.ndarray | None]] | None = None
        self._rebuild_thread: threading.Thread | None = None
        self._rebuild_guard = threading.Lock()
        self._save_lock = threading.Lock()
        self.rebuilds = 0
        self.last_rebuild_error: BaseException | None = None

    def _configure(self, index: faiss.Index) -> None:
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = min(self.settings.nprobe, index.nlist)

    # -- state --------------------------------------------------------------------------------------

    @classmethod
    def build(cls, settings: IndexSettings, source: VectorSource) -> TemplateIndex:
        """A new index holding every template of `source`, at its sequence number."""
        index, _kind = build_index(settings, source)
        built = cls(settings, index, source.sequence)
        built._trained_size = source.count
        return built

    @property
    def kind(self) -> IndexKind:
        return self._kind

    @property
    def sequence(self) -> int:
        """Template sequence number of the last change applied."""
        return self._sequence

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def stats(self) -> IndexStats:
        index = self._index
        ivf = index if isinstance(index, faiss.IndexIVF) else None
        return IndexStats(
            kind=self._kind,
            ntotal=int(index.ntotal),
            sequence=self._sequence,
            built_size=self._built_size,
            trained_size=self._trained_size,
            removed_since_build=self._removed_since_build,
            nlist=int(ivf.nlist) if ivf is not None else 0,
            nprobe=int(ivf.nprobe) if ivf is not None else 0,
            rebuilding=self.rebuilding,
            rebuilds=self.rebuilds,
        )

    # -- changes ------------------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray, sequence: int) -> None:
        """Add normalised vectors under their template ids; `sequence` is the store's after the change."""
        ids = _ids(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        set_omp_threads(self.settings.omp_threads)
        with omp_cpus(self.settings.omp_threads), self._lock.write():
            if len(ids):
                self._index.add_with_ids(vectors, ids)
            if self._journal is not None:
                self._journal.append((sequence, "add", ids, vectors))
            self._sequence = max(self._sequence, sequence)

    def remove(self, ids: np.ndarray, sequence: int) -> int:
        """Remove templates by id; once this returns, searches never return them. Returns how many were held."""
        ids = _ids(ids)
        set_omp_threads(self.settings.omp_threads)
        with omp_cpus(self.settings.omp_threads), self._lock.write():
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids))) if len(ids) else 0
            self._removed_since_build += removed
            if self._journal is not None:
                self._journal.append((sequence, "remove", ids, None))
            self._sequence = max(self._sequence, sequence)
        return removed

    # -- search -------------------------------------------------------------------------------------

    def search(self, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per normalised probe, best first; missing entries have id -1."""
        probes = np.ascontiguousarray(probes, dtype=np.float32).reshape(-1, self.settings.dimension)
        set_omp_threads(self.settings.omp_threads)
        with omp_cpus(self.settings.omp_threads), self._lock.read():
            index = self._index
            k = max(1, min(k, max(int(index.ntotal), 1)))
            scores, ids = index.search(probes, k)
        return scores, ids

    # -- rebuilds -----------------------------------------------------------------------------------

    def rebuild_reason(self) -> str:
        """Why the index should be rebuilt now, or "" when it fits the gallery."""
        n = len(self)
        wanted = self.settings.kind_for(n)
        growth = self.settings.rebuild_growth
        if self._kind is IndexKind.EXACT and wanted is IndexKind.APPROXIMATE:
            return f"{n} templates exceed approximate_above={self.settings.approximate_above}"
        if self._kind is IndexKind.APPROXIMATE:
            if n < self.settings.approximate_above // 2:
                return f"{n} templates fit an exact index again"
            trained = max(self._trained_size, 1)
            if n >= growth * trained:
                return f"grown from {trained} to {n} templates since training"
            if n * growth <= trained:
                return f"shrunk from {trained} to {n} templates since training"
            if self._removed_since_build >= max(self._built_size, 1):
                return f"{self._removed_since_build} removals since the last build (compaction)"
        return ""

    @property
    def rebuilding(self) -> bool:
        t = self._rebuild_thread
        return t is not None and t.is_alive()

    def maybe_rebuild(self, open_source: SourceOpener, *, background: bool = True) -> bool:
        """Start a rebuild if one is due and none is running; True when one was started (or done)."""
        reason = self.rebuild_reason()
        if not reason:
            return False
        with self._rebuild_guard:
            if self.rebuilding:
                return False
            log.info("template index rebuild: %s", reason)
            if not background:
                self.rebuild(open_source)
                return True
            self._rebuild_thread = threading.Thread(
                target=on_every_cpu(self._rebuild_logged),
                args=(open_source,),
                name="template-index-rebuild",
                daemon=True,
            )
            self._rebuild_thread.start()
        return True

    def wait_rebuild(self, timeout: float | None = None) -> None:
        t = self._rebuild_thread
        if t is not None:
            t.join(timeout)

    def _rebuild_logged(self, open_source: SourceOpener) -> None:
        try:
            self.rebuild(open_source)
            # The gallery may have grown past the next trigger while this one trained: chain it now rather
            # than wait for a change that may not come (the last enrolment of a bulk load).
            while reason := self.rebuild_reason():
                log.info("template index rebuild: %s", reason)
                self.rebuild(open_source)
        except BaseException as exc:  # keep serving from the current index; the next change retries
            self.last_rebuild_error = exc
            log.exception("template index rebuild failed; still serving the current index")

    def rebuild(self, open_source: SourceOpener) -> None:
        """Build a new index from a consistent read of the store, then swap it in.

        Searches and changes go on against the current index while the new one is trained and filled;
        changes are journaled from before the read starts, and those after the read's sequence number are
        replayed on the new index under the writer lock just before the swap.
        """
        started = time.perf_counter()
        with self._lock.write():
            self._journal = []
        try:
            with open_source() as source:
                new_index, kind = build_index(self.settings, source)
                base, trained = source.sequence, source.count
            # The new index is private until the swap: replay what was journaled while it was built without
            # the lock (searches and changes go on), then only the tail journaled meanwhile under it.
            with self._lock.write():
                pending = list(self._journal or [])
            _replay(new_index, pending, base)
            compact_lists(new_index)
            with self._lock.write():
                _replay(new_index, (self._journal or [])[len(pending) :], base)
                self._journal = None
                self._configure(new_index)
                old, self._index = self._index, new_index
                self._kind = kind
                self._built_size = int(new_index.ntotal)
                self._trained_size = trained
                self._removed_since_build = 0
                self._sequence = max(self._sequence, base)
                self.rebuilds += 1
            del old, pending
        finally:
            with self._lock.write():
                self._journal = None
        release_free_memory()
        stats = self.stats()
        log.info(
            "template index rebuilt: %s, %d templates, trained on %d, nlist %d, nprobe %d, in %.1fs",
            stats.kind,
            stats.ntotal,
            stats.trained_size,
            stats.nlist,
            stats.nprobe,
            time.perf_counter() - started,
        )

    # -- snapshots ----------------------------------------------------------------------------------

    def save(self, path: Path) -> int:
        """Write a checksummed snapshot tagged with the sequence number it reflects (atomic replace).

        Returns that sequence number. Only the in-memory serialisation holds the reader lock.
        """
        path = Path(path)
        with self._save_lock:  # one writer of the temporary file at a time
            sequence = self._save(path)
        release_free_memory()  # the serialised copy was as large as the index
        return sequence

    def _save(self, path: Path) -> int:
        with self._lock.read():
            data = faiss.serialize_index(self._index)
            sequence = self._sequence
            header = {
                "format": SNAPSHOT_FORMAT,
                "sequence": sequence,
                "dimension": self.settings.dimension,
                "kind": str(self._kind),
                "ntotal": int(self._index.ntotal),
                "built_size": self._built_size,
                "trained_size": self._trained_size,
                "nbytes": int(data.nbytes),
                "sha256": hashlib.sha256(data.data).hexdigest(),
            }
        head = json.dumps(header, sort_keys=True).encode()
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as fh:
            fh.write(SNAPSHOT_MAGIC + struct.pack("<I", len(head)) + head)
            fh.write(data.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename durable too
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return sequence

    @classmethod
    def load(cls, path: Path, settings: IndexSettings) -> TemplateIndex:
        """The index of a snapshot this code wrote, verified before FAISS parses it. Raises SnapshotError."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SnapshotError(f"cannot read {path}: {exc.strerror or exc}") from None
        fixed = len(SNAPSHOT_MAGIC) + 4
        if len(raw) < fixed or not raw.startswith(SNAPSHOT_MAGIC):
            raise SnapshotError(f"{path} is not an idcheck template index snapshot")
        (head_len,) = struct.unpack_from("<I", raw, len(SNAPSHOT_MAGIC))
        try:
            header = json.loads(raw[fixed : fixed + head_len])
            sequence, nbytes, digest = int(header["sequence"]), int(header["nbytes"]), str(header["sha256"])
            dimension, kind = int(header["dimension"]), IndexKind(header["kind"])
            fmt, ntotal, built_size = int(header["format"]), int(header["ntotal"]), int(header["built_size"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise SnapshotError(f"{path}: unreadable header ({exc})") from None
        if fmt != SNAPSHOT_FORMAT:
            raise SnapshotError(f"{path}: snapshot format {fmt}, this code reads {SNAPSHOT_FORMAT}")
        if dimension != settings.dimension:
            raise SnapshotError(f"{path}: dimension {dimension}, configured {settings.dimension}")
        body = memoryview(raw)[fixed + head_len :]
        if len(body) != nbytes:
            raise SnapshotError(f"{path}: {len(body)} bytes of index, header says {nbytes}")
        if hashlib.sha256(body).hexdigest() != digest:
            raise SnapshotError(f"{path}: checksum mismatch")
        index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
        if index.ntotal != ntotal or index.d != dimension:
            raise SnapshotError(f"{path}: index content disagrees with its header")
        loaded = cls(settings, index, sequence)
        if loaded.kind is not kind:
            raise SnapshotError(f"{path}: index kind disagrees with its header")
        loaded._built_size = built_size
        loaded._trained_size = int(header.get("trained_size", built_size))
        return loaded


__all__ = [
    "ArraySource",
    "IndexKind",
    "IndexSettings",
    "IndexStats",
    "ReadWriteLock",
    "SnapshotError",
    "TemplateIndex",
    "VectorSource",
    "build_index",
    "compact_lists",
    "normalise",
    "release_free_memory",
    "set_omp_threads",
]
