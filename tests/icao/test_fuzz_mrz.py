"""Coverage-guided fuzzing (atheris, libFuzzer) of the MRZ parser and the document-number and state-code
normalisers: for any input they return a value or raise their own error (MRZError, DocumentNumberError,
StateCodeError); anything else is a crash that libFuzzer reports with the input that caused it.

Torture only: runs when `IDCHECK_FUZZ_SECONDS` is set (`make torture`) and atheris is installed (the torture
target installs it). Run by hand: `python tests/icao/test_fuzz_mrz.py -max_total_time=60`.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("IDCHECK_FUZZ_SECONDS", "0"))
MRZ_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<"
LAYOUTS = ((44, 44), (30, 30, 30), (36, 36))  # TD3 / MRV-A, TD1, TD2 / MRV-B


def fuzz_one(data: bytes) -> None:  # pragma: no cover - runs under atheris in a child process
    import atheris

    from idcheck.icao import (
        DocumentNumberError,
        MRZError,
        StateCodeError,
        canonical_number,
        canonical_state,
        folded_key,
        parse_mrz,
    )

    fdp = atheris.FuzzedDataProvider(data)
    shape = fdp.ConsumeIntInRange(0, len(LAYOUTS))
    if shape == len(LAYOUTS):  # free text
        text = fdp.ConsumeUnicodeNoSurrogates(200)
    else:  # lines of the right lengths from the MRZ alphabet, so the fuzzer reaches the field parsers
        lines = []
        for width in LAYOUTS[shape]:
            raw = fdp.ConsumeBytes(width).ljust(width, b"<")
            lines.append("".join(MRZ_ALPHABET[b % len(MRZ_ALPHABET)] for b in raw))
        text = "\n".join(lines)
    try:
        mrz = parse_mrz(text)
    except MRZError:
        pass
    else:
        repr(mrz)
    rest = fdp.ConsumeUnicodeNoSurrogates(40)
    try:
        canonical_number(rest)
        folded_key(rest)
    except DocumentNumberError:
        pass
    with contextlib.suppress(StateCodeError):
        canonical_state(rest[:8])


@pytest.mark.skipif(SECONDS <= 0, reason="torture only: set IDCHECK_FUZZ_SECONDS (make torture)")
def test_mrz_parser_survives_coverage_guided_fuzzing(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, __file__, f"-max_total_time={SECONDS}", "-print_final_stats=1", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # crash-* files land here
        timeout=SECONDS + 300,
    )
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", run.stderr)
    print(f"\natheris MRZ fuzz: {executed.group(1) if executed else '?'} inputs in {SECONDS}s")
    assert run.returncode == 0, run.stderr[-4000:]
    assert executed and int(executed.group(1)) > 0


if __name__ == "__main__":  # pragma: no cover
    import atheris

    with atheris.instrument_imports():
        import idcheck.icao  # noqa: F401

    atheris.Setup(sys.argv, fuzz_one)
    atheris.Fuzz()
