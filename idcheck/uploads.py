"""Upload values shared by the register, the store and the wire: modes, rejected rows, outcomes."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

#: Columns of a record file (idcheck.client.files) and of an Arrow upload payload (`RecordBatch.arrow_ipc` in
#: register.proto): text, but class and status, which are their enum numbers on the wire.
RECORD_COLUMNS = (
    "issuing_state",
    "document_number",
    "document_class",
    "status",
    "event_date",
    "surname",
    "given_names",
    "birth_date",
    "nationality",
    "expiry_date",
    "instructions",
)
RECORD_INTEGER_COLUMNS = ("document_class", "status")
RECORD_TEXT_COLUMNS = tuple(c for c in RECORD_COLUMNS if c not in RECORD_INTEGER_COLUMNS)
REQUIRED_RECORD_COLUMNS = ("issuing_state", "document_number", "document_class", "status", "event_date")


class UploadMode(enum.IntEnum):
    """How an upload relates to the member's other records. Values match `idcheck.v1.UploadMode`."""

    UNSPECIFIED = 0
    INCREMENTAL = 1
    REPLACE_ALL = 2


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected row of an upload: its 0-based index in the whole upload, the field and why."""

    row_index: int
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class UploadOutcome:
    """What an upload did. Stored with the upload so that a re-sent upload id gets the same answer."""

    upload_id: str
    received: int
    accepted: int
    created: int
    updated: int
    unchanged: int
    cancelled: int
    register_sequence: int
    rejections: tuple[Rejection, ...] = field(default_factory=tuple)
    replayed: bool = False

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def to_json(self) -> str:
        d = asdict(self)
        d["rejections"] = [[r.row_index, r.field, r.reason] for r in self.rejections]
        d.pop("replayed")
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, *, replayed: bool = False) -> UploadOutcome:
        d = json.loads(text)
        d["rejections"] = tuple(Rejection(int(i), f, r) for i, f, r in d["rejections"])
        return cls(**d, replayed=replayed)


#: Validated upload rows in column form: what an upload session hands the store (one row per accepted row).
ACCEPTED_SCHEMA = pa.schema(
    [
        ("row_index", pa.int64()),  # 0-based index of the row in the whole upload
        ("issuing_state", pa.string()),  # canonical state code
        ("number", pa.string()),  # canonical document number
        ("document_class", pa.int8()),  # DocumentClass value
        ("number_printed", pa.string()),
        ("status", pa.int8()),  # RecordStatus value
        ("event_date", pa.string()),  # ISO 8601
        ("surname", pa.string()),
        ("given_names", pa.string()),
        ("birth_date", pa.string()),
        ("nationality", pa.string()),
        ("expiry_date", pa.string()),
        ("instructions", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class UploadColumns:
    """The accepted rows of an upload as one Arrow table (ACCEPTED_SCHEMA), for the store's bulk path, and their
    order by key (issuing state, number, class): the order in which the store inserts them, so that its unique
    index and record ids grow at their ends.

    `order` holds the positions in `table` of the rows in key order; None when `table` is in key order already.
    Gathering every row of a big upload into key order costs seconds (6.6 s at 10M rows), so the store takes
    the rows it writes chunk by chunk, in a thread, while SQLite writes the previous chunk.

    Invariants the producer (idcheck.register.columns.key_order) guarantees: every row in the order is valid
    and no two of them share a document key (rows of `table` left out of `order` are repeats, already rejected).
    """

    table: pa.Table
    order: np.ndarray | None = None

    def __len__(self) -> int:
        return self.table.num_rows if self.order is None else len(self.order)

    def positions(self, idx: np.ndarray | None = None) -> np.ndarray | None:
        """Positions in `table` of the rows at key-order positions `idx` (every row when None); None means all
        of `table`, in its own order."""
        if self.order is None:
            return idx
        return self.order if idx is None else self.order[idx]

    def column(self, name: str) -> pa.ChunkedArray:
        """One column's values in key order."""
        column = self.table.column(name)
        return column if self.order is None else column.take(pa.array(self.order, pa.int64()))

    def in_key_order(self) -> pa.Table:
        """Every row in key order, as one table."""
        return self.table if self.order is None else self.table.take(pa.array(self.order, pa.int64()))
