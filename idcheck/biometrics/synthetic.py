"""Synthetic face-like templates: the stand-in for a face data set, which cannot be downloaded here.

Real face embeddings (ArcFace-class, 512-d, L2-normalised) are not uniform on the sphere. Identities
occupy a low-dimensional part of the space and cluster (by demographic group, age, capture population);
every capture adds variation that is partly shared by all identities (pose, illumination, expression,
camera: the same few directions for everyone) and partly idiosyncratic; and a minority of captures are of
low quality, with much more noise. The model here reproduces those traits:

- an identity is `u = normalise(sqrt(c) * centre[cluster] + sqrt(1 - c) * own)` in an `identity_rank`-d
  subspace of the full space (a random orthonormal basis), with `clusters` cluster centres;
- a capture is `x = normalise(u + nuisance + noise)`: `nuisance` lies in a `nuisance_rank`-d subspace
  shared by every capture, `noise` is isotropic in the full space; their total magnitude `s` is drawn per
  capture, uniformly in `noise_range` for good captures and in `low_quality_noise` for the
  `low_quality_fraction` of poor ones (quality score 1 - s / 2, clipped to [0, 1]).

With the defaults, two good captures of one identity score about 1 / (1 + s^2): 0.6 to 0.8 (median ~0.7);
two captures of different identities mostly score below 0.3 (mean ~0.06, higher within a cluster); captures
of low quality score 0.35 to 0.55 against their mates. `uniform_gallery` gives the unstructured baseline
(independent Gaussian directions) that recall figures are also reported on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from idcheck.index.templates import normalise

_BLOCK = 4096


@dataclass(frozen=True, slots=True)
class FaceModel:
    """Parameters of the synthetic face-embedding model (see the module docstring)."""

    dimension: int = 512
    identity_rank: int = 128
    clusters: int = 24
    cluster_share: float = 0.3
    nuisance_rank: int = 16
    nuisance_share: float = 0.35  # share of a capture's variation along the shared nuisance directions
    noise_range: tuple[float, float] = (0.5, 0.82)
    low_quality_fraction: float = 0.08
    low_quality_noise: tuple[float, float] = (1.05, 1.35)


@dataclass(frozen=True, slots=True)
class Captures:
    """Synthetic captures: vectors (unit rows), the identity of each, and its quality score."""

    vectors: np.ndarray
    identities: np.ndarray
    quality: np.ndarray

    def __len__(self) -> int:
        return len(self.identities)


def _orthonormal(rng: np.random.Generator, rows: int, dimension: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dimension, rows)))
    return np.ascontiguousarray(q.T, dtype=np.float32)


class FaceGenerator:
    """Deterministic generator of face-like identities and captures for one seed."""

    def __init__(self, model: FaceModel | None = None, seed: int = 0) -> None:
        self.model = m = model or FaceModel()
        rng = np.random.default_rng(seed)
        self.seed = seed
        self._identity_basis = _orthonormal(rng, m.identity_rank, m.dimension)
        self._nuisance_basis = _orthonormal(rng, m.nuisance_rank, m.dimension)
        centres = rng.standard_normal((m.clusters, m.identity_rank)).astype(np.float32)
        self._centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)

    @property
    def dimension(self) -> int:
        return self.model.dimension

    def identities(self, ids: np.ndarray) -> np.ndarray:
        """Unit identity directions for integer identity numbers (the same number gives the same identity)."""
        m = self.model
        ids = np.asarray(ids, dtype=np.int64)
        own = np.empty((len(ids), m.identity_rank), dtype=np.float32)
        blocks = ids // _BLOCK
        for block in np.unique(blocks):
            rows = np.flatnonzero(blocks == block)
            own[rows] = self._block(int(block))[ids[rows] % _BLOCK]
        own /= np.linalg.norm(own, axis=1, keepdims=True)
        z = np.sqrt(m.cluster_share) * self._centres[ids % m.clusters] + np.sqrt(1 - m.cluster_share) * own
        return normalise(z @ self._identity_basis)

    def _block(self, block: int) -> np.ndarray:
        # Identity i's own direction is row i % _BLOCK of block i // _BLOCK: a function of (seed, i) only.
        rng = np.random.default_rng((self.seed, 1, block))
        return rng.standard_normal((_BLOCK, self.model.identity_rank)).astype(np.float32)

    def captures(
        self, identities: np.ndarray, identity_vectors: np.ndarray, rng: np.random.Generator, *, good_only: bool = False
    ) -> Captures:
        """One capture of each row of `identity_vectors` (unit identity directions)."""
        m = self.model
        n, d = identity_vectors.shape
        low = np.zeros(n, dtype=bool) if good_only else rng.random(n) < m.low_quality_fraction
        s = np.where(
            low,
            rng.uniform(*m.low_quality_noise, size=n),
            rng.uniform(*m.noise_range, size=n),
        ).astype(np.float32)
        nuisance = rng.standard_normal((n, m.nuisance_rank)).astype(np.float32) @ self._nuisance_basis
        nuisance /= np.linalg.norm(nuisance, axis=1, keepdims=True)
        noise = rng.standard_normal((n, d)).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        a = np.sqrt(m.nuisance_share)
        b = np.sqrt(1 - m.nuisance_share)
        x = identity_vectors + s[:, None] * (a * nuisance + b * noise)
        quality = np.clip(1 - s / 2, 0, 1).astype(np.float32)
        return Captures(normalise(x), np.asarray(identities, dtype=np.int64), quality)

    def gallery(self, n_identities: int, captures_per_identity: int = 1, *, seed: int = 1) -> Captures:
        """`captures_per_identity` captures of identities 0 .. n_identities - 1, identity-major order."""
        rng = np.random.default_rng((self.seed, 3, seed))
        ids = np.repeat(np.arange(n_identities, dtype=np.int64), captures_per_identity)
        parts = []
        for start in range(0, len(ids), 262_144):
            chunk = ids[start : start + 262_144]
            parts.append(self.captures(chunk, self.identities(chunk), rng))
        return Captures(
            np.concatenate([p.vectors for p in parts]) if parts else np.empty((0, self.dimension), np.float32),
            ids,
            np.concatenate([p.quality for p in parts]) if parts else np.empty(0, np.float32),
        )

    def probes(self, identities: np.ndarray, *, seed: int = 2, good_only: bool = True) -> Captures:
        """Fresh captures (not in any gallery made with another seed) of the given identities."""
        rng = np.random.default_rng((self.seed, 4, seed))
        ids = np.asarray(identities, dtype=np.int64)
        return self.captures(ids, self.identities(ids), rng, good_only=good_only)

    def score_sample(
        self,
        n_identities: int = 2000,
        captures_per_identity: int = 4,
        impostor_pairs: int = 2_000_000,
        *,
        seed: int = 5,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Genuine scores (every pair of captures of one identity) and impostor scores (random pairs of captures
        of different identities): the labelled sample the default thresholds are calibrated on."""
        caps = self.gallery(n_identities, captures_per_identity, seed=seed)
        v = caps.vectors.reshape(n_identities, captures_per_identity, -1)
        gram = np.einsum("ikd,ild->ikl", v, v)
        iu = np.triu_indices(captures_per_identity, 1)
        genuine = gram[:, iu[0], iu[1]].ravel()
        rng = np.random.default_rng((self.seed, 6, seed))
        a = rng.integers(0, len(caps), impostor_pairs)
        b = rng.integers(0, len(caps), impostor_pairs)
        keep = caps.identities[a] != caps.identities[b]
        a, b = a[keep], b[keep]
        impostor = np.empty(len(a), dtype=np.float32)
        for start in range(0, len(a), 262_144):
            sl = slice(start, start + 262_144)
            impostor[sl] = np.einsum("nd,nd->n", caps.vectors[a[sl]], caps.vectors[b[sl]])
        return genuine.astype(np.float32), impostor


def uniform_gallery(n: int, dimension: int = 512, *, seed: int = 0) -> np.ndarray:
    """The unstructured baseline: independent uniformly distributed unit vectors."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dimension), dtype=np.float32)
    for start in range(0, n, 262_144):
        m = min(262_144, n - start)
        out[start : start + m] = normalise(rng.standard_normal((m, dimension)).astype(np.float32))
    return out


def uniform_probes(gallery: np.ndarray, rows: np.ndarray, *, genuine: float = 0.7, seed: int = 1) -> np.ndarray:
    """Probes of gallery rows for the uniform baseline, at about the same genuine score as the face model."""
    rng = np.random.default_rng(seed)
    base = gallery[rows]
    noise = normalise(rng.standard_normal(base.shape).astype(np.float32))
    s = np.sqrt(1 / genuine - 1)  # cos(base, base + s * noise) ~ 1 / sqrt(1 + s^2); mated pairs ~ genuine
    return normalise(base + s * noise)


__all__ = ["Captures", "FaceGenerator", "FaceModel", "uniform_gallery", "uniform_probes"]
