"""Crash safety: SIGKILL the server at random moments while uploads and cancels stream, restart, and prove

- every acknowledged upload is fully present, every acknowledged cancel holds;
- an upload or cancel in flight at the kill is all or nothing;
- the restarted in-memory index answers exactly as the store says;
- the change log and the audit log have no gaps.

`IDCHECK_CRASH_KILLS` sets the number of kills (default 20) and `IDCHECK_CRASH_UPLOAD_ROWS` the largest upload
(default 100); `make torture` runs more and larger. `IDCHECK_CRASH_SEED` replays a run.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from pathlib import Path

from idcheck.client.errors import IdcheckError
from tests.conftest import start_server

KILLS = int(os.environ.get("IDCHECK_CRASH_KILLS", "20"))
UPLOAD_ROWS = int(os.environ.get("IDCHECK_CRASH_UPLOAD_ROWS", "100"))
MEMBER = "NZL"


def rec(number: str) -> dict[str, object]:
    return {
        "issuing_state": MEMBER,
        "document_number": number,
        "document_class": 1,
        "status": 2,
        "event_date": "2025-03-01",
    }


class Model:
    """What the register must hold, from what was acknowledged."""

    def __init__(self) -> None:
        self.listed: set[str] = set()  # acknowledged uploaded and not acknowledged cancelled
        self.cancelled: set[str] = set()
        self.maybe_uploads: list[set[str]] = []  # in flight at a kill: all or nothing
        self.maybe_cancels: list[set[str]] = []
        self.in_flight_outcomes = {
            "upload applied": 0,
            "upload not applied": 0,
            "cancel applied": 0,
            "cancel not applied": 0,
        }

    def all_numbers(self) -> set[str]:
        out = self.listed | self.cancelled
        for group in self.maybe_uploads + self.maybe_cancels:
            out |= group
        return out


def verify(address: str, data_dir: Path, model: Model) -> None:
    from idcheck.client.register import RegisterClient

    numbers = sorted(model.all_numbers())
    with RegisterClient(address, member=MEMBER, role="member", timeout=30) as c:
        answers = list(c.check_many([{"state": MEMBER, "number": n} for n in numbers], batch_size=10_000))
    hits = {n for n, a in zip(numbers, answers, strict=True) if a.verdict == "HIT"}
    in_flight_cancels = set().union(*model.maybe_cancels)
    certain = model.listed - in_flight_cancels
    assert certain <= hits, f"acknowledged uploads lost: {sorted(certain - hits)[:5]}"
    assert not (model.cancelled & hits), f"acknowledged cancels undone: {sorted(model.cancelled & hits)[:5]}"
    for group in model.maybe_uploads:
        present = group & hits
        assert present in (set(), group), f"upload half applied: {len(present)} of {len(group)} rows"
        model.listed |= present  # settle: what is there now must stay
        model.in_flight_outcomes["upload applied" if present else "upload not applied"] += 1
    for group in model.maybe_cancels:
        still = group & hits
        assert still in (set(), group), f"cancel half applied: {len(still)} of {len(group)} still listed"
        model.in_flight_outcomes["cancel not applied" if still else "cancel applied"] += 1
        if not still:
            model.listed -= group
            model.cancelled |= group
    model.maybe_uploads.clear()
    model.maybe_cancels.clear()
    assert hits == model.listed
    with sqlite3.connect(data_dir / "register.db") as db:
        active = {n for (n,) in db.execute("SELECT number_canonical FROM records WHERE status <> 6")}
        assert active == hits, "the index answers differently from the store"
        seqs = [s for (s,) in db.execute("SELECT seq FROM change_log ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1)), "gap in the change log"
        stale = db.execute(
            "SELECT COUNT(*) FROM records r "
            "WHERE r.seq <> (SELECT MAX(seq) FROM change_log c WHERE c.record_id = r.record_id)"
        ).fetchone()[0]
        assert stale == 0, "a record's sequence is not its last change"
        calls = [c for (c,) in db.execute("SELECT call_id FROM audit_calls ORDER BY call_id")]
        assert calls == list(range(1, len(calls) + 1)), "gap in the audit log's calls"
        # Counted in the audit_log view: a manifest's plain CLEARs are stored packed (audit_clear), its other
        # documents as `audit` rows, and both must be there, never half of them.
        short = db.execute(
            "SELECT COUNT(*) FROM audit_calls c "
            "WHERE c.documents <> (SELECT COUNT(*) FROM audit_log a WHERE a.call_id = c.call_id)"
        ).fetchone()[0]
        assert short == 0, "an audit call lost some of its documents"


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = int(os.environ.get("IDCHECK_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    model = Model()
    serial = 0
    for kill in range(KILLS):
        server = start_server(data_dir)
        timer = threading.Timer(rng.uniform(0.05, 0.4), server.proc.kill)
        try:
            try:
                verify(server.address, data_dir, model)
            except AssertionError as exc:
                raise AssertionError(f"after kill {kill} (seed {seed}): {exc}") from None
            timer.start()
            with server.client(MEMBER, "member", timeout=30) as c:
                while True:
                    if model.listed and rng.random() < 0.3:
                        group = set(rng.sample(sorted(model.listed), min(len(model.listed), rng.randint(1, 50))))
                        model.maybe_cancels.append(group)
                        c.cancel([(MEMBER, n) for n in group], reason="recovered")
                        model.maybe_cancels.pop()
                        model.listed -= group
                        model.cancelled |= group
                    else:
                        serial += 1
                        group = {f"K{serial:05d}{i:04d}" for i in range(rng.randint(1, UPLOAD_ROWS))}
                        model.maybe_uploads.append(group)
                        # every check is audited too, so audit rows are in flight at the kill as well
                        c.check(state=MEMBER, number=next(iter(group)))
                        c.upload([rec(n) for n in sorted(group)], upload_id=f"crash-{serial}")
                        model.maybe_uploads.pop()
                        model.listed |= group
        except IdcheckError:
            pass  # the server died under the call: that call is in the model's "maybe" lists
        finally:  # whatever happened, this round's server does not outlive it
            timer.cancel()
            server.proc.kill()
            server.proc.wait()
    final = start_server(data_dir)
    try:
        verify(final.address, data_dir, model)
    finally:
        final.stop()
    assert model.listed, f"no upload was ever acknowledged in {KILLS} rounds (seed {seed})"
    print(f"crash safety: {KILLS} kills, seed {seed}, calls in flight at the kill: {model.in_flight_outcomes}")
