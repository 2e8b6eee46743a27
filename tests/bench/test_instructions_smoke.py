"""Smoke test of bench/instructions.py: each scenario's calls run under callgrind on a real seeded register, are
answered as the register answers them, and their instructions are counted and reported. Asserts answers and the
report, never speed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.bench import bench_script


@pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("callgrind_control") is None, reason="valgrind not installed"
)
def test_calls_are_answered_and_their_instructions_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "instructions.json"
    args = ["--records", "500", "--calls", "4", "--scenarios", "manifest,check-hit", "--output", str(out)]
    assert bench_script("instructions").main(args) == 0
    result = json.loads(out.read_text())
    manifest, hit = result["runs"]
    assert [r["scenario"] for r in result["runs"]] == ["manifest", "check-hit"]
    # The bench's default mix finds documents in every manifest of 1,000; every single check of a listed number
    # is not CLEAR.
    assert manifest["documents_per_call"] == 1000 and manifest["answers_not_clear"] >= 4
    assert hit["documents_per_call"] == 1 and hit["answers_not_clear"] == 4
    for r in result["runs"]:
        assert r["calls"] == 4 and r["instructions"] > 0
        assert r["instructions_per_call"] == round(r["instructions"] / 4)
    # Only the counted calls are counted: a manifest of 1,000 costs more than one check, but far less than the
    # start of a Python process (hundreds of millions of instructions).
    assert hit["instructions_per_call"] < manifest["instructions_per_call"] < 100_000_000
    assert "instructions a call" in capsys.readouterr().out
    assert result["code"] == bench_script("instructions").code_version() != ""  # the tests run in a git checkout


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        bench_script("instructions").main(["--scenarios", "manifest,upload"])
    assert refused.value.code == 2
    assert "unknown scenario(s) upload" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        bench_script("instructions").main(["--calls", "0"])
    assert refused.value.code == 2
