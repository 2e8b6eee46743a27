"""A big upload of new records gets the index ready while SQLite inserts its rows, and shows it only once durable."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pytest

from idcheck.index import DocumentIndexSettings, Lookup
from idcheck.records import RecordStatus, parse_key
from idcheck.register import Register
from idcheck.uploads import UploadMode, UploadOutcome
from tests.register.conftest import NZL

TEXT = ("issuing_state", "document_number", "event_date", "surname", "given_names", "birth_date", "nationality")
TEXT += ("expiry_date", "instructions")


def arrow_upload(register: Register, upload_id: str, rows: Sequence[tuple[str, int]]) -> UploadOutcome:
    """Rows (number, status) for NZL passports, sent as one Arrow IPC batch (the bulk path)."""
    values = {n: [""] * len(rows) for n in TEXT}
    values["issuing_state"] = ["NZL"] * len(rows)
    values["document_number"] = [number for number, _ in rows]
    values["event_date"] = ["2024-01-01"] * len(rows)
    table = pa.table(
        {
            **{n: pa.array(v, pa.string()) for n, v in values.items()},
            "document_class": pa.array([1] * len(rows), pa.int16()),
            "status": pa.array([status for _, status in rows], pa.int64()),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    session = register.begin_upload(NZL, upload_id, UploadMode.INCREMENTAL, "test")
    session.add_arrow(sink.getvalue().to_pybytes())
    return session.commit()


def hits(register: Register, numbers: Sequence[str]) -> list[list[int]]:
    return [[c.record_id for c in register.index.lookup(Lookup("NZL", n))] for n in numbers]


def test_upload_of_new_records_is_indexed_from_changes_prepared_during_the_inserts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import idcheck.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "_BULK_CHUNK", 7)  # 40 rows are then a big upload
    register = Register.open(tmp_path, index_settings=DocumentIndexSettings(merge_threshold=10))
    prepared_in: list[tuple[str, int]] = []
    ahead: list[object] = []  # what was prepared beside the inserts
    applied: list[bool] = []  # per index update: was it prepared beside the inserts?
    prepare, apply_prepared = register.index.prepare_columns, register.index.apply_prepared

    def spy_prepare(changes):  # type: ignore[no-untyped-def]
        name = threading.current_thread().name
        prepared_in.append((name, len(register.index)))
        result = prepare(changes)
        if name.startswith("bulk-ahead"):
            ahead.append(result)
        return result

    def spy_apply(prepared, sequence):  # type: ignore[no-untyped-def]
        applied.append(any(prepared is p for p in ahead))
        return apply_prepared(prepared, sequence)

    monkeypatch.setattr(register.index, "prepare_columns", spy_prepare)
    monkeypatch.setattr(register.index, "apply_prepared", spy_apply)
    try:
        first = [(f"A{i:04d}", 2) for i in range(1, 41)]
        assert arrow_upload(register, "u1", first).created == 40
        assert prepared_in[0][0].startswith("bulk-ahead") and applied == [True]  # one update, prepared ahead
        assert prepared_in[0][1] == 0  # prepared while the index still showed nothing of the upload
        assert hits(register, [n for n, _ in first]) == [[i] for i in range(1, 41)]
        assert register.index.sequence == 40
        # Some records held already: the changes prepared (if any) are not the ones committed; the index gets
        # the committed ones.
        applied.clear()
        second = [(f"A{i:04d}", 1) for i in range(1, 6)] + [(f"B{i:04d}", 2) for i in range(1, 31)]  # A: now LOST
        outcome = arrow_upload(register, "u2", second)
        assert (outcome.created, outcome.updated) == (30, 5)
        assert applied == [False]  # one update, from the changes committed
        assert hits(register, ["A0001", "A0005", "A0006"]) == [[1], [5], [6]]
        assert hits(register, [f"B{i:04d}" for i in range(1, 31)]) == [[40 + i] for i in range(1, 31)]
        assert register.index.sequence == 75
    finally:
        register.close()
    reopened = Register.open(tmp_path)
    try:
        assert hits(reopened, ["A0001", "A0006", "B0030"]) == [[1], [6], [70]]
        assert reopened.store.get_record("NZL", parse_key("NZL", "A0001", 1))[0].data.status == RecordStatus.LOST
    finally:
        reopened.close()
