"""The FAISS template index: exact and approximate search, removal, rebuilds, snapshots, concurrency."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from idcheck.biometrics.synthetic import FaceGenerator, uniform_gallery, uniform_probes
from idcheck.index.templates import (
    ArraySource,
    IndexKind,
    IndexSettings,
    SnapshotError,
    TemplateIndex,
    compact_lists,
    normalise,
)

D = 512
GEN = FaceGenerator(seed=11)


def exact_top1(gallery: np.ndarray, probes: np.ndarray) -> np.ndarray:
    return np.argmax(probes @ gallery.T, axis=1)


def test_exact_index_returns_the_true_nearest_by_cosine() -> None:
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((500, D)).astype(np.float32) * rng.uniform(0.1, 10, (500, 1)).astype(np.float32)
    index = TemplateIndex.build(IndexSettings(), ArraySource(np.arange(100, 600), raw))
    assert index.kind is IndexKind.EXACT
    probes = normalise(rng.standard_normal((50, D)))
    scores, ids = index.search(probes, 5)
    truth = normalise(raw) @ probes.T
    assert np.array_equal(ids[:, 0] - 100, np.argmax(truth, axis=0))
    assert np.allclose(scores[:, 0], truth.max(axis=0), atol=1e-5)  # the score is the cosine similarity
    assert np.all(np.diff(scores, axis=1) <= 1e-7)  # best first


# Unstructured (uniform) vectors are IVF's hardest case: a probe at cosine 0.7 of its mate often falls in
# another list, so it needs twice the lists probed that face-like (clustered) embeddings need.
@pytest.mark.parametrize(("kind", "nprobe"), [("face", 16), ("uniform", 32)])
def test_approximate_recall_at_1_is_at_least_099_of_exact(kind: str, nprobe: int) -> None:
    if kind == "face":
        gallery = GEN.gallery(10_000, 2, seed=1)
        vectors = gallery.vectors
        probes = GEN.probes(np.arange(0, 10_000, 20), seed=2).vectors
    else:
        vectors = uniform_gallery(20_000, D, seed=3)
        probes = uniform_probes(vectors, np.arange(0, 20_000, 40), seed=4)
    ids = np.arange(len(vectors), dtype=np.int64)
    settings = IndexSettings(approximate_above=1_000, nprobe=nprobe)
    approx = TemplateIndex.build(settings, ArraySource(ids, vectors))
    assert approx.kind is IndexKind.APPROXIMATE
    truth = exact_top1(vectors, probes)
    _scores, shortlist = approx.search(probes, 64)
    raw = np.mean(shortlist[:, 0] == truth)
    # What the gallery reports: the shortlist re-scored exactly from the stored vectors.
    rescored = np.einsum("nkd,nd->nk", vectors[shortlist], probes)
    reranked = shortlist[np.arange(len(probes)), np.argmax(rescored, axis=1)]
    assert np.mean(reranked == truth) >= 0.99
    assert raw >= 0.9  # the quantised scores alone, before re-scoring


def test_removed_templates_are_never_returned() -> None:
    vectors = GEN.gallery(300, 2, seed=1).vectors
    for settings in (IndexSettings(), IndexSettings(approximate_above=100, nprobe=64)):
        index = TemplateIndex.build(settings, ArraySource(np.arange(len(vectors)), vectors))
        doomed = np.arange(0, len(vectors), 3)
        assert index.remove(doomed, sequence=1) == len(doomed)
        _scores, ids = index.search(vectors[doomed], 20)
        assert not np.isin(ids, doomed).any()
        assert len(index) == len(vectors) - len(doomed)


def test_index_grows_into_approximate_and_journaled_changes_survive_the_swap() -> None:
    caps = GEN.gallery(1_500, 2, seed=1)
    settings = IndexSettings(approximate_above=1_000, nprobe=32)
    index = TemplateIndex(settings)
    store = {"ids": np.arange(2_000), "vectors": caps.vectors[:2_000], "seq": 2_000}
    index.add(store["ids"], store["vectors"], 2_000)
    assert "exceed approximate_above" in index.rebuild_reason()
    opened = threading.Event()
    proceed = threading.Event()

    class SlowSource(ArraySource):
        def sample(self, n: int) -> np.ndarray:
            opened.set()
            proceed.wait(10)
            return super().sample(n)

    assert index.maybe_rebuild(lambda: SlowSource(store["ids"], store["vectors"], sequence=2_000))
    assert opened.wait(10)
    # Changes while the new index is trained: applied to the current one and journaled for the new one.
    index.add(np.arange(2_000, 3_000), caps.vectors[2_000:], 2_100)
    index.remove(np.arange(0, 100), 2_200)
    assert index.kind is IndexKind.EXACT and index.rebuilding
    proceed.set()
    index.wait_rebuild(30)
    assert index.kind is IndexKind.APPROXIMATE and index.rebuilds == 1 and len(index) == 2_900
    _s, ids = index.search(caps.vectors[2_500:2_510], 1)
    assert list(ids[:, 0]) == list(range(2_500, 2_510))
    _s, ids = index.search(caps.vectors[:100], 50)
    assert not np.isin(ids, np.arange(100)).any()


def test_rebuild_is_due_after_growth_shrink_and_churn() -> None:
    vectors = uniform_gallery(4_000, D, seed=5)
    settings = IndexSettings(approximate_above=1_000, rebuild_growth=2.0)
    index = TemplateIndex.build(settings, ArraySource(np.arange(2_000), vectors[:2_000]))
    assert index.rebuild_reason() == ""
    index.add(np.arange(2_000, 4_000), vectors[2_000:], 2)
    assert "grown" in index.rebuild_reason()
    index = TemplateIndex.build(settings, ArraySource(np.arange(4_000), vectors))
    index.remove(np.arange(0, 2_500), 3)
    assert "shrunk" in index.rebuild_reason()


def test_lists_are_sized_for_the_middle_of_the_range_served_until_the_next_training() -> None:
    assert IndexSettings(rebuild_growth=4.0).nlist_for(1_000_000) == 1_414  # sqrt(2,000,000)
    assert IndexSettings(rebuild_growth=2.0).nlist_for(600_000) == 921  # sqrt(600,000 * 1.414)
    assert IndexSettings(nlist=300).nlist_for(600_000) == 300  # an explicit nlist wins
    assert IndexSettings().nlist_for(2_000) == 2_000 // 39  # enough training points per list


def test_growth_is_measured_from_the_size_trained_on_and_a_rebuild_due_at_its_end_is_chained() -> None:
    vectors = GEN.gallery(3_000, 2, seed=4).vectors
    settings = IndexSettings(approximate_above=1_000, rebuild_growth=2.0, nprobe=16)
    index = TemplateIndex(settings)
    index.add(np.arange(1_500), vectors[:1_500], 1_500)
    held = {"n": 1_500}
    opened = threading.Event()
    proceed = threading.Event()

    class SlowSource(ArraySource):
        def sample(self, n: int) -> np.ndarray:
            opened.set()
            proceed.wait(10)
            return super().sample(n)

    def open_store() -> ArraySource:  # what the store holds when the rebuild reads it
        n = held["n"]
        return SlowSource(np.arange(n), vectors[:n], sequence=n)

    assert index.maybe_rebuild(open_store)
    assert opened.wait(10)
    index.add(np.arange(1_500, 6_000), vectors[1_500:6_000], 6_000)  # while training on 1,500
    held["n"] = 6_000
    proceed.set()
    index.wait_rebuild(60)  # no further change: the second rebuild was chained by the first
    stats = index.stats()
    assert (stats.rebuilds, stats.trained_size, stats.ntotal, stats.kind) == (2, 6_000, 6_000, IndexKind.APPROXIMATE)
    assert index.rebuild_reason() == ""
    _s, ids = index.search(vectors[5_000:5_010], 1)
    assert list(ids[:, 0]) == list(range(5_000, 5_010))


def test_compacting_lists_keeps_every_entry_and_answer() -> None:
    vectors = uniform_gallery(4_000, D, seed=8)
    index = TemplateIndex.build(
        IndexSettings(approximate_above=500, nprobe=8), ArraySource(np.arange(2_000), vectors[:2_000])
    )
    for start in range(2_000, 4_000, 100):  # batches of adds grow the lists geometrically
        index.add(np.arange(start, start + 100), vectors[start : start + 100], start)
    before = index.search(vectors[::40], 10)
    sizes = [index._index.invlists.list_size(i) for i in range(index._index.nlist)]
    compact_lists(index._index)
    assert [index._index.invlists.list_size(i) for i in range(index._index.nlist)] == sizes
    after = index.search(vectors[::40], 10)
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])
    assert index.remove(np.arange(0, 4_000, 2), 5_000) == 2_000  # still an ordinary, writable index
    assert len(index) == 2_000


def test_memory_is_bounded_under_enrol_remove_churn() -> None:
    vectors = uniform_gallery(2_000, D, seed=6)
    settings = IndexSettings(approximate_above=500, nprobe=8)
    index = TemplateIndex.build(settings, ArraySource(np.arange(1_000), vectors[:1_000]))
    sizes = []
    next_id = 1_000
    for round_ in range(30):  # replace a fifth of the gallery each round
        index.remove(np.arange(next_id - 1_000, next_id - 800), round_)
        new = np.arange(next_id, next_id + 200)
        index.add(new, vectors[new % 2_000], round_)
        next_id += 200
        live = np.arange(next_id - 1_000, next_id)
        index.maybe_rebuild(lambda live=live: ArraySource(live, vectors[live % 2_000]), background=False)
        sizes.append(len(index))
    assert set(sizes) == {1_000}
    assert index.rebuilds >= 5  # churn compaction happened
    data_bytes = sum(index._index.invlists.list_size(i) for i in range(index._index.nlist)) * (D + 8)
    assert data_bytes <= 1_000 * (D + 8)


def test_snapshot_round_trip_keeps_ids_and_sequence(tmp_path: Path) -> None:
    vectors = GEN.gallery(600, 2, seed=1).vectors
    for settings in (IndexSettings(), IndexSettings(approximate_above=100)):
        index = TemplateIndex.build(settings, ArraySource(np.arange(len(vectors)), vectors, sequence=77))
        path = tmp_path / f"{index.kind}.idx"
        index.save(path)
        loaded = TemplateIndex.load(path, settings)
        assert (loaded.sequence, loaded.kind, len(loaded)) == (77, index.kind, len(vectors))
        assert np.array_equal(loaded.search(vectors[:20], 3)[1], index.search(vectors[:20], 3)[1])


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "missing", "dimension"])
def test_untrustworthy_snapshot_is_refused_before_faiss_reads_it(tmp_path: Path, damage: str) -> None:
    vectors = uniform_gallery(200, D, seed=2)
    path = tmp_path / "t.idx"
    TemplateIndex.build(IndexSettings(), ArraySource(np.arange(200), vectors, sequence=5)).save(path)
    data = path.read_bytes()
    settings = IndexSettings()
    if damage == "flip":
        path.write_bytes(data[:-500] + bytes([data[-500] ^ 1]) + data[-499:])
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        import faiss

        faiss.write_index(faiss.IndexFlatIP(D), str(path))
    elif damage == "missing":
        path.unlink()
    else:
        settings = IndexSettings(dimension=128)
    with pytest.raises(SnapshotError):
        TemplateIndex.load(path, settings)


def test_concurrent_searches_and_changes_stay_consistent() -> None:
    vectors = uniform_gallery(3_000, D, seed=9)
    index = TemplateIndex.build(IndexSettings(), ArraySource(np.arange(1_000), vectors[:1_000]))
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                _s, ids = index.search(vectors[:8], 4)
                assert (ids >= -1).all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for start in range(1_000, 3_000, 250):
        index.add(np.arange(start, start + 250), vectors[start : start + 250], start)
        index.remove(np.arange(start - 1_000, start - 750), start)
    stop.set()
    for t in threads:
        t.join()
    assert not errors and len(index) == 1_000
    _s, ids = index.search(vectors[2_000:2_010], 1)
    assert list(ids[:, 0]) == list(range(2_000, 2_010))
