"""The register commands of the `idcheck` command line, against a real server process."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from idcheck.client import files
from idcheck.client.cli import _mrz_documents, main
from idcheck.icao import MRZFormat, compose_mrz
from tests.conftest import ServerProcess, start_server

SPECIMEN = [
    "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<",
    "L898902C36UTO7408122F1204159ZE184226B<<<<<10",
]
CHECK_KEYS = {
    "verdict",
    "officer_action",
    "matches",
    "query_id",
    "register_sequence",
    "searched_state",
    "searched_number",
    "mrz_checks",
    "mrz_valid",
}
ROOT = Path(__file__).resolve().parents[2]
PROGRAM = [sys.executable, "-m", "idcheck.client.cli"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One demo register for the module. Tests that write use their own member and document numbers, and
    never touch the specimens (owned by UTO)."""
    server = start_server(tmp_path_factory.mktemp("demo"), "--demo")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_idcheck_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IDCHECK_TARGET", "IDCHECK_MEMBER", "IDCHECK_ROLE"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], server: ServerProcess, *argv: str) -> tuple[int, str, str]:
    """`idcheck COMMAND --target <server> ARGS...` in process: exit status, stdout, stderr."""
    code = main([argv[0], "--target", server.address, *argv[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def mrz(number: str, state: str = "UTO", birth_date: str = "740812") -> list[str]:
    return compose_mrz(
        MRZFormat.TD3,
        document_type="P",
        issuing_state=state,
        document_number=number,
        nationality=state,
        birth_date=birth_date,
        sex="F",
        expiry_date="300101",
        surname="ERIKSSON",
        given_names="ANNA MARIA",
    )


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def record(state: str, number: str, status: str = "stolen", **extra: str) -> dict[str, str]:
    return {
        "issuing_state": state,
        "document_number": number,
        "document_class": "passport",
        "status": status,
        "event_date": "2025-01-15",
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- check -----------------------------------------------------------------------------------------------


def test_check_typed_hit_prints_verdict_action_and_match(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess
) -> None:
    code, out, err = run(
        capsys, demo, "check", "--member", "NZL", "--role", "border", "--state", "UTO", "--number", "L898902C3"
    )
    assert code == 3, err
    lines = out.splitlines()
    assert lines[0].startswith("HIT")
    assert lines[1].startswith("Action: ") and "Utopia national contact point" in lines[1]
    assert "EXACT" in out and "STOLEN" in out and "UTO L898902C3, passport" in out
    assert "Owner:        UTO" in out and "Event date:   2024-03-01" in out
    assert "ERIKSSON, ANNA MARIA" in out and "1974-08-12" in out
    assert "Query id: " in out and int(out.split("Register sequence: ")[1].split()[0]) >= 5003
    assert "check digits" not in out  # a typed query has no MRZ


def test_check_mrz_hit_shows_each_check_digit(capsys: pytest.CaptureFixture[str], demo: ServerProcess) -> None:
    code, out, _ = run(capsys, demo, "check", "--mrz", "\\n".join(SPECIMEN))  # a written \n, as typed in a shell
    assert code == 3
    assert out.startswith("HIT")
    for name in ("document_number", "birth_date", "expiry_date", "optional_data", "composite"):
        assert f"✓ {name}" in out
    assert "✗" not in out
    broken = SPECIMEN[1][:19] + "3" + SPECIMEN[1][20:]  # birth date check digit
    code, out, _ = run(capsys, demo, "check", "--mrz", SPECIMEN[0], broken)
    assert code == 3  # the lookup still runs on what was read
    assert "✗ birth_date" in out and "✓ document_number" in out and "INVALID MRZ" in out


@pytest.mark.parametrize("form", ["one argument", "written newline", "repeated option", "two values", "stdin"])
def test_check_accepts_the_mrz_in_every_form(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, demo: ServerProcess, form: str
) -> None:
    args = {
        "one argument": ["--mrz", "\n".join(SPECIMEN)],
        "written newline": ["--mrz", "\\n".join(SPECIMEN)],
        "repeated option": ["--mrz", SPECIMEN[0], "--mrz", SPECIMEN[1]],
        "two values": ["--mrz", *SPECIMEN],
        "stdin": ["--mrz", "-"],
    }[form]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(SPECIMEN) + "\n"))
    code, out, err = run(capsys, demo, "check", "--json", *args)
    assert code == 3, err
    answer = json.loads(out)
    assert (answer["verdict"], answer["searched_state"], answer["searched_number"]) == ("HIT", "UTO", "L898902C3")
    assert answer["mrz_valid"] is True


def test_check_clear_and_possible_match_exit_codes(capsys: pytest.CaptureFixture[str], demo: ServerProcess) -> None:
    code, out, _ = run(capsys, demo, "check", "--state", "UTO", "--number", "X1234567")
    assert code == 0 and out.startswith("CLEAR") and "Match" not in out
    code, out, _ = run(capsys, demo, "check", "--state", "UTO", "--number", "L8989O2C3")  # O read for 0
    assert code == 4 and out.startswith("POSSIBLE MATCH")
    assert "OCR_VARIANT" in out and "UTO L898902C3" in out
    code, out, _ = run(capsys, demo, "check", "--number", "L898902C3")  # no issuing state: never a hit
    assert code == 4 and "STATE_MISSING" in out
    code, out, _ = run(capsys, demo, "check", "--state", "UTO", "--number", "L898902C3", "--class", "visa")
    assert code == 4 and "CLASS_MISMATCH" in out
    code, out, _ = run(capsys, demo, "check", "--mrz", *mrz("X1234567"))
    assert code == 0 and out.startswith("CLEAR") and "every check digit matches" in out
    code, out, _ = run(capsys, demo, "check", "--mrz", *mrz("L8989O2C3"))
    assert code == 4 and out.startswith("POSSIBLE MATCH") and "✓ composite" in out


def test_check_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str], demo: ServerProcess) -> None:
    code, out, _ = run(
        capsys, demo, "check", "--json", "--state", "UTO", "--number", "L898902C3", "--birth-date", "1980-01-01"
    )
    assert code == 3
    answer = json.loads(out)
    assert set(answer) >= CHECK_KEYS
    assert answer["verdict"] == "HIT" and answer["mrz_valid"] is None and answer["mrz_checks"] == {}
    [match] = answer["matches"]
    assert match["kind"] == "EXACT" and match["status"] == "STOLEN" and match["owner_member"] == "UTO"
    assert match["holder_birth_date"] == "1974-08-12"
    assert "possible impostor" in answer["officer_action"]  # the birth dates differ
    code, out, _ = run(capsys, demo, "check", "--json", "--mrz", *SPECIMEN)
    answer = json.loads(out)
    assert answer["mrz_valid"] is True and answer["mrz_checks"]["composite"] is True
    assert answer["register_sequence"] >= 5003 and answer["query_id"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--state", "ZZZ", "--number", "A1234567"], "query.typed.issuing_state"),
        (["--state", "UTO", "--number", "AB#123"], "query.typed.document_number"),
        (["--mrz", "P<UTOERIKSSON<<ANNA", "short"], "query.mrz"),
    ],
)
def test_check_bad_input_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, args: list[str], field: str
) -> None:
    code, out, err = run(capsys, demo, "check", *args)
    assert code == 2
    assert out == ""
    assert f"  {field}: " in err


def test_check_bad_local_arguments_exit_2(capsys: pytest.CaptureFixture[str], demo: ServerProcess) -> None:
    code, _, err = run(capsys, demo, "check", "--state", "UTO")
    assert code == 2 and "--number" in err
    code, _, err = run(capsys, demo, "check", "--state", "UTO", "--mrz", *SPECIMEN)
    assert code == 2 and "either --mrz" in err
    code, _, err = run(capsys, demo, "check", "--mrz", SPECIMEN[0], "-")
    assert code == 2 and "standard input" in err
    with pytest.raises(SystemExit) as exit_:
        run(capsys, demo, "check", "--state", "UTO", "--number", "X1", "--class", "spaceship")
    assert exit_.value.code == 2


def test_unreachable_target_exits_1_and_says_which(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    code = main(["check", "--target", target, "--timeout", "2", "--state", "UTO", "--number", "L898902C3"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert f"cannot reach the idcheck register at {target}" in err
    assert "make run" in err


def test_identity_errors_exit_1_with_the_message(capsys: pytest.CaptureFixture[str], demo: ServerProcess) -> None:
    code, _, err = run(capsys, demo, "check", "--role", "operator", "--state", "UTO", "--number", "L898902C3")
    assert code == 1 and "PERMISSION_DENIED" in err and "operator" in err
    code, _, err = run(capsys, demo, "check", "--member", "QQQ", "--state", "UTO", "--number", "L898902C3")
    assert code == 1 and "UNAUTHENTICATED" in err


def test_connection_options_default_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, demo: ServerProcess
) -> None:
    monkeypatch.setenv("IDCHECK_TARGET", demo.address)
    monkeypatch.setenv("IDCHECK_MEMBER", "NZL")
    monkeypatch.setenv("IDCHECK_ROLE", "operator")
    assert main(["check", "--state", "UTO", "--number", "L898902C3"]) == 1  # reached, but as an operator
    assert "role operator" in capsys.readouterr().err
    monkeypatch.setenv("IDCHECK_ROLE", "border")
    assert main(["check", "--state", "UTO", "--number", "L898902C3"]) == 3


# --- upload ----------------------------------------------------------------------------------------------


def test_upload_csv_writes_rejected_rows_and_replays(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    source = write_csv(
        tmp_path / "kiribati.csv",
        [
            record("KIR", "K1000001", instructions="Seize"),
            record("XYZ", "K1000002"),
            record("KIR", "K1000003", status="misplaced"),
            record("KIR", "K1000004", status="lost"),
            record("KIR", "K1000005", event_date="2999-01-01"),
        ],
    )
    code, out, err = run(capsys, demo, "upload", "--member", "KIR", str(source))
    assert code == 0, err
    assert "committed" in out and "replayed" not in out
    for label, value in [("received", 5), ("accepted", 2), ("created", 2), ("rejected", 3)]:
        assert f"{label}:" in out and out.split(f"{label}:")[1].split()[0] == str(value)
    rejected = tmp_path / "kiribati.rejected.csv"
    assert str(rejected) in out
    with rejected.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["row_index"], r["line"], r["field"]) for r in rows] == [
        ("1", "3", "key.issuing_state"),
        ("2", "4", "status"),
        ("4", "6", "event_date"),
    ]
    assert all(r["reason"] for r in rows)
    # the good rows were committed
    assert run(capsys, demo, "check", "--state", "KIR", "--number", "K1000001")[0] == 3
    assert run(capsys, demo, "check", "--state", "KIR", "--number", "K1000004")[0] == 3
    assert run(capsys, demo, "check", "--state", "KIR", "--number", "K1000003")[0] == 0
    # the same file again: the upload id derives from its content, so nothing changes
    code, out, _ = run(capsys, demo, "upload", "--member", "KIR", str(source))
    assert code == 0 and "replayed: nothing changed" in out
    code, out, _ = run(capsys, demo, "upload", "--member", "KIR", "--json", str(source))
    summary = json.loads(out)
    assert summary["replayed"] is True and summary["created"] == 2 and summary["rejected"] == 3
    assert summary["rejected_file"] == str(rejected)


def test_upload_parquet_and_explicit_upload_id(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "palau.parquet"
    table = pa.table(
        {
            "issuing_state": ["PLW", "PLW", "PLW"],
            "document_number": ["P0000001", "P0000002", "P0000003"],
            "document_class": ["passport", "id_card", "passport"],
            "status": ["stolen", "lost", "revoked"],
            "event_date": ["2025-01-01", "2025-01-02", "not a date"],
            "surname": ["NGIRAKED", None, ""],
        }
    )
    pq.write_table(table, source)
    code, out, err = run(capsys, demo, "upload", "--member", "PLW", "--upload-id", "plw-1", "--json", str(source))
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["upload_id"], summary["created"], summary["rejected"]) == ("plw-1", 2, 1)
    with (tmp_path / "palau.rejected.csv").open(newline="") as fh:
        [row] = list(csv.DictReader(fh))
    assert (row["row_index"], row["line"], row["field"]) == ("2", "", "event_date")  # no line numbers in Parquet
    code, out, _ = run(capsys, demo, "check", "--json", "--state", "PLW", "--number", "P0000002")
    assert code == 3 and json.loads(out)["matches"][0]["document_class"] == "ID_CARD"


def test_upload_replace_all_cancels_records_left_out(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    first = write_csv(tmp_path / "full-1.csv", [record("VUT", n) for n in ("V1", "V2", "V3")])
    assert run(capsys, demo, "upload", "--member", "VUT", str(first))[0] == 0
    second = write_csv(tmp_path / "full-2.csv", [record("VUT", n) for n in ("V2", "V3", "V4")])
    code, out, _ = run(capsys, demo, "upload", "--member", "VUT", "--mode", "replace-all", "--json", str(second))
    assert code == 0
    summary = json.loads(out)
    assert (summary["created"], summary["unchanged"], summary["cancelled"]) == (1, 2, 1)
    verdicts = {n: run(capsys, demo, "check", "--state", "VUT", "--number", n)[0] for n in ("V1", "V2", "V3", "V4")}
    assert verdicts == {"V1": 0, "V2": 3, "V3": 3, "V4": 3}


def test_upload_bad_files_exit_2_and_apply_nothing(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    code, _, err = run(capsys, demo, "upload", "--member", "NRU", str(tmp_path / "missing.csv"))
    assert code == 2 and "no such file" in err
    no_status = tmp_path / "no-status.csv"
    no_status.write_text("issuing_state,document_number,document_class,event_date\nNRU,N1,passport,2025-01-01\n")
    code, _, err = run(capsys, demo, "upload", "--member", "NRU", str(no_status))
    assert code == 2 and "missing column(s) status" in err
    # a row that breaks the CSV after the first block was sent: the upload is abandoned, not half applied
    broken = tmp_path / "broken.csv"
    with broken.open("w") as fh:
        fh.write("issuing_state,document_number,document_class,status,event_date\n")
        fh.writelines(f"NRU,N{i:07d},passport,stolen,2025-01-01\n" for i in range(40_000))
        fh.write("NRU,N9999999,passport,stolen,2025-01-01,one too many\n")
    code, _, err = run(capsys, demo, "upload", "--member", "NRU", "--batch-size", "10000", str(broken))
    assert code == 2 and "Expected 5 columns, got 6" in err and "nothing was applied" in err
    assert run(capsys, demo, "check", "--state", "NRU", "--number", "N0000001")[0] == 0


def test_upload_by_a_border_role_is_a_service_error(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "b.csv", [record("NRU", "B1")])
    code, _, err = run(capsys, demo, "upload", "--member", "NRU", "--role", "border", str(source))
    assert code == 1 and "PERMISSION_DENIED" in err


def test_upload_progress_bar_only_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, demo: ServerProcess, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "tuvalu.csv", [record("TUV", f"T{i:06d}") for i in range(25)])
    code, _, err = run(capsys, demo, "upload", "--member", "TUV", "--batch-size", "10", str(source))
    assert code == 0 and "rows/s" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    again = write_csv(tmp_path / "tuvalu-2.csv", [record("TUV", f"T{i:06d}") for i in range(30)])
    code, _, err = run(capsys, demo, "upload", "--member", "TUV", "--batch-size", "10", str(again))
    assert code == 0
    assert "tuvalu-2.csv" in err and "rows/s" in err and "30/30" in err


def test_cheap_row_counts_match_the_files(tmp_path: Path) -> None:
    table = pa.table({"issuing_state": ["UTO"] * 7, "document_number": [f"A{i}" for i in range(7)]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=3)
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    (tmp_path / "a.csv").write_text("issuing_state,document_number\n" + "UTO,A1\n" * 6 + "UTO,A7")
    (tmp_path / "header.csv").write_text("issuing_state,document_number\n")
    assert [files.count_rows(tmp_path / n) for n in ("a.parquet", "a.arrow", "a.csv", "header.csv")] == [7, 7, 7, 0]
    assert files.column_names(tmp_path / "a.arrow") == ["issuing_state", "document_number"]


# --- check-manifest --------------------------------------------------------------------------------------


def test_check_manifest_csv_prints_hits_and_possible_matches(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    manifest = write_csv(
        tmp_path / "flight.csv",
        [
            {"reference": "pax-1", "issuing_state": "UTO", "document_number": "X1234567"},
            {"reference": "pax-2", "issuing_state": "UTO", "document_number": "L898902C3"},
            {"reference": "pax-3", "issuing_state": "UTO", "document_number": "L8989O2C3"},
            {"reference": "pax-4", "issuing_state": "UTO", "document_number": "X7654321"},
            {"reference": "pax-5", "issuing_state": "", "document_number": "D23145890"},
        ],
    )
    code, out, err = run(capsys, demo, "check-manifest", "--batch-size", "2", str(manifest))
    assert code == 3, err
    lines = out.splitlines()
    assert len(lines) == 4  # two possible matches, one hit, the summary
    assert lines[0].startswith("row 2 (line 3)  pax-2  UTO L898902C3  HIT  ")
    assert lines[1].startswith("row 3 (line 4)  pax-3  UTO L8989O2C3  POSSIBLE_MATCH  ")
    assert lines[2].startswith("row 5 (line 6)  pax-5  ? D23145890  POSSIBLE_MATCH  ")
    assert lines[3].startswith("5 documents checked: 1 hits, 2 possible matches, 2 clear in ")
    assert "documents/s" in lines[3]
    code, out, _ = run(capsys, demo, "check-manifest", "--json", str(manifest))
    result = json.loads(out)
    assert {k: result["summary"][k] for k in ("documents", "hits", "possible_matches", "clear")} == {
        "documents": 5,
        "hits": 1,
        "possible_matches": 2,
        "clear": 2,
    }
    assert [r["row"] for r in result["results"]] == [1, 2, 3, 4, 5]
    assert [r["verdict"] for r in result["results"]] == ["CLEAR", "HIT", "POSSIBLE_MATCH", "CLEAR", "POSSIBLE_MATCH"]
    assert result["results"][1]["reference"] == "pax-2" and result["results"][1]["matches"][0]["status"] == "STOLEN"
    assert {"row", "reference", "verdict", "searched_state", "searched_number", "query_id", "matches"} <= set(
        result["results"][0]
    )


def test_check_manifest_exit_codes_possible_and_clear(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    possible = write_csv(
        tmp_path / "p.csv",
        [{"issuing_state": "UTO", "document_number": n} for n in ("X1234567", "L8989O2C3")],
    )
    assert run(capsys, demo, "check-manifest", str(possible))[0] == 4
    clear = write_csv(tmp_path / "c.csv", [{"issuing_state": "UTO", "document_number": "X1234567"}])
    code, out, _ = run(capsys, demo, "check-manifest", str(clear))
    assert code == 0 and out.startswith("1 documents checked: 0 hits, 0 possible matches, 1 clear")


def test_check_manifest_parquet_with_an_mrz_column(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    manifest = tmp_path / "flight.parquet"
    pq.write_table(
        pa.table(
            {
                "reference": ["a", "b", "c"],
                "mrz": ["\n".join(mrz("X1234567")), "\n".join(SPECIMEN), "\n".join(mrz("L8989O2C3"))],
            }
        ),
        manifest,
    )
    code, out, _ = run(capsys, demo, "check-manifest", "--json", str(manifest))
    assert code == 3
    results = json.loads(out)["results"]
    assert [(r["reference"], r["verdict"], r["mrz_valid"]) for r in results] == [
        ("a", "CLEAR", True),
        ("b", "HIT", True),
        ("c", "POSSIBLE_MATCH", True),
    ]
    code, out, _ = run(capsys, demo, "check-manifest", str(manifest))
    assert code == 3 and out.splitlines()[0].startswith("row 2  b  UTO L898902C3  HIT")


def test_check_manifest_bad_row_exits_2_naming_the_row(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    manifest = write_csv(
        tmp_path / "bad.csv",
        [
            {"issuing_state": s, "document_number": n}
            for s, n in [("UTO", "A1"), ("UTO", "A2"), ("UTO", "A3"), ("QQQ", "A4")]
        ],
    )
    code, _, err = run(capsys, demo, "check-manifest", "--batch-size", "2", str(manifest))
    assert code == 2
    assert "row 4 (line 5), issuing_state: " in err and "QQQ" in err  # the column, as the file names it
    assert "queries[" not in err
    classes = write_csv(
        tmp_path / "classes.csv",
        [
            {"issuing_state": "UTO", "document_number": "A1", "document_class": c}
            for c in ("passport", "", "ID-card", "spaceship")
        ],
    )
    code, _, err = run(capsys, demo, "check-manifest", str(classes))
    assert code == 2 and "row 4 (line 5), document_class: unknown document class" in err  # not searched as any class
    no_columns = write_csv(tmp_path / "names.csv", [{"surname": "ERIKSSON"}])
    code, _, err = run(capsys, demo, "check-manifest", str(no_columns))
    assert code == 2 and "'mrz' column" in err
    code, _, err = run(capsys, demo, "check-manifest", str(tmp_path / "nowhere.parquet"))
    assert code == 2 and "no such file" in err


# --- cancel and get --------------------------------------------------------------------------------------


def test_cancel_then_check_is_clear_and_get_shows_the_history(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "nauru.csv", [record("NRU", "C1"), record("NRU", "C2"), record("NRU", "C3")])
    assert run(capsys, demo, "upload", "--member", "NRU", str(source))[0] == 0
    code, out, err = run(
        capsys, demo, "cancel", "--member", "NRU", "--state", "NRU", "--number", "C1", "--reason", "document recovered"
    )
    assert code == 0, err
    assert "cancelled: 1" in out and "already cancelled: 0" in out and "register sequence: " in out
    assert run(capsys, demo, "check", "--state", "NRU", "--number", "C1")[0] == 0
    code, out, _ = run(capsys, demo, "cancel", "--member", "NRU", "--key", "NRU:C1", "--key", "NRU:C2:passport")
    assert code == 0 and "cancelled: 1" in out and "already cancelled: 1" in out
    code, out, _ = run(capsys, demo, "get", "--member", "NRU", "--state", "NRU", "--number", "C1")
    assert code == 0
    assert "Status:       CANCELLED" in out
    history = out.split("History")[1].splitlines()[1:]
    assert len(history) == 2
    assert (
        "CREATED" in history[0] and "STOLEN" in history[0] and "by NRU" in history[0] and "upload file-" in history[0]
    )
    assert "CANCELLED" in history[1] and "reason: document recovered" in history[1]
    code, out, _ = run(capsys, demo, "get", "--member", "NRU", "--json", "--state", "NRU", "--number", "C1")
    view = json.loads(out)
    assert view["record"]["status"] == "CANCELLED" and view["record"]["owner_member"] == "NRU"
    assert [(c["operation"], c["reason"]) for c in view["history"]] == [
        ("CREATED", "nauru.csv"),
        ("CANCELLED", "document recovered"),
    ]


def test_cancel_errors(capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "marshall.csv", [record("MHL", "M1")])
    assert run(capsys, demo, "upload", "--member", "MHL", str(source))[0] == 0
    code, _, err = run(capsys, demo, "cancel", "--member", "NZL", "--key", "MHL:M1")
    assert code == 1 and "PERMISSION_DENIED" in err and "(MHL:M1)" in err
    assert run(capsys, demo, "check", "--state", "MHL", "--number", "M1")[0] == 3  # untouched
    code, _, err = run(capsys, demo, "cancel", "--member", "MHL", "--key", "MHL:M1", "--key", "MHL:NOPE1")
    assert code == 1 and "NOT_FOUND" in err and "nothing was cancelled" in err
    assert run(capsys, demo, "check", "--state", "MHL", "--number", "M1")[0] == 3  # all or nothing
    code, _, err = run(capsys, demo, "cancel", "--member", "MHL", "--key", "MHL:#1")
    assert code == 2 and "keys[0].document_number (MHL:#1)" in err
    code, _, err = run(capsys, demo, "cancel", "--member", "MHL")
    assert code == 2 and "--key" in err
    code, _, err = run(capsys, demo, "get", "--member", "NZL", "--state", "MHL", "--number", "M1")
    assert code == 1 and "PERMISSION_DENIED" in err


# --- as programs -----------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDCHECK_")}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}


def test_check_as_a_program_exits_3_for_a_hit(demo: ServerProcess) -> None:
    done = subprocess.run(
        [*PROGRAM, "check", "--target", demo.address, "--role", "border", "--state", "UTO", "--number", "L898902C3"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("HIT")


def test_serve_subcommand_runs_the_server(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*PROGRAM, "serve", "--demo", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_env(), "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        address = ""
        for line in proc.stdout:
            if "serving on " in line:
                address = line.split("serving on ")[1].split()[0]
                break
        assert address, "idcheck serve did not start"
        code = main(["check", "--target", address, "--state", "UTO", "--number", "L898902C3"])
        assert code == 3
        assert capsys.readouterr().out.startswith("HIT")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stdout is not None
        proc.stdout.close()


# --- check-stream ----------------------------------------------------------------------------------------


def test_check_stream_answers_each_line_in_order_and_goes_on_after_bad_ones(
    capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"mrz": "\n".join(SPECIMEN), "reference": "gate 7"}),  # HIT
        json.dumps({"state": "NZL", "number": "ZZ123"}),  # CLEAR
        "",  # skipped
        "not json",
        json.dumps({"state": "UTO", "number": "L898902C3", "seat": "12A"}),  # unknown field
        json.dumps({"mrz": "P<UTOERIKSSON<<ANNA\nshort"}),  # refused by the register
        json.dumps({"issuing_state": "UTO", "document_number": "L898902C3", "document_class": 1}),  # HIT again
    ]
    source = tmp_path / "travellers.jsonl"
    source.write_text("\n".join(lines) + "\n")
    code, out, _err = run(capsys, demo, "check-stream", str(source), "--role", "border", "--member", "NZL")
    assert code == 3
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["line"] for a in answers] == [1, 2, 4, 5, 6, 7]
    assert [a.get("verdict") for a in answers] == ["HIT", "CLEAR", None, None, None, "HIT"]
    assert set(answers[0]) >= CHECK_KEYS and answers[0]["mrz_valid"] is True and answers[0]["reference"] == "gate 7"
    assert answers[0]["query_id"] != answers[5]["query_id"]
    assert "not JSON" in answers[2]["error"]["message"] and "seat" in answers[3]["error"]["message"]
    refused = answers[4]["error"]
    assert refused["code"] == "INVALID_ARGUMENT" and [v["field"] for v in refused["violations"]] == ["query.mrz"]


def test_check_stream_exit_codes(capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path) -> None:
    clear, bad = tmp_path / "clear.jsonl", tmp_path / "bad.jsonl"
    clear.write_text(json.dumps({"state": "NZL", "number": "ZZ1"}) + "\n")
    bad.write_text(json.dumps({"state": "NZL", "number": "ZZ1"}) + "\n" + json.dumps({"state": "QQQ", "number": "1"}))
    assert run(capsys, demo, "check-stream", str(clear), "--role", "border")[0] == 0
    assert run(capsys, demo, "check-stream", str(bad), "--role", "border")[0] == 2  # a line refused, nothing matched
    code, _out, err = run(capsys, demo, "check-stream", str(clear), "--role", "operator")  # the stream is refused
    assert code == 1 and "PERMISSION_DENIED" in err
    code, _out, err = run(capsys, demo, "check-stream", str(tmp_path / "missing.jsonl"), "--role", "border")
    assert code == 2 and "cannot read" in err


TD1_SPECIMEN = ["I<UTOD231458907<<<<<<<<<<<<<<<", "7408122F1204159UTO<<<<<<<<<<<6", "ERIKSSON<<ANNA<MARIA<<<<<<<<<<"]


def test_mrz_documents_groups_the_lines_a_reader_prints() -> None:
    lines = [
        *SPECIMEN,  # 1-2: TD3
        "",
        *TD1_SPECIMEN,  # 4-6: TD1, no blank line after it
        "".join(SPECIMEN),  # 7: a whole MRZ on one line
        "SHORT",  # 8: no MRZ line
        SPECIMEN[0],  # 9: a TD3 line, then a TD1 line
        TD1_SPECIMEN[0],  # 10
        TD1_SPECIMEN[0],  # 11: incomplete, ended by a blank line
        "",
        f"  {SPECIMEN[0]}  ",  # 13-14: spaces around lines do not matter
        SPECIMEN[1],
        SPECIMEN[0],  # 15: incomplete at the end
    ]
    found = [(n, q if isinstance(q, dict) else str(q)) for n, q in _mrz_documents(line + "\n" for line in lines)]
    td3, td1 = {"mrz": "\n".join(SPECIMEN)}, {"mrz": "\n".join(TD1_SPECIMEN)}
    assert found == [
        (1, td3),
        (4, td1),
        (7, td3),
        (8, "not an MRZ line: 5 characters (MRZ lines have 30, 36 or 44; a whole MRZ on one line 90, 72 or 88)"),
        (9, "MRZ lines of different lengths: line 9 has 44 characters, line 10 30"),
        (11, "incomplete MRZ: 1 of 3 lines"),
        (13, td3),
        (15, "incomplete MRZ at the end: 1 of 2 lines"),
    ]


def test_check_stream_reads_mrz_text(capsys: pytest.CaptureFixture[str], demo: ServerProcess, tmp_path: Path) -> None:
    forged = [SPECIMEN[0], SPECIMEN[1][:9] + "7" + SPECIMEN[1][10:]]  # a wrong check digit: shown, not refused
    lines = [*SPECIMEN, "SHORT", *TD1_SPECIMEN, *forged, "P<UTO!" + "<" * 38, SPECIMEN[1]]
    source = tmp_path / "reader.txt"
    source.write_text("\n".join(lines) + "\n")
    code, out, _err = run(capsys, demo, "check-stream", "--mrz", str(source), "--role", "border", "--member", "NZL")
    assert code == 3
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["line"] for a in answers] == [1, 3, 4, 7, 9]
    assert answers[0]["verdict"] == "HIT" and answers[0]["mrz_valid"] is True
    assert "not an MRZ line" in answers[1]["error"]["message"]
    assert answers[2]["verdict"] in {"CLEAR", "HIT", "POSSIBLE_MATCH"} and answers[2]["mrz_valid"] is True
    assert answers[3]["mrz_valid"] is False
    refused = answers[4]["error"]  # the register's own refusal of a malformed MRZ
    assert refused["code"] == "INVALID_ARGUMENT" and [v["field"] for v in refused["violations"]] == ["query.mrz"]


def test_check_stream_as_a_program_answers_before_the_next_line_is_written(demo: ServerProcess) -> None:
    """Behind a document reader: each answer must come out as soon as its line went in, not at the end."""
    proc = subprocess.Popen(
        [*PROGRAM, "check-stream", "--target", demo.address, "--role", "border", "--member", "NZL"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    watchdog = threading.Timer(60, proc.kill)  # an answer held back would block readline() for ever
    watchdog.start()
    try:
        verdicts = []
        for number in ("L898902C3", "ZZ1", "L898902C3"):
            proc.stdin.write(json.dumps({"state": "UTO", "number": number}) + "\n")
            proc.stdin.flush()
            verdicts.append(json.loads(proc.stdout.readline())["verdict"])  # blocks until that answer is out
        assert verdicts == ["HIT", "CLEAR", "HIT"]
        proc.stdin.close()
        assert proc.wait(60) == 3
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
