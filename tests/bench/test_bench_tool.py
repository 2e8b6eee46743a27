"""Smoke tests of `idcheck bench`: a small register for a few seconds. They assert correct answers and the
structure of the results (JSON and plot), and what Ctrl-C does; never speed."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from idcheck.client.bench import (
    QUERY_POOL,
    V_CLEAR,
    V_HIT,
    V_POSSIBLE,
    Backends,
    BenchError,
    Connection,
    Endpoints,
    Scenario,
    listed_numbers,
    make_queries,
    parse_scenarios,
    query_states,
    settle,
)
from idcheck.v1 import operations_pb2, operations_pb2_grpc

SEED = 11
RECORDS = 3000
HAS_REDIS = shutil.which("redis-server") is not None and importlib.util.find_spec("redis") is not None


def bench_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "idcheck.client.cli", "bench", *args]


def test_scenario_names_parse_with_defaults() -> None:
    assert Scenario.parse("single@16") == Scenario("single", 1, 16)
    assert Scenario.parse("manifest-100") == Scenario("manifest", 100, 1)
    assert Scenario.parse("manifest") == Scenario("manifest", 1000, 1)
    assert Scenario.parse("upload-500@2").name == "upload-500@2"
    assert [s.name for s in parse_scenarios("verify, identify@4")] == ["verify@1", "identify@4"]
    for bad in ("single-10", "lookup", "manifest-20000", "single@0", ""):
        with pytest.raises(BenchError):
            parse_scenarios(bad)


def test_queries_carry_the_verdict_the_register_must_give() -> None:
    listed = listed_numbers(RECORDS, SEED)
    numbers, expected = make_queries(listed, 5000, SEED)
    listed_set = set(listed.astype(str))
    assert len(listed_set) == RECORDS
    hits = [n for n, e in zip(numbers, expected, strict=True) if e == V_HIT]
    possible = [n for n, e in zip(numbers, expected, strict=True) if e == V_POSSIBLE]
    assert hits and all(n in listed_set for n in hits)
    # an OCR misreading: not listed itself, and a letter where the listed number has a digit
    assert possible and not any(n in listed_set for n in possible)
    assert all(re.search(r"[OIBS]\d*$", n) for n in possible[:50])
    assert np.count_nonzero(expected == V_CLEAR) > 0.9 * len(numbers)


def test_query_mix_is_what_was_asked_and_verdicts_still_follow_the_rules() -> None:
    listed = listed_numbers(RECORDS, SEED)
    listed_set = set(listed.astype(str))
    numbers, expected = make_queries(listed, 20_000, SEED, listed_share=0.5, variant_share=0.25)
    shares = {v: np.count_nonzero(expected == v) / len(numbers) for v in (V_HIT, V_POSSIBLE, V_CLEAR)}
    assert abs(shares[V_HIT] - 0.5) < 0.02 and abs(shares[V_POSSIBLE] - 0.25) < 0.02, shares
    assert all((n in listed_set) == (e == V_HIT) for n, e in zip(numbers, expected, strict=True))
    # None asked for: what is found is only what fresh numbers happen to hit (none at this size and seed).
    numbers, expected = make_queries(listed, 20_000, SEED, listed_share=0.0, variant_share=0.0)
    assert np.count_nonzero(expected != V_CLEAR) == sum(n in listed_set for n in numbers) == 0
    # Every query listed.
    _numbers, expected = make_queries(listed, 1000, SEED, listed_share=1.0, variant_share=0.0)
    assert (expected == V_HIT).all()


@pytest.mark.parametrize(
    ("listed_share", "variant_share", "message"),
    [
        (0.8, 0.3, "add up to more than 1"),
        (-0.1, 0.0, "listed share of the queries must be from 0 to 1"),
        (0.0, float("nan"), "OCR variant share of the queries must be from 0 to 1"),
    ],
)
def test_a_query_mix_that_cannot_be_is_refused(listed_share: float, variant_share: float, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        make_queries(listed_numbers(100, SEED), 100, SEED, listed_share=listed_share, variant_share=variant_share)


def test_bench_refuses_a_query_mix_that_cannot_be_before_it_starts_anything(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    for args, message in (
        (["--listed-share", "0.8", "--variant-share", "0.3"], "add up to more than 1"),
        (["--listed-share", "2"], "not a fraction from 0 to 1: '2'"),
        (["--variant-share", "some"], "not a fraction from 0 to 1: 'some'"),
    ):
        proc = subprocess.run(
            bench_command("--records", "100", "--output", str(out), *args), capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "synthetic register" not in proc.stderr + proc.stdout  # nothing was made, no server started
    assert not out.exists()


def test_bench_checks_with_the_query_mix_it_is_given(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    options = "--records 3e3 --templates 0 --scenarios manifest-100 --requests 100 --warmup 0"
    mix = "--listed-share 0.3 --variant-share 0.1"
    proc = subprocess.run(
        bench_command(*options.split(), *mix.split(), "--seed", str(SEED), "--output", str(out)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["settings"]["query_mix"] == {"listed": 0.3, "ocr_variant": 0.1}
    ours = result["scenarios"][0]["results"]["idcheck"]
    assert ours["documents"] == 10_000 and ours["wrong_answers"] == 0 and ours["errors"] == {}
    assert Counter(ours["answers"]) == expected_answers(0, 10_000, listed_share=0.3, variant_share=0.1)
    assert 2500 < ours["answers"]["HIT"] < 3500


def test_queries_that_must_be_clear_are_spread_over_the_states_asked_for() -> None:
    _numbers, expected = make_queries(listed_numbers(RECORDS, SEED), QUERY_POOL, SEED, listed_share=0.3)
    assert query_states("NZL", expected, 1, SEED) == ["NZL"] * QUERY_POOL
    states = np.array(query_states("NZL", expected, 50, SEED))
    found = expected != V_CLEAR
    assert set(states[found]) == {"NZL"}  # a listed number or its misreading keeps the state of its record
    spread = Counter(states[~found].tolist())
    assert len(spread) == 50 and "NZL" in spread and "DEU" not in spread  # canonical codes only (DEU is D)
    assert max(spread.values()) < 3 * min(spread.values())  # drawn evenly
    for count, message in ((0, "at least 1"), (10_000, "at most")):
        with pytest.raises(BenchError, match=message):
            query_states("NZL", expected, count, SEED)


def test_bench_checks_manifests_of_many_issuing_states(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    options = "--records 3e3 --templates 0 --scenarios manifest-100,single --requests 100 --warmup 0"
    proc = subprocess.run(
        bench_command(
            *options.split(), "--query-states", "40", "--baselines", "--seed", str(SEED), "--output", str(out)
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["settings"]["query_states"] == 40
    manifests, singles = (s["results"]["idcheck"] for s in result["scenarios"])
    assert manifests["wrong_answers"] == 0 and manifests["errors"] == {}
    assert Counter(manifests["answers"]) == expected_answers(0, 10_000)  # the same verdicts, whatever the states
    assert singles["wrong_answers"] == 0 and singles["errors"] == {}
    # SQLite asked for the (state, number) pairs: the same documents found
    sqlite = result["scenarios"][0]["results"]["sqlite"]
    assert sqlite["wrong_answers"] == 0 and sqlite["answers"]["FOUND"] == expected_answers(0, 10_000)["HIT"]


def expected_answers(first: int, count: int, **mix: float) -> Counter[str]:
    """The verdicts the queries `first` .. `first + count - 1` of the bench's pool must get (`mix`: the shares
    given to make_queries, its defaults when none)."""
    _numbers, expected = make_queries(listed_numbers(RECORDS, SEED), QUERY_POOL, SEED, **mix)
    names = {V_HIT: "HIT", V_POSSIBLE: "POSSIBLE_MATCH", V_CLEAR: "CLEAR"}
    return Counter(names[int(v)] for v in expected[first : first + count])


def test_bench_measures_every_kind_of_scenario_with_baselines(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        bench_command(
            "--records",
            "3e3",
            "--templates",
            "600",
            "--seed",
            str(SEED),
            "--scenarios",
            "single@1,single@4,stream@3,manifest-100,documents-100,verify,identify@2,upload-20,health@2",
            "--requests",
            "600",
            "--warmup",
            "0.2",
            "--baselines",
            "--output",
            str(out),
        ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["server"]["settle_seconds"] >= 0  # waited until the seeded server had no background work
    # Its memory as the last scenario left it, and again once the work the scenarios set off was done.
    assert result["server"]["settle_seconds_at_end"] >= 0
    assert result["server"]["rss_bytes_at_end"] > 0 and result["server"]["rss_bytes_after_settling"] > 0
    assert result["interrupted"] is False
    assert result["server"]["started"] is True
    assert result["server"]["seed_records"]["rows"] == RECORDS
    assert result["server"]["seed_templates"]["templates"] == 600
    scenarios = {s["name"]: s for s in result["scenarios"]}
    assert list(scenarios) == [
        "single@1",
        "single@4",
        "stream@3",
        "manifest-100@1",
        "documents-100@1",
        "verify@1",
        "identify@2",
        "upload-20@1",
        "health@2",
    ]

    for name, sc in scenarios.items():
        ours = sc["results"]["idcheck"]
        assert ours["requests"] == 600 and ours["errors"] == {} and ours["wrong_answers"] == 0, name
        assert ours["warmup_errors"] == 0, name
        lat = ours["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"], name
        assert ours["requests_per_s"] > 0
        # The server's CPU while measuring, in cores and per call: the same seconds both ways.
        per_call = ours["server_cpu_us_per_call"]
        assert per_call > 0, name
        assert abs(per_call * ours["requests"] / 1e6 / ours["seconds"] - ours["server_cpu_cores"]) <= 0.006, name
        curve = [v for _p, v in ours["latency_curve_ms"]]
        assert curve == sorted(curve)

    # The 600 calls of a single-check scenario are the first 600 queries of the pool, however many callers.
    for name in ("single@1", "single@4", "stream@3"):  # a stream's checks too (three streams, one per caller)
        assert Counter(scenarios[name]["results"]["idcheck"]["answers"]) == expected_answers(0, 600)
    assert scenarios["single@4"]["results"]["idcheck"]["processes"] == min(4, os.cpu_count() or 1)
    manifest = scenarios["manifest-100@1"]["results"]["idcheck"]
    assert manifest["documents"] == 60_000 and manifest["documents_per_s"] > 0
    # 600 calls of 100 go through the pool of 50,000 queries once, then its first 10,000 again.
    assert Counter(manifest["answers"]) == expected_answers(0, QUERY_POOL) + expected_answers(0, 10_000)
    # The same manifests through CheckDocuments (a message per query) get the same answers.
    documents = scenarios["documents-100@1"]["results"]["idcheck"]
    assert documents["documents"] == 60_000 and Counter(documents["answers"]) == Counter(manifest["answers"])
    # Fresh good captures of enrolled identities: verified, and found first in an exact gallery of 600.
    assert scenarios["verify@1"]["results"]["idcheck"]["answers"].get("MATCH", 0) >= 570
    # Identify returns nobody below its threshold (a low-quality gallery capture), never someone else first.
    identify = scenarios["identify@2"]["results"]["idcheck"]["answers"]
    assert "OTHER_FIRST" not in identify and identify["TOP1_MATE"] >= 480
    assert scenarios["identify@2"]["results"]["faiss"]["answers"].get("TOP1_MATE", 0) >= 590
    upload = scenarios["upload-20@1"]["results"]["idcheck"]
    assert upload["documents"] == 12_000 and upload["answers"]["CREATED"] == 12_000

    # Baselines: same keys, same answers (exact matches only), ratios against ours.
    for name, backends in (
        ("single@1", ["sqlite"]),
        ("stream@3", ["sqlite"]),  # a baseline answers a stream's checks as single ones
        ("manifest-100@1", ["sqlite"]),
        ("upload-20@1", ["sqlite"]),
        ("verify@1", ["faiss"]),
        ("identify@2", ["faiss"]),
    ):
        for b in backends + (["redis"] if HAS_REDIS and name.startswith(("single", "stream", "manifest")) else []):
            theirs = scenarios[name]["results"][b]
            assert theirs["requests"] == 600 and theirs["wrong_answers"] == 0 and theirs["errors"] == {}, (name, b)
            assert scenarios[name]["ratios"][b]["throughput"] > 0
    assert scenarios["single@1"]["results"]["sqlite"]["answers"]["FOUND"] == expected_answers(0, 600)["HIT"]
    if not HAS_REDIS:
        assert "redis" in scenarios["single@1"]["skipped"]
        assert result["baselines"]["redis"]["available"] is False
    else:  # what the Redis figures were measured with: redis-py's C parser when hiredis is installed (the dev extra)
        parser = "hiredis" if importlib.util.find_spec("hiredis") is not None else "python"
        assert result["baselines"]["redis"]["parser"] == parser
        assert f"(redis-py, {parser} parser)" in proc.stderr

    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert "summary (latency in ms)" in proc.stdout and "idcheck/sqlite: throughput" in proc.stdout
    assert re.search(r"cpu cores: client \d+\.\d\d, server \d+\.\d\d \([\d,]+ us a call\)", proc.stdout)


def test_ctrl_c_prints_and_writes_what_was_measured(tmp_path: Path) -> None:
    out = tmp_path / "partial.json"
    proc = subprocess.Popen(
        bench_command(
            "--records",
            "2000",
            "--templates",
            "0",
            "--scenarios",
            "single@1,single@2",
            "--duration",
            "120",
            "--warmup",
            "0.2",
            "--output",
            str(out),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    measuring = threading.Event()
    stderr: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr.append(line)
            if re.search(r"single@1 idcheck: \d+/120s, [\d,]+ calls", line):
                measuring.set()

    stdout_parts: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        stdout_parts.append(proc.stdout.read())

    # Both pipes are read by threads to their end (communicate() would close stderr under its reader).
    readers = [threading.Thread(target=read_stderr, daemon=True), threading.Thread(target=read_stdout, daemon=True)]
    for reader in readers:
        reader.start()
    try:
        assert measuring.wait(120), "".join(stderr)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    for reader in readers:
        reader.join(10)
    stdout = "".join(stdout_parts)
    assert proc.returncode == 130, stdout + "".join(stderr)
    assert "INTERRUPTED" in stdout
    result = json.loads(out.read_text())
    assert result["interrupted"] is True
    assert [s["name"] for s in result["scenarios"]] == ["single@1"]  # the second scenario never started
    single = result["scenarios"][0]["results"]["idcheck"]
    assert single["interrupted"] is True and single["requests"] > 0 and single["wrong_answers"] == 0
    assert single["seconds"] < 100  # cut short, not run to its 120 s
    assert out.with_suffix(".png").exists()


def test_bench_targets_a_running_tls_server_and_seeds_it_once(server_factory, pki, tmp_path: Path) -> None:
    server = server_factory("--tls-dir", str(pki.dir), "--rate-limit-per-second", "0")

    def bench(name: str, *args: str) -> dict:
        out = tmp_path / f"{name}.json"
        proc = subprocess.run(
            bench_command(
                "--target",
                server.address,
                "--tls-dir",
                str(pki.dir),
                "--member",
                "NZL",
                "--seed",
                str(SEED),
                "--records",
                str(RECORDS),
                "--templates",
                "300",
                "--scenarios",
                "single@2,identify",
                "--requests",
                "300",
                "--warmup",
                "0",
                "--processes",
                "1",
                "--output",
                str(out),
                *args,
            ),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(out.read_text())
        assert result["server"]["tls"] is True and result["server"]["started"] is False
        for sc in result["scenarios"]:
            ours = sc["results"]["idcheck"]
            assert ours["requests"] == 300 and ours["errors"] == {} and ours["wrong_answers"] == 0, (name, sc["name"])
        single = result["scenarios"][0]["results"]["idcheck"]
        assert Counter(single["answers"]) == expected_answers(0, 300)
        return result

    # Seeded in uploads of 1,000 records (a register beyond the server's max_rows_per_upload is seeded in parts);
    # the single checks above found the records of every part.
    first = bench("first", "--role", "member", "--seed-upload-rows", "1000")
    assert first["server"]["seed_records"]["replayed"] is False
    assert first["server"]["settle_seconds"] is None  # a member's certificate may not read GetStatistics
    assert first["server"]["seed_records"]["uploads"] == 3 and first["server"]["seed_records"]["rows"] == RECORDS
    assert first["server"]["seed_templates"]["templates"] == 300
    # The same register again: the upload is replayed (nothing changes), the gallery is not enrolled twice.
    again = bench("again", "--role", "member", "--seed-upload-rows", "1000")
    assert again["server"]["seed_records"]["replayed"] is True
    assert again["server"]["seed_templates"].get("already_enrolled") is True
    # A border system writes nothing and gets the same answers.
    border = bench("border", "--role", "border", "--no-seed")
    assert "seed_records" not in border["server"] and "seed_templates" not in border["server"]


def test_errors_are_counted_by_status_code_apart_from_answers(server_factory, tmp_path: Path) -> None:
    # A server that lets a member make 20 calls a second: most of a fast run is refused with RESOURCE_EXHAUSTED.
    server = server_factory("--rate-limit-per-second", "20", "--rate-limit-burst", "5")
    out = tmp_path / "limited.json"
    proc = subprocess.run(
        bench_command(
            "--target",
            server.address,
            "--records",
            "0",
            "--scenarios",
            "single@2",
            "--requests",
            "400",
            "--warmup",
            "0",
            "--processes",
            "1",
            "--output",
            str(out),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    single = json.loads(out.read_text())["scenarios"][0]["results"]["idcheck"]
    refused = single["errors"].get("RESOURCE_EXHAUSTED", 0)
    assert refused > 0 and set(single["errors"]) == {"RESOURCE_EXHAUSTED"}
    assert single["requests"] + refused == 400  # every call is either an answer or an error, never both
    assert single["requests"] == sum(single["answers"].values()) and single["wrong_answers"] == 0
    assert "RESOURCE_EXHAUSTED" in proc.stdout


def test_redis_baseline_is_skipped_with_its_reason_when_redis_server_is_absent(monkeypatch, tmp_path: Path) -> None:
    from idcheck.client import bench

    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    with pytest.raises(BenchError, match="redis-server is not installed"):
        bench.RedisBaseline(tmp_path)


class _ScriptedWorkers(operations_pb2_grpc.OperationsServicer):
    """GetStatistics answers as a server of two workers would, in a set order: (worker, background tasks)."""

    def __init__(self, answers: list[tuple[int, int]]) -> None:
        self.answers = answers
        self.calls = 0

    def GetStatistics(self, request: object, context: object) -> operations_pb2.Statistics:
        worker, busy = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return operations_pb2.Statistics(worker=worker, worker_processes=2, background_tasks=busy)


@contextlib.contextmanager
def _serving(script: _ScriptedWorkers) -> Iterator[Connection]:
    """A real gRPC server answering GetStatistics from `script`, and an operator's connection to it."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    operations_pb2_grpc.add_OperationsServicer_to_server(script, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Connection(f"127.0.0.1:{port}", None, "AUS", "operator")
    finally:
        server.stop(None)


def test_settle_waits_until_every_worker_has_said_it_is_idle() -> None:
    # Worker 1 is idle from the start, worker 2 is first heard busy: idle only once both last said 0.
    script = _ScriptedWorkers([(1, 0), (1, 0), (2, 3), (1, 0), (2, 1), (2, 0), (1, 0)])
    with _serving(script) as conn, conn.channel() as channel:
        assert settle(conn, channel, timeout=60) is not None
    assert script.calls == 6  # returned at the first answer after which both workers' latest is 0


def test_settle_stops_waiting_when_interrupted() -> None:
    # A server that stays busy: Ctrl-C (`stop`) ends the wait at the next answer, instead of the timeout.
    script = _ScriptedWorkers([(1, 2)])
    with _serving(script) as conn, conn.channel() as channel:
        started = time.monotonic()
        assert settle(conn, channel, timeout=20, stop=lambda: script.calls >= 3) is None  # not the timeout's 20.x
        assert time.monotonic() - started < 10
    assert script.calls == 3


def test_a_callers_connection_is_opened_again_until_it_reaches_its_worker() -> None:
    # Caller 1 belongs on worker 2: the first two connections reach worker 1 (as the kernel may hand them out).
    script = _ScriptedWorkers([(1, 0), (1, 0), (2, 0), (1, 0)])
    with _serving(script) as conn:
        backends = Backends(Endpoints(conn), None)  # type: ignore[arg-type]  # no workload: connections only
        try:
            backends._channel(1)
            assert script.calls == 3
            backends._channel(1)  # kept for the next scenarios: not placed again
            backends._channel(0)  # caller 0 belongs on worker 1, which the next answer names
            assert script.calls == 4
        finally:
            backends.close()


class _NotAnOperator(operations_pb2_grpc.OperationsServicer):
    def __init__(self) -> None:
        self.calls = 0

    def GetStatistics(self, request: object, context: grpc.ServicerContext) -> operations_pb2.Statistics:
        self.calls += 1
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "operators only")


def test_callers_connections_stay_where_the_kernel_put_them_when_the_server_does_not_say() -> None:
    refusing = _NotAnOperator()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    operations_pb2_grpc.add_OperationsServicer_to_server(refusing, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    backends = Backends(Endpoints(Connection(f"127.0.0.1:{port}", None, "AUS", "border")), None)  # type: ignore[arg-type]
    try:
        for k in range(4):
            backends._channel(k)
        assert refusing.calls == 1  # asked once, then never again
    finally:
        backends.close()
        server.stop(None)
