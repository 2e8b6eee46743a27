"""`idcheck mrz`: read an MRZ on the command line, without a server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idcheck.client.cli import build_parser, main

TD3 = [
    "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<",
    "L898902C36UTO7408122F1204159ZE184226B<<<<<10",
]
TD1 = [
    "I<UTOD231458907<<<<<<<<<<<<<<<",
    "7408122F1204159UTO<<<<<<<<<<<6",
    "ERIKSSON<<ANNA<MARIA<<<<<<<<<<",
]
JSON_KEYS = [
    "format",
    "document_type",
    "issuing_state",
    "document_number",
    "nationality",
    "birth_date",
    "sex",
    "expiry_date",
    "surname",
    "given_names",
    "optional_data",
    "checks",
    "valid",
]
ROOT = Path(__file__).resolve().parents[2]


def test_json_output_is_one_object_with_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mrz", "--json", *TD3]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    result = json.loads(out)
    assert list(result) == JSON_KEYS
    assert result == {
        "format": "TD3",
        "document_type": "P",
        "issuing_state": "UTO",
        "document_number": "L898902C3",
        "nationality": "UTO",
        "birth_date": "740812",
        "sex": "F",
        "expiry_date": "120415",
        "surname": "ERIKSSON",
        "given_names": "ANNA MARIA",
        "optional_data": "ZE184226B",
        "checks": {
            "document_number": True,
            "birth_date": True,
            "expiry_date": True,
            "optional_data": True,
            "composite": True,
        },
        "valid": True,
    }


def test_failing_check_still_exits_zero_and_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    broken = TD3[1][:-1] + "1"
    assert main(["mrz", "--json", TD3[0], broken]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checks"]["composite"] is False
    assert result["valid"] is False


def test_text_output_ticks_and_crosses_each_check(capsys: pytest.CaptureFixture[str]) -> None:
    broken = TD3[1][:19] + "3" + TD3[1][20:]  # birth date check digit
    assert main(["mrz", "--today", "2025-06-01", TD3[0], broken]) == 0
    out = capsys.readouterr().out
    assert "L898902C3" in out
    assert "ERIKSSON" in out
    assert "ANNA MARIA" in out
    assert "Utopia (specimen)" in out
    assert "740812  (1974-08-12)" in out
    assert "120415  (2012-04-15)  EXPIRED" in out
    assert "✓ document_number" in out
    assert "✗ birth_date" in out
    assert "✗ composite" in out
    assert "Verdict: INVALID MRZ: failed check digits: birth_date, composite" in out


def test_text_output_of_a_valid_mrz(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mrz", *TD1]) == 0
    out = capsys.readouterr().out
    assert "TD1" in out
    assert "✗" not in out
    assert "Verdict: valid MRZ" in out


def test_one_argument_with_newlines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mrz", "--json", "\n".join(TD1)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "TD1"
    assert result["document_number"] == "D23145890"


def test_dash_reads_the_mrz_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(TD3).lower() + "\n"))
    assert main(["mrz", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["document_number"] == "L898902C3"


def test_unreadable_mrz_exits_two_with_the_reason_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mrz", "--json", TD3[0], TD3[1][:13] + "#" + TD3[1][14:]]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "line 2, column 14" in err
    assert "'#'" in err


def test_wrong_line_count_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mrz", TD3[0]]) == 2
    assert "2 lines" in capsys.readouterr().err


def test_dash_cannot_be_mixed_with_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mrz", TD3[0], "-"]) == 2
    assert "standard input" in capsys.readouterr().err


def test_mrz_needs_at_least_one_line() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["mrz"])
    assert caught.value.code == 2


def test_a_command_is_required() -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2


def test_parser_registers_the_mrz_subcommand() -> None:
    args = build_parser().parse_args(["mrz", "--json", *TD3])
    assert args.command == "mrz"
    assert args.json
    assert args.lines == TD3


def _run(command: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def test_module_runs_as_a_program() -> None:
    done = _run([sys.executable, "-m", "idcheck.client.cli", "mrz", "--json", "-"], stdin="\n".join(TD3))
    assert done.returncode == 0, done.stderr
    assert list(json.loads(done.stdout)) == JSON_KEYS
    failed = _run([sys.executable, "-m", "idcheck.client.cli", "mrz", "--json", "P<UTO"])
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert "not a readable MRZ" in failed.stderr


ENTRY_POINT = Path(sys.executable).parent / "idcheck"


@pytest.mark.skipif(not ENTRY_POINT.exists(), reason="the idcheck package is not installed in this environment")
def test_installed_entry_point() -> None:
    done = _run([str(ENTRY_POINT), "mrz", "--json", *TD3])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert list(result) == JSON_KEYS
    assert result["valid"] is True
    failed = _run([str(ENTRY_POINT), "mrz", "--json", TD3[0]])
    assert failed.returncode == 2
    assert failed.stderr
