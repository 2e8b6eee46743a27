"""Upload values shared by the register, the store and the wire: modes, rejected rows, outcomes."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field

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
    """The accepted rows of an upload as one Arrow table (ACCEPTED_SCHEMA), for the store's bulk path.

    Invariants the producer (idcheck.register.columns.in_key_order) guarantees: every row is valid, no two rows
    share a document key, and rows are sorted by key (issuing state, number, class), the order in which the
    store inserts them so that its unique index and record ids grow at their ends.
    """

    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows
