"""The synthetic face model's score distributions, and thresholds calibrated from target rates."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from idcheck.biometrics.calibration import (
    CalibrationError,
    calibrate_rate,
    fpir_to_fmr,
    load_sample,
    threshold_for_fmr,
    write_settings,
)
from idcheck.biometrics.gallery import GallerySettings
from idcheck.biometrics.synthetic import FaceGenerator


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    return FaceGenerator().score_sample(n_identities=1500, impostor_pairs=1_000_000)


def test_face_model_scores_look_like_face_embeddings(sample: tuple[np.ndarray, np.ndarray]) -> None:
    genuine, impostor = sample
    assert 0.6 <= np.median(genuine) <= 0.8
    assert np.mean((genuine >= 0.55) & (genuine <= 0.82)) >= 0.75  # typically 0.6 - 0.8
    assert np.mean(genuine < 0.5) >= 0.03  # some low-quality captures
    assert np.mean(impostor < 0.3) >= 0.99 and abs(np.mean(impostor)) < 0.05
    assert np.percentile(impostor, 99.9) > 0.25  # structured: heavier tail than uniform vectors (~0.14)


def test_identities_are_a_function_of_their_number() -> None:
    gen = FaceGenerator(seed=3)
    assert np.array_equal(gen.identities(np.array([5, 70_000])), gen.identities(np.array([70_000, 5]))[::-1])


def test_default_thresholds_are_those_calibrated_on_the_face_model(sample: tuple[np.ndarray, np.ndarray]) -> None:
    genuine, impostor = sample
    defaults = GallerySettings()
    verify = calibrate_rate(genuine, impostor, defaults.verify_fmr)
    identify = calibrate_rate(genuine, impostor, defaults.identify_fpir, kind="FPIR", gallery_size=1_000_000)
    assert verify.method == "empirical" and verify.threshold == pytest.approx(defaults.verify_threshold, abs=0.01)
    assert identify.method == "tail" and identify.threshold == pytest.approx(defaults.identify_threshold, abs=0.02)


def test_empirical_threshold_keeps_the_false_match_rate_at_most_the_target() -> None:
    impostor = np.random.default_rng(0).normal(0, 0.1, 100_000)
    threshold, method = threshold_for_fmr(impostor, 1e-3)
    assert method == "empirical"
    assert np.mean(impostor >= threshold) <= 1e-3
    assert np.mean(impostor >= threshold - 0.01) > 1e-3  # and is not needlessly high


def test_tail_extrapolation_is_close_to_what_a_larger_sample_shows(sample: tuple[np.ndarray, np.ndarray]) -> None:
    _genuine, impostor = sample
    truth, _ = threshold_for_fmr(impostor, 1e-5)
    small, method = threshold_for_fmr(impostor[:50_000], 1e-5)
    assert method == "tail" and truth - 0.01 <= small <= truth + 0.03


def test_fpir_becomes_a_smaller_per_comparison_fmr() -> None:
    assert fpir_to_fmr(1e-3, 1) == pytest.approx(1e-3)
    assert fpir_to_fmr(1e-3, 1_000_000) == pytest.approx(1.0005e-9, rel=1e-3)
    with pytest.raises(CalibrationError):
        fpir_to_fmr(0, 10)


def test_samples_load_from_npz_scores_pairs_and_parquet(tmp_path: Path) -> None:
    gen = FaceGenerator()
    caps = gen.gallery(50, 2, seed=9)
    a, b = caps.vectors[0::2], caps.vectors[1::2]
    np.savez(
        tmp_path / "pairs.npz", a=np.vstack([a, a]), b=np.vstack([b, b[::-1]]), mated=np.r_[np.ones(50), np.zeros(50)]
    )
    genuine, impostor = load_sample(tmp_path / "pairs.npz")
    assert len(genuine) == 50 and genuine.mean() > 0.5 and impostor.mean() < 0.3
    np.savez(tmp_path / "scores.npz", genuine=[0.7, 0.8], impostor=[0.1, 0.2, 0.3])
    assert len(load_sample(tmp_path / "scores.npz")[1]) == 3
    pq.write_table(pa.table({"score": [0.7, 0.1], "mated": [True, False]}), tmp_path / "s.parquet")
    assert [len(x) for x in load_sample(tmp_path / "s.parquet")] == [1, 1]
    np.savez(tmp_path / "bad.npz", x=[1])
    with pytest.raises(CalibrationError, match="genuine and impostor"):
        load_sample(tmp_path / "bad.npz")


def test_write_settings_keeps_other_settings(tmp_path: Path) -> None:
    path = tmp_path / "idcheck.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:7000"\nverify_threshold = 0.1\n')
    write_settings(path, {"verify_threshold": 0.42, "verify_fmr": 1e-5})
    table = tomllib.loads(path.read_text())["server"]
    assert table == {"listen": "127.0.0.1:7000", "verify_threshold": 0.42, "verify_fmr": 1e-5}
