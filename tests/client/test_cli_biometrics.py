"""The biometric commands of the `idcheck` command line, against a real server process."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from idcheck.biometrics.synthetic import FaceGenerator
from idcheck.client.cli import main
from tests.conftest import ServerProcess

GEN = FaceGenerator(seed=31)
CAPS = GEN.gallery(20, 2, seed=1)
PROBES = GEN.probes(np.arange(20), seed=2)


@pytest.fixture(autouse=True)
def _no_idcheck_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IDCHECK_TARGET", "IDCHECK_MEMBER", "IDCHECK_ROLE"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_enrol_parquet_then_verify_identify_and_remove(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = pa.table(
        {
            "person": [f"FJI-{i}" for i in CAPS.identities],
            "embedding": [list(map(float, v)) for v in CAPS.vectors],
            "docs": [f"FJI:P{i:05d}" for i in CAPS.identities],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    np.save(tmp_path / "probes.npy", PROBES.vectors)
    target = ("--target", server.address, "--member", "FJI")
    status, out, _ = run(
        capsys, "enrol", str(tmp_path / "t.parquet"), "--subject-col", "person", "--vector-col", "embedding",
        "--doc-col", "docs", "--batch-size", "15", "--json", *target,
    )  # fmt: skip
    assert status == 0 and json.loads(out)["enrolled"] == 40
    status, out, _ = run(
        capsys, "verify", "--subject", "FJI-3", "--probe", str(tmp_path / "probes.npy"), "--row", "3", *target
    )
    assert status == 0 and out.startswith("MATCH") and "FMR 0.0001" in out
    status, out, _ = run(
        capsys, "verify", "--document", "FJI:P00003", "--probe", str(tmp_path / "probes.npy"), "--row", "4", *target
    )
    assert status == 5 and out.startswith("NO_MATCH")
    status, out, _ = run(capsys, "identify", "--probe", str(tmp_path / "probes.npy"), "--row", "7", "-k", "3", *target)
    assert status == 0 and "FJI-7" in out.splitlines()[2] and "FJI P00007" in out
    status, out, _ = run(capsys, "identify", "--probe", str(tmp_path / "probes.npy"), "--row", "7", "--json", *target)
    assert json.loads(out)["candidates"][0]["subject_id"] == "FJI-7"
    status, out, _ = run(capsys, "remove-templates", "--subject", "FJI-7", *target)
    assert status == 0 and "Removed 2" in out
    status, out, _ = run(capsys, "identify", "--probe", str(tmp_path / "probes.npy"), "--row", "7", "--json", *target)
    assert "FJI-7" not in {c["subject_id"] for c in json.loads(out)["candidates"]}
    status, _, err = run(capsys, "identify", "--probe", str(tmp_path / "probes.npy"), "-k", "500", *target)
    assert status == 2 and "max_candidates" in err


def test_enrol_npy_with_labels(server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "v.npy", CAPS.vectors[:4])
    (tmp_path / "labels.csv").write_text("subject_id,documents\nA,WSM:1\nA,\nB,WSM:2;WSM:3\nC,\n")
    status, out, _ = run(
        capsys, "enrol", str(tmp_path / "v.npy"), "--labels", str(tmp_path / "labels.csv"), "--doc-col", "documents",
        "--target", server.address, "--member", "WSM",
    )  # fmt: skip
    assert status == 0 and "Enrolled 4 templates" in out
    status, _, err = run(capsys, "enrol", str(tmp_path / "v.npy"), "--target", server.address)
    assert status == 2 and "--labels" in err


def test_calibrate_writes_thresholds_the_server_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", genuine=rng.normal(0.7, 0.05, 2000), impostor=rng.normal(0.0, 0.1, 200_000))
    config = tmp_path / "idcheck.toml"
    config.write_text('listen = "127.0.0.1:0"\n')
    status, out, _ = run(
        capsys, "calibrate", str(tmp_path / "s.npz"), "--verify-fmr", "1e-3", "--write", str(config), "--json"
    )
    result = json.loads(out)
    assert status == 0 and result["verify"]["method"] == "empirical"
    assert result["verify"]["threshold"] == pytest.approx(0.309, abs=0.02)  # 3.09 sigma of N(0, 0.1)
    written = tomllib.loads(config.read_text())
    assert written["listen"] == "127.0.0.1:0" and written["verify_threshold"] == result["verify"]["threshold"]
    from idcheck.server.config import load

    class Args:
        config = tmp_path / "idcheck.toml"

    assert load(Args(), env={}).verify_fmr == 1e-3  # type: ignore[arg-type]
