"""Reading record files and passenger manifests (CSV, Parquet, Arrow IPC) in bounded chunks with pyarrow.

Record files have one row per document with the columns below; names are case-insensitive and the
optional ones may be missing. Manifests have either an `mrz` column or `issuing_state` and
`document_number` columns (plus optional `document_class`, `birth_date`, `reference`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from idcheck.uploads import RECORD_COLUMNS as RECORD_COLUMNS  # re-exported: the file columns
from idcheck.uploads import REQUIRED_RECORD_COLUMNS as REQUIRED_RECORD_COLUMNS
from idcheck.v1 import register_pb2 as pb

_CLASS_NAMES = {
    "": 0,
    "UNSPECIFIED": 0,
    "PASSPORT": 1,
    "P": 1,
    "ID_CARD": 2,
    "ID": 2,
    "IDCARD": 2,
    "I": 2,
    "ID CARD": 2,
    "VISA": 3,
    "V": 3,
    "OTHER": 4,
    "O": 4,
}
_STATUS_NAMES = {
    s: pb.RecordStatus.Value(f"RECORD_STATUS_{s}")
    for s in ("LOST", "STOLEN", "STOLEN_BLANK", "REVOKED", "INVALIDATED", "CANCELLED")
}


class FileFormatError(ValueError):
    """A file that cannot be read as records or a manifest; the message says why."""


def document_class_value(text: str) -> int:
    """'passport', 'P', 'id_card', 'visa', '1' ... -> the DocumentClass number (-1 when unknown)."""
    t = text.strip().upper().replace("-", "_")
    if t.isdigit():
        return int(t)
    return _CLASS_NAMES.get(t, _CLASS_NAMES.get(t.replace("DOCUMENT_CLASS_", ""), -1))


def status_value(text: str) -> int:
    """'stolen', 'STOLEN_BLANK', '2' ... -> the RecordStatus number (-1 when unknown)."""
    t = text.strip().upper().replace("-", "_").replace(" ", "_").removeprefix("RECORD_STATUS_")
    if t.isdigit():
        return int(t)
    return _STATUS_NAMES.get(t, -1)


def iter_tables(path: Path, *, chunk_rows: int = 5000) -> Iterator[pa.Table]:
    """The file as tables of at most about `chunk_rows` rows, all columns as strings, names lower-cased."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            # pre_buffer (the default) keeps every column chunk read so far: memory then grows with the file.
            parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
            batches: Iterator[pa.RecordBatch] = parquet.iter_batches(batch_size=chunk_rows)
        elif suffix in (".arrow", ".feather", ".ipc"):
            reader = ipc.open_file(path)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        elif suffix in (".csv", ".txt"):
            # Every column is read as text: document numbers such as 012345678 must keep their zeros.
            with path.open(newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh), [])
            if not header:
                raise FileFormatError(f"{path}: empty file (expected a header row)")
            batches = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=1 << 20),
                convert_options=pacsv.ConvertOptions(
                    strings_can_be_null=False, column_types={name: pa.string() for name in header}
                ),
            )
        else:
            raise FileFormatError(f"{path}: unknown file type {suffix!r} (use .csv, .parquet or .arrow)")
        for batch in batches:
            table = pa.Table.from_batches([batch])
            table = table.rename_columns([c.strip().lower() for c in table.column_names])
            table = table.cast(pa.schema([pa.field(c, pa.string()) for c in table.column_names]))
            for start in range(0, table.num_rows, chunk_rows):
                yield table.slice(start, chunk_rows)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path}: {exc}") from None


def _columns(table: pa.Table, names: tuple[str, ...]) -> dict[str, list[str]]:
    n = table.num_rows
    return {c: [v or "" for v in table.column(c).to_pylist()] if c in table.column_names else [""] * n for c in names}


def read_records(path: Path, *, chunk_rows: int = 5000) -> Iterator[list[pb.Record]]:
    """Record batches for an upload. Unknown class or status names are sent as -1 so the server rejects the
    row with a reason (the row stays in the upload's numbering)."""
    for table in iter_tables(path, chunk_rows=chunk_rows):
        missing = [c for c in REQUIRED_RECORD_COLUMNS if c not in table.column_names]
        if missing:
            raise FileFormatError(
                f"{path}: missing column(s) {', '.join(missing)}; have {', '.join(table.column_names)}"
            )
        cols = _columns(table, RECORD_COLUMNS)
        batch = []
        for i in range(table.num_rows):
            batch.append(
                pb.Record(
                    key=pb.DocumentKey(
                        issuing_state=cols["issuing_state"][i],
                        document_number=cols["document_number"][i],
                        document_class=pb.DocumentClass.ValueType(
                            max(-1, document_class_value(cols["document_class"][i]))
                        ),
                    ),
                    status=pb.RecordStatus.ValueType(status_value(cols["status"][i])),
                    event_date=cols["event_date"][i],
                    holder=pb.HolderData(
                        surname=cols["surname"][i],
                        given_names=cols["given_names"][i],
                        birth_date=cols["birth_date"][i],
                        nationality=cols["nationality"][i],
                        expiry_date=cols["expiry_date"][i],
                    ),
                    instructions=cols["instructions"][i],
                )
            )
        yield batch


# Arrow upload payloads (RecordBatch.arrow_ipc in register.proto): text columns as utf8, class and status as
# their enum numbers. A payload stays well under the 32 MiB message limit and the server's 100,000 rows.
MAX_ARROW_ROWS = 100_000
MAX_ARROW_BYTES = 16 * 1024 * 1024
_INT32 = (-(2**31), 2**31 - 1)


def _enum_numbers(column: pa.ChunkedArray | pa.Array, parse: Callable[[str], int]) -> pa.Array:
    """Class or status names ('passport', 'STOLEN', '2' ...) to enum numbers, parsed once per distinct value;
    unknown names (and numbers a protobuf enum field could not carry) become -1, which the server rejects."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.fill_null(column, "").dictionary_encode()
    numbers = []
    for text in encoded.dictionary.to_pylist():
        value = parse(text)
        numbers.append(value if _INT32[0] <= value <= _INT32[1] else -1)
    lookup = np.asarray(numbers or [0], np.int32)
    return pa.array(lookup[encoded.indices.to_numpy(zero_copy_only=False)], pa.int32())


def wire_table(table: pa.Table) -> pa.Table:
    """A chunk of a record file (text columns, as `iter_tables` gives them) in the Arrow upload schema."""
    missing = [c for c in REQUIRED_RECORD_COLUMNS if c not in table.column_names]
    if missing:
        raise FileFormatError(f"missing column(s) {', '.join(missing)}; have {', '.join(table.column_names)}")
    arrays: dict[str, pa.Array] = {}
    for name in RECORD_COLUMNS:
        if name not in table.column_names:
            continue
        if name == "document_class":
            arrays[name] = _enum_numbers(table.column(name), lambda t: max(-1, document_class_value(t)))
        elif name == "status":
            arrays[name] = _enum_numbers(table.column(name), status_value)
        else:
            arrays[name] = pc.fill_null(table.column(name).combine_chunks(), "")
    return pa.table(arrays)


def encode_ipc(table: pa.Table) -> list[tuple[int, bytes]]:
    """`table` as (rows, Arrow IPC stream payload) pairs, split so that each payload stays within MAX_ARROW_ROWS
    and MAX_ARROW_BYTES."""
    if table.num_rows > MAX_ARROW_ROWS:
        half = table.num_rows // 2
        return encode_ipc(table.slice(0, half)) + encode_ipc(table.slice(half))
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    payload = sink.getvalue()
    if payload.size > MAX_ARROW_BYTES and table.num_rows > 1:
        half = table.num_rows // 2
        return encode_ipc(table.slice(0, half)) + encode_ipc(table.slice(half))
    return [(table.num_rows, payload.to_pybytes())]


def read_arrow_payloads(path: Path, *, chunk_rows: int = 50_000) -> Iterator[tuple[int, bytes]]:
    """The record file as (rows, Arrow IPC payload) pairs for an upload, read in chunks of about `chunk_rows`
    rows: memory stays bounded by the chunk, whatever the size of the file."""
    for table in iter_tables(path, chunk_rows=chunk_rows):
        try:
            wire = wire_table(table)
        except FileFormatError as exc:
            raise FileFormatError(f"{path}: {exc}") from None
        yield from encode_ipc(wire)


def rows_at(path: Path, indexes: Iterable[int], *, chunk_rows: int = 50_000) -> Iterator[tuple[int, dict[str, str]]]:
    """The rows of a file at the given 0-based indexes (in file order), as {column: text}: one streaming pass."""
    wanted = np.unique(np.fromiter(indexes, np.int64))
    if not len(wanted):
        return
    start = 0
    for table in iter_tables(path, chunk_rows=chunk_rows):
        end = start + table.num_rows
        lo, hi = np.searchsorted(wanted, [start, end])
        if hi > lo:
            picked = table.take(pa.array(wanted[lo:hi] - start))
            for i, row in zip(wanted[lo:hi].tolist(), picked.to_pylist(), strict=True):
                yield i, {k: ("" if v is None else v) for k, v in row.items()}
        start = end
        if hi == len(wanted):
            return


# Columnar manifests (CheckManifestRequest.queries_arrow_ipc in register.proto).
MANIFEST_TEXT_COLUMNS = ("issuing_state", "document_number", "birth_date", "mrz")


def manifest_wire_table(table: pa.Table) -> pa.Table:
    """A chunk of a manifest file (text columns, as `iter_tables` gives them) in CheckManifest's schema. A blank
    mrz cell makes a typed row; class names become their numbers (blank: 0, any class; an unknown name: -1, which
    the server refuses, naming the row, rather than the row being searched under every class)."""
    names = table.column_names
    if "mrz" not in names and "document_number" not in names:
        raise FileFormatError("a manifest needs an 'mrz' column or 'issuing_state' and 'document_number' columns")
    arrays: dict[str, pa.Array] = {}
    for name in MANIFEST_TEXT_COLUMNS:
        if name in names:
            arrays[name] = pc.fill_null(table.column(name).combine_chunks(), "")
    if "mrz" in arrays:
        mrz = arrays["mrz"]
        arrays["mrz"] = pc.if_else(pc.equal(pc.utf8_trim_whitespace(mrz), ""), "", mrz)
    if "document_class" in names:
        classes = table.column("document_class")
        arrays["document_class"] = _enum_numbers(classes, lambda t: max(-1, document_class_value(t)))
    if "reference" in names:
        arrays["client_reference"] = pc.fill_null(table.column("reference").combine_chunks(), "")
    return pa.table(arrays)


def read_manifest_tables(path: Path, *, chunk_rows: int = 1000) -> Iterator[pa.Table]:
    """The manifest file in CheckManifest's schema, in tables of at most `chunk_rows` rows, in file order."""
    for table in iter_tables(path, chunk_rows=chunk_rows):
        try:
            wire = manifest_wire_table(table)
        except FileFormatError as exc:
            raise FileFormatError(f"{path}: {exc}") from None
        yield wire


def ipc_bytes(table: pa.Table) -> bytes:
    """`table` as one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".arrow", ".feather", ".ipc"):
        return "arrow"
    if suffix in (".csv", ".txt"):
        return "csv"
    raise FileFormatError(f"{path}: unknown file type {suffix!r} (use .csv, .parquet or .arrow)")


def is_csv(path: Path) -> bool:
    """True for the text (CSV) file types, whose rows have line numbers."""
    return Path(path).suffix.lower() in (".csv", ".txt")


def column_names(path: Path) -> list[str]:
    """The file's column names as `iter_tables` gives them (stripped, lower-cased), read from the header or
    schema only, so that a file can be vetted before it is streamed."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    kind = _kind(path)
    try:
        if kind == "parquet":
            names = pq.ParquetFile(path).schema_arrow.names
        elif kind == "arrow":
            with pa.memory_map(str(path)) as source:
                names = ipc.open_file(source).schema.names
        else:
            with path.open(newline="", encoding="utf-8-sig") as fh:
                names = next(csv.reader(fh), [])
            if not names:
                raise FileFormatError(f"{path}: empty file (expected a header row)")
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FileFormatError(f"{path}: {exc}") from None
    return [n.strip().lower() for n in names]


def count_rows(path: Path) -> int:
    """Number of data rows, cheaply, for progress bars: Parquet metadata, Arrow IPC batch lengths, CSV lines
    minus the header (a quoted field holding a newline makes this an over-estimate)."""
    path = Path(path)
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    kind = _kind(path)
    try:
        if kind == "parquet":
            return int(pq.ParquetFile(path).metadata.num_rows)
        if kind == "arrow":
            with pa.memory_map(str(path)) as source:
                reader = ipc.open_file(source)
                return sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        lines, last = 0, b"\n"
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        if last != b"\n":
            lines += 1  # last line without a newline
        return max(0, lines - 1)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileFormatError(f"{path}: {exc}") from None
