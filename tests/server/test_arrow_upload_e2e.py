"""End to end: Arrow IPC uploads through a real server process (the bulk path)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from idcheck.client.register import RegisterClient
from idcheck.v1 import register_pb2 as pb
from idcheck.v1 import register_pb2_grpc
from tests.conftest import ServerProcess

MEMBER = (("x-idcheck-member", "NZL"), ("x-idcheck-role", "member"))


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _table(numbers: list[str], state: str = "NZL") -> pa.Table:
    n = len(numbers)
    return pa.table(
        {
            "issuing_state": [state] * n,
            "document_number": numbers,
            "document_class": pa.array([1] * n, pa.int8()),
            "status": pa.array([2] * n, pa.int8()),
            "event_date": ["2025-01-15"] * n,
        }
    )


def _stream(upload_id: str, items: list[pb.RecordBatch], total: int) -> Iterator[pb.UploadRecordsRequest]:
    yield pb.UploadRecordsRequest(header=pb.UploadHeader(upload_id=upload_id, mode=pb.UPLOAD_MODE_INCREMENTAL))
    for batch in items:
        yield pb.UploadRecordsRequest(batch=batch)
    yield pb.UploadRecordsRequest(end=pb.UploadEnd(total_rows=total))


def test_million_row_parquet_round_trip(server: ServerProcess, tmp_path: Path) -> None:
    n = 1_000_000
    numbers = np.char.add("P", np.char.zfill(np.arange(n).astype(str), 8))
    states = np.where(np.arange(n) % 2 == 0, "NZL", "FJI").astype(object)
    classes = np.where(np.arange(n) % 3 == 0, "passport", "id_card").astype(object)
    table = pa.table(
        {
            "issuing_state": pa.array(states, pa.string()),
            "document_number": pa.array(numbers.astype(object), pa.string()),
            "document_class": pa.array(classes, pa.string()),
            "status": pa.array(np.where(np.arange(n) % 5 == 0, "lost", "stolen").astype(object), pa.string()),
            "event_date": pa.array(["2024-03-01"] * n, pa.string()),
        }
    )
    bad = {17: "XYZ", 777_777: ""}  # unknown state, empty state
    fixed = table.column("issuing_state").to_pylist()
    for i, value in bad.items():
        fixed[i] = value
    table = table.set_column(0, "issuing_state", pa.array(fixed, pa.string()))
    path = tmp_path / "records.parquet"
    pq.write_table(table, path, row_group_size=100_000)

    with server.client("NZL", "member") as c:
        result = c.upload(path)
        assert (result.received, result.created, result.rejected) == (n, n - 2, 2)
        assert [(r.row_index, r.field) for r in result.rejected_rows] == [
            (17, "key.issuing_state"),
            (777_777, "key.issuing_state"),
        ]
        assert result.register_sequence == n - 2
        sample = random.Random(7).sample(range(n), 300)
        queries = [{"state": states[i], "number": str(numbers[i])} for i in sample if i not in bad]
        answers = list(c.check_many(queries))
        assert {a.verdict for a in answers} == {"HIT"}
        assert all(a.register_sequence == n - 2 for a in answers)
        assert c.check(state="NZL", number=str(numbers[17])).verdict == "CLEAR"
        lost = c.get(states[5], str(numbers[5]), document_class=2)
        assert lost.record.status == pb.RECORD_STATUS_LOST and lost.record.owner_member == "NZL"
        again = c.upload(path)  # same file: its content-derived upload id replays the first result
        assert again.replayed and again.created == n - 2


def test_bad_arrow_payload_fails_the_whole_upload_and_changes_nothing(server: ServerProcess) -> None:
    stub = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(server.address))
    good = pb.RecordBatch(arrow_ipc=_ipc(_table(["G1", "G2"])))
    wrong_type = _table(["W1"]).set_column(3, "status", pa.array(["stolen"]))
    for bad, words in [
        (pb.RecordBatch(arrow_ipc=b"\xff" * 64), "not a readable Arrow IPC stream"),
        (pb.RecordBatch(arrow_ipc=_ipc(wrong_type)), "column status must be an integer"),
        (pb.RecordBatch(arrow_ipc=_ipc(_table([f"R{i}" for i in range(100_001)]))), "more than 100000 rows"),
        (pb.RecordBatch(arrow_ipc=_ipc(_table(["B1"])), records=[pb.Record()]), "either records or arrow_ipc"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadRecords(_stream("bad", [good, bad], 3), metadata=MEMBER, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in err.value.details() and "batch" in err.value.details()
    with server.client("NZL", "border") as c:
        assert {
            a.verdict for a in c.check_many([{"state": "NZL", "number": "G1"}, {"state": "NZL", "number": "B1"}])
        } == {"CLEAR"}
    # the upload id was never used: a clean stream with it applies
    resp = stub.UploadRecords(_stream("bad", [good], 2), metadata=MEMBER, timeout=30)
    assert (resp.created, resp.replayed) == (2, False)


def test_record_and_arrow_batches_mix_in_one_upload(server: ServerProcess) -> None:
    stub = register_pb2_grpc.DocumentRegisterStub(grpc.insecure_channel(server.address))
    records = pb.RecordBatch(
        records=[
            pb.Record(
                key=pb.DocumentKey(issuing_state="NZL", document_number=n, document_class=1),
                status=2,
                event_date="2025-01-15",
            )
            for n in ("M1", "M2")
        ]
    )
    arrow = pb.RecordBatch(arrow_ipc=_ipc(_table(["M3", "m-1", "M4"])))  # row 3 repeats row 0 (M1)
    resp = stub.UploadRecords(_stream("mixed", [records, arrow], 5), metadata=MEMBER, timeout=30)
    assert (resp.received, resp.created, resp.rejected) == (5, 4, 1)
    assert (resp.rejected_rows[0].row_index, resp.rejected_rows[0].reason) == (3, "duplicate of row 0 in this upload")
    with server.client("NZL", "border") as c:
        assert {a.verdict for a in c.check_many([{"state": "NZL", "number": n} for n in ("M1", "M2", "M3", "M4")])} == {
            "HIT"
        }


def test_cli_upload_writes_rejects_with_original_values(server: ServerProcess, tmp_path: Path) -> None:
    import csv

    from idcheck.client.cli import main

    source = tmp_path / "in.csv"
    source.write_text(
        "issuing_state,document_number,document_class,status,event_date,surname\n"
        "NZL,Q1,passport,stolen,2025-01-01,SMITH\n"
        "NZL,Q2,passport,misplaced,2025-01-01,JONES\n"
        "XXQ,Q3,passport,stolen,2025-01-01,\n"
    )
    rejects = tmp_path / "out" / "bad.csv"
    rejects.parent.mkdir()
    code = main(
        ["upload", "--target", server.address, "--member", "NZL", "--quiet", "--rejects", str(rejects), str(source)]
    )
    assert code == 0
    with rejects.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["row_index"], r["line"], r["field"], r["document_number"], r["surname"]) for r in rows] == [
        ("1", "3", "status", "Q2", "JONES"),
        ("2", "4", "key.issuing_state", "Q3", ""),
    ]
    assert rows[0]["status"] == "misplaced" and rows[0]["reason"]
    assert not (tmp_path / "in.rejected.csv").exists()


def test_client_row_path_still_available_for_files(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "small.parquet"
    pq.write_table(
        pa.table(
            {
                "issuing_state": ["NZL", "NZL"],
                "document_number": ["S1", "S2"],
                "document_class": ["passport", "visa"],
                "status": ["stolen", "revoked"],
                "event_date": ["2025-01-01", "2025-01-02"],
            }
        ),
        path,
    )
    with server.client("NZL", "member") as c:
        result = c.upload(path, arrow=False)
        assert (result.created, result.rejected) == (2, 0)
        assert isinstance(c, RegisterClient) and c.check(state="NZL", number="S2").verdict == "HIT"


def test_reading_a_record_file_for_upload_keeps_memory_bounded(tmp_path: Path) -> None:
    from idcheck.client.files import read_arrow_payloads

    n, rng = 2_000_000, np.random.default_rng(5)
    path = tmp_path / "big.parquet"
    writer = None
    for _ in range(0, n, 500_000):
        numbers = np.char.add("Z", rng.integers(0, 10**12, 500_000).astype(str)).astype(object)
        chunk = _table(numbers.tolist())
        writer = writer or pq.ParquetWriter(path, chunk.schema)
        writer.write_table(chunk, row_group_size=100_000)
    assert writer is not None
    writer.close()
    del writer, chunk, numbers
    whole = pq.read_table(path).nbytes
    baseline = pa.total_allocated_bytes()
    allocated = []
    rows = 0
    for count, payload in read_arrow_payloads(path, chunk_rows=50_000):
        rows += count
        assert len(payload) < 8 * 1024 * 1024
        allocated.append(pa.total_allocated_bytes())
    assert rows == n
    # Arrow memory in use while streaming stays a small fraction of the decoded file (a reader that pre-buffers
    # whole row groups, or reads the file at once, holds several times more).
    assert whole > 60 * 2**20 and max(allocated) - baseline < 24 * 2**20, (whole, baseline, max(allocated))
