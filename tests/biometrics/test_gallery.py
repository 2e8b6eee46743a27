"""The gallery over a real store: all-or-nothing enrolment, ownership, thresholds, removal, restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from idcheck.biometrics import Gallery, GallerySettings, Probe, TemplateError, TemplateInput
from idcheck.biometrics.synthetic import FaceGenerator
from idcheck.index.templates import IndexSettings
from idcheck.store import NotOwner
from idcheck.store.templates import TemplateNotFound

GEN = FaceGenerator(seed=21)
CAPS = GEN.gallery(60, 2, seed=1)
PROBES = GEN.probes(np.arange(60), seed=2)


def tpl(row: int, subject: str | None = None) -> TemplateInput:
    return TemplateInput(
        subject or f"S{CAPS.identities[row]}",
        1,
        512,
        CAPS.vectors[row].astype("<f4").tobytes(),
        float(CAPS.quality[row]),
        [("UTO", f"X{CAPS.identities[row]}")],
    )


def probe(v: np.ndarray) -> Probe:
    return Probe(1, 512, np.asarray(v, "<f4").tobytes())


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[Gallery]:
    g = Gallery.open(tmp_path, GallerySettings())
    g.enrol("UTO", [tpl(i) for i in range(len(CAPS))])
    yield g
    g.store.close()  # closing twice is harmless


def test_verify_decision_flips_exactly_at_the_configured_threshold(tmp_path: Path, gallery: Gallery) -> None:
    score = gallery.verify(probe(PROBES.vectors[4]), subject_id="S4").score
    gallery.close()
    for threshold, decision in ((score, "MATCH"), (float(np.nextafter(np.float32(score), np.float32(1))), "NO_MATCH")):
        g = Gallery.open(tmp_path, GallerySettings(verify_threshold=threshold, verify_fmr=1e-5))
        try:
            r = g.verify(probe(PROBES.vectors[4]), subject_id="S4")
            assert (r.decision, r.operating_point.threshold, r.operating_point.target_rate) == (
                decision,
                threshold,
                1e-5,
            )
        finally:
            g.close()


def test_identify_threshold_hides_weak_candidates(gallery: Gallery) -> None:
    stranger = GEN.probes(np.array([99_999]), seed=3).vectors[0]
    assert gallery.identify(probe(stranger), 10).candidates == ()
    found = gallery.identify(probe(PROBES.vectors[9]), 10).candidates
    assert found[0].subject_id == "S9" and all(c.score >= 0.5557 for c in found)


def test_enrol_is_all_or_nothing_and_reports_every_bad_field(gallery: Gallery) -> None:
    before = (len(gallery), gallery.sequence)
    bad = [
        tpl(0, "NEW-0"),
        TemplateInput("NEW-1", 1, 256, b"\0" * 1024),
        TemplateInput("", 1, 512, CAPS.vectors[1].tobytes(), quality=1.5),
        TemplateInput("NEW-3", 1, 512, CAPS.vectors[2].tobytes(), documents=[("QQQ", "1")]),
    ]
    with pytest.raises(TemplateError) as err:
        gallery.enrol("UTO", bad)
    assert [f for f, _ in err.value.violations] == [
        "templates[1].vector.dimension",
        "templates[2].subject_id",
        "templates[2].quality",
        "templates[3].documents[0].issuing_state",
    ]
    assert (len(gallery), gallery.sequence) == before


def test_other_members_subject_refused_without_applying_anything(gallery: Gallery) -> None:
    before = gallery.sequence
    with pytest.raises(NotOwner) as err:
        gallery.enrol("NZL", [tpl(0, "NZL-1"), tpl(1, "S0")])
    assert err.value.field == "templates[1].subject_id"
    with pytest.raises(NotOwner):
        gallery.remove("NZL", [], ["S0"])
    assert gallery.sequence == before
    with pytest.raises(TemplateNotFound):
        gallery.verify(probe(PROBES.vectors[0]), subject_id="NZL-1")


def test_removal_is_immediate_and_durable(tmp_path: Path, gallery: Gallery) -> None:
    gallery.remove("UTO", [], ["S5"])
    assert "S5" not in {c.subject_id for c in gallery.identify(probe(PROBES.vectors[5]), 100).candidates}
    with pytest.raises(TemplateNotFound):
        gallery.remove("UTO", [], ["S5"])  # nothing left to remove: refused, nothing changed
    # A crash (no snapshot written at close) is caught up from the store's change log.
    gallery.store.close()
    again = Gallery.open(tmp_path, GallerySettings())
    try:
        assert "S5" not in {c.subject_id for c in again.identify(probe(PROBES.vectors[5]), 100).candidates}
        assert len(again) == len(CAPS) - 2
    finally:
        again.close()


def test_stale_snapshot_is_brought_up_to_date_from_the_change_log(tmp_path: Path) -> None:
    settings = GallerySettings(index=IndexSettings(approximate_above=50, nprobe=64))
    g = Gallery.open(tmp_path, settings)
    g.enrol("UTO", [tpl(i) for i in range(80)])
    g.index.wait_rebuild(30)
    g.close()  # snapshot at this sequence
    g = Gallery.open(tmp_path, settings)
    g.enrol("UTO", [tpl(i) for i in range(80, 120)])
    g.remove("UTO", [], ["S3"])
    g.store.close()  # crash: the snapshot is now stale
    g = Gallery.open(tmp_path, settings)
    try:
        assert "plus 40 enrolled and 2 removed" in g.load_report
        assert len(g) == 118
        assert g.identify(probe(PROBES.vectors[50]), 1).candidates[0].subject_id == "S50"
        assert "S3" not in {c.subject_id for c in g.identify(probe(PROBES.vectors[3]), 100).candidates}
    finally:
        g.close()


def test_store_backed_approximate_index_keeps_recall_on_periodic_enrolment_order(tmp_path: Path) -> None:
    # One capture per identity: enrolment order cycles through the model's clusters, so training on every
    # k-th row (a systematic sample) would see a few clusters only; recall fell to ~0.6 before sampling was random.
    gen = FaceGenerator(seed=42)
    caps = gen.gallery(12_000, 1, seed=1)
    probes = gen.probes(np.arange(0, 12_000, 60), seed=3).vectors
    truth = np.argmax(probes @ caps.vectors.T, axis=1) + 1  # template ids start at 1
    g = Gallery.open(tmp_path, GallerySettings(index=IndexSettings(approximate_above=1_000)))
    try:
        for start in range(0, 12_000, 4_000):
            g.enrol(
                "UTO", [TemplateInput(f"S{i}", 1, 512, caps.vectors[i].tobytes()) for i in range(start, start + 4_000)]
            )
        g.index.rebuild(g.store.open_snapshot)
        assert g.index.kind == "approximate"
        top = np.array([g.index.search(p[None, :], 1)[1][0, 0] for p in probes])
        assert np.mean(top == truth) >= 0.99
    finally:
        g.close()


# A child process enrols, lets the background snapshot catch up with the first 80 templates, enrols and
# removes more, then dies by SIGKILL: no close(), no snapshot at shutdown.
CRASHING_CHILD = """
import os, signal, sys, time
import numpy as np
from idcheck.biometrics import Gallery, GallerySettings, TemplateInput
from idcheck.biometrics.synthetic import FaceGenerator
from idcheck.index.templates import IndexSettings

caps = FaceGenerator(seed=21).gallery(60, 2, seed=1)
def tpl(row):
    return TemplateInput(f"S{caps.identities[row]}", 1, 512, caps.vectors[row].astype("<f4").tobytes())
settings = GallerySettings(
    index=IndexSettings(approximate_above=50), snapshot_changes=50, snapshot_seconds=0
)
g = Gallery.open(sys.argv[1], settings)
g.enrol("UTO", [tpl(i) for i in range(40)])
assert g.snapshots_written == 0  # 40 changes: below snapshot_changes
g.enrol("UTO", [tpl(i) for i in range(40, 80)])
deadline = time.monotonic() + 30
while g.saved_sequence < 80 and time.monotonic() < deadline:
    time.sleep(0.05)
g.enrol("UTO", [tpl(i) for i in range(80, 110)])
g.remove("UTO", [], ["S3"])
print(g.saved_sequence, g.snapshots_written, len(g), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_after_sigkill_start_loads_the_background_snapshot_and_replays_only_the_tail(tmp_path: Path) -> None:
    import subprocess
    import sys

    child = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -9, child.stderr
    assert child.stdout.split() == ["80", "1", "108"]  # one background snapshot, at sequence 80
    settings = GallerySettings(index=IndexSettings(approximate_above=50))
    g = Gallery.open(tmp_path, settings)
    try:
        assert g.load_report == "snapshot at sequence 80 plus 30 enrolled and 2 removed since"
        assert len(g) == 108 and g.sequence == 112
        assert g.identify(probe(PROBES.vectors[50]), 1).candidates[0].subject_id == "S50"
        assert "S3" not in {c.subject_id for c in g.identify(probe(PROBES.vectors[3]), 100).candidates}
    finally:
        g.close()


def test_background_snapshot_after_quiet_time_and_none_without_changes(tmp_path: Path) -> None:
    g = Gallery.open(tmp_path, GallerySettings(snapshot_changes=1_000, snapshot_seconds=0.5))
    try:
        g.enrol("UTO", [tpl(i) for i in range(10)])
        deadline = time.monotonic() + 20
        while g.saved_sequence < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (g.saved_sequence, g.snapshots_written, g.unsaved_changes) == (10, 1, 0)
        time.sleep(1.5)  # three more timer periods: nothing changed, nothing written
        assert g.snapshots_written == 1
    finally:
        g.close()
    again = Gallery.open(tmp_path, GallerySettings())
    try:
        assert again.load_report == "snapshot at sequence 10 plus 0 enrolled and 0 removed since"
    finally:
        again.close()


def test_a_worker_catches_up_with_another_workers_enrolment_without_a_request(tmp_path: Path) -> None:
    from idcheck.register.peers import TEMPLATES, SequenceBoard
    from tests.conftest import wait_until

    board = SequenceBoard(2)
    writer = Gallery.open(tmp_path, GallerySettings())
    reader = Gallery.open(tmp_path, GallerySettings())  # a second worker on the same data directory
    try:
        writer.follow(board.channel(TEMPLATES), writes_snapshots=True)
        reader.follow(board.channel(TEMPLATES), writes_snapshots=False)
        writer.enrol("UTO", [tpl(i) for i in range(10)])
        assert wait_until(lambda: reader.index.sequence == writer.index.sequence)  # no request reached `reader`
        assert writer.index.sequence > 0
    finally:
        writer.close()
        reader.close()
