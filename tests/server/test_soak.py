"""Soak: a real server under steady mixed load — single checks, manifests, uploads and cancels, verify, identify,
template enrolment and removal — for a while, sampling its resident memory from /proc.

After warm-up (the first third of the run, at least 10 s), resident memory must not grow by more than 10%. The
load keeps the data set steady (uploads and cancels cycle through a fixed set of document numbers, templates are
enrolled and removed again), so growth would be a leak, not data. Every call must succeed.

`make test` runs a bounded form (~35 s); `IDCHECK_SOAK_SECONDS` sets the length (`make torture`: 300 s).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from idcheck.biometrics.synthetic import FaceGenerator
from idcheck.client.biometrics import BiometricsClient
from idcheck.client.errors import IdcheckError
from tests.conftest import ServerProcess

SECONDS = float(os.environ.get("IDCHECK_SOAK_SECONDS", "35"))
WARM_UP = max(10.0, SECONDS / 3)
MAX_GROWTH = 0.10
RECORDS = 20_000
RING = 2_000  # document numbers the uploader cycles through
SUBJECTS = 300


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")


def record(number: str, status: int = 2) -> dict[str, object]:
    return {"issuing_state": "NZL", "document_number": number, "document_class": 1, "status": status,
            "event_date": "2025-01-01"}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 300)
def test_resident_memory_is_steady_under_mixed_load(server_factory: Callable[..., ServerProcess]) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc to read resident memory")
    server = server_factory("--rate-limit-per-second", "0")
    gen = FaceGenerator(seed=5)
    gallery = gen.gallery(SUBJECTS, 2, seed=1)
    probes = gen.probes(np.arange(SUBJECTS), seed=2)
    strangers = gen.probes(np.arange(10_000, 10_050), seed=3)  # for the enrol/remove churn
    with server.client("NZL", "member") as c:
        c.upload([record(f"SK{i:07d}") for i in range(RECORDS)], upload_id="soak-seed")
    with BiometricsClient(server.address, member="NZL", role="member") as bio:
        bio.enrol(
            [
                {"subject_id": f"SK-{int(s):04d}", "vector": v, "documents": [("NZL", f"SK{int(s):07d}")]}
                for s, v in zip(gallery.identities, gallery.vectors, strict=True)
            ],
            batch_size=200,
        )
        # Subjects whose probe identify finds (a few have only poor captures enrolled and fall below threshold).
        findable = [
            s for s in range(SUBJECTS)
            if [c.subject_id for c in bio.identify(probes.vectors[s], max_candidates=1).candidates] == [f"SK-{s:04d}"]
        ]  # fmt: skip
    assert len(findable) > SUBJECTS // 2

    stop = threading.Event()
    counts: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def loop(name: str, body: Callable[[int], None]) -> None:
        i = 0
        while not stop.is_set():
            try:
                body(i)
            except (IdcheckError, AssertionError, IndexError) as exc:  # a wrong answer counts as an error too
                with lock:
                    errors.append(f"{name}: {type(exc).__name__} {exc}")
            i += 1
            with lock:
                counts[name] = counts.get(name, 0) + 1

    border = server.client("FJI", "border")
    owner = server.client("NZL", "member")
    bio_border = BiometricsClient(server.address, member="FJI", role="border")
    bio_owner = BiometricsClient(server.address, member="NZL", role="member")

    def check(i: int) -> None:
        answer = border.check(state="NZL", number=f"SK{(i * 7919) % RECORDS:07d}" if i % 2 else f"ZZ{i:07d}")
        assert answer.verdict == ("HIT" if i % 2 else "CLEAR")

    def manifest(i: int) -> None:
        answers = list(
            border.check_many([{"state": "NZL", "number": f"SK{(i + k) % RECORDS:07d}"} for k in range(500)])
        )
        assert len(answers) == 500 and all(a.verdict == "HIT" for a in answers)

    def upload_and_cancel(i: int) -> None:
        numbers = [f"RG{(i * 100 + k) % RING:07d}" for k in range(100)]
        owner.upload([record(n) for n in numbers], upload_id=f"soak-{i}")
        owner.cancel([("NZL", n, 1) for n in numbers])

    def verify(i: int) -> None:
        s = i % SUBJECTS
        assert bio_border.verify(probes.vectors[s], subject_id=f"SK-{s:04d}").decision == "MATCH"

    def identify(i: int) -> None:
        s = findable[i % len(findable)]
        assert bio_border.identify(probes.vectors[s], max_candidates=5).candidates[0].subject_id == f"SK-{s:04d}"

    def churn_templates(i: int) -> None:
        result = bio_owner.enrol([{"subject_id": f"CH-{i}", "vector": strangers.vectors[i % len(strangers.vectors)]}])
        assert bio_owner.remove(template_ids=list(result.template_ids)).removed == 1
        time.sleep(0.05)

    workers = [
        threading.Thread(target=loop, args=(name, body), daemon=True)
        for name, body in (
            ("check", check),
            ("manifest", manifest),
            ("upload+cancel", upload_and_cancel),
            ("verify", verify),
            ("identify", identify),
            ("enrol+remove", churn_templates),
        )
    ]
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    for w in workers:
        w.start()
    while (elapsed := time.monotonic() - started) < SECONDS:
        samples.append((elapsed, rss_bytes(server.proc.pid)))
        time.sleep(0.5)
    stop.set()
    for w in workers:
        w.join(60)
    for client in (border, owner, bio_border, bio_owner):
        client.close()

    warm = [rss for t, rss in samples if t < WARM_UP]
    after = [rss for t, rss in samples if t >= WARM_UP]
    baseline = statistics.median(warm[-5:])
    peak = max(after)
    mib = 1 << 20
    quarters = [statistics.median(after[k * len(after) // 4 : (k + 1) * len(after) // 4]) / mib for k in range(4)]
    print(
        f"\nsoak {SECONDS:.0f}s: calls {dict(sorted(counts.items()))}; RSS at warm-up end {baseline / mib:.1f} MiB, "
        f"after: min {min(after) / mib:.1f}, max {peak / mib:.1f}, last {after[-1] / mib:.1f} MiB "
        f"(+{(peak / baseline - 1) * 100:.1f}% peak); median by quarter {', '.join(f'{q:.1f}' for q in quarters)} MiB"
    )
    assert not errors, errors[:5]
    assert all(counts.get(name, 0) > 0 for name in ("check", "manifest", "upload+cancel", "verify", "identify"))
    assert server.proc.poll() is None, "the server died under load"
    assert peak <= baseline * (1 + MAX_GROWTH), (
        f"resident memory grew {(peak / baseline - 1) * 100:.1f}% after warm-up "
        f"({baseline / mib:.1f} -> {peak / mib:.1f} MiB)"
    )
