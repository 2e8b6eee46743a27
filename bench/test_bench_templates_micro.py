"""Speed of the template index search through its public interface (`TemplateIndex.build`, `search`).

Galleries of synthetic face-like 512-d templates (`idcheck.biometrics.synthetic`, one capture per identity),
probed with fresh captures of enrolled identities: the exact index (inner product, as the server keeps up to
50,000 templates) and the approximate one (IVF with 8-bit scalar quantisation, nprobe 64, as above that), one
OpenMP thread as the server's default. Each benchmark checks that the mate is found first.
Run with ``.venv/bin/pytest bench/test_bench_templates_micro.py --benchmark-only -q``; the 1,000,000-template
figures of the service are `bench/bench_templates.py`'s.
"""

from __future__ import annotations

import numpy as np
import pytest

from idcheck.biometrics.synthetic import FaceGenerator
from idcheck.index.templates import ArraySource, IndexKind, IndexSettings, TemplateIndex

PROBES = 64


def gallery(n: int, approximate_above: int) -> tuple[TemplateIndex, np.ndarray, np.ndarray]:
    gen = FaceGenerator(seed=42)
    caps = gen.gallery(n, 1, seed=1)
    rows = np.random.default_rng(3).choice(n, size=PROBES, replace=False)
    probes = gen.probes(caps.identities[rows], seed=3).vectors
    settings = IndexSettings(approximate_above=approximate_above, nprobe=64, omp_threads=1)
    index = TemplateIndex.build(settings, ArraySource(np.arange(n), caps.vectors))
    return index, probes, rows


@pytest.fixture(scope="module")
def exact() -> tuple[TemplateIndex, np.ndarray, np.ndarray]:
    index, probes, rows = gallery(50_000, approximate_above=50_000)
    assert index.kind == IndexKind.EXACT
    return index, probes, rows


@pytest.fixture(scope="module")
def approximate() -> tuple[TemplateIndex, np.ndarray, np.ndarray]:
    index, probes, rows = gallery(200_000, approximate_above=50_000)
    assert index.kind == IndexKind.APPROXIMATE
    return index, probes, rows


def test_bench_search_exact_50k_single_probe(benchmark, exact) -> None:
    index, probes, rows = exact
    _scores, ids = benchmark(index.search, probes[0], 10)
    assert ids[0, 0] == rows[0]


def test_bench_search_exact_50k_batch_of_64(benchmark, exact) -> None:
    index, probes, rows = exact
    _scores, ids = benchmark(index.search, probes, 10)
    assert np.mean(ids[:, 0] == rows) >= 0.98


def test_bench_search_ivf_sq8_200k_single_probe(benchmark, approximate) -> None:
    index, probes, rows = approximate
    _scores, ids = benchmark(index.search, probes[1], 64)
    assert rows[1] in ids[0]


def test_bench_search_ivf_sq8_200k_batch_of_64(benchmark, approximate) -> None:
    index, probes, rows = approximate
    _scores, ids = benchmark(index.search, probes, 64)
    # the server re-scores this 64-template shortlist exactly: what matters is that the mate is in it
    assert np.mean([r in found for r, found in zip(rows, ids, strict=True)]) >= 0.98
