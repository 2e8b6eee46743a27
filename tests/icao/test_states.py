"""Issuing-state and nationality codes: ISO 3166-1 alpha-3 plus the Doc 9303 Part 3 additions."""

from __future__ import annotations

import pytest

from idcheck.icao import (
    KNOWN_STATES,
    StateCodeError,
    canonical_state,
    is_known_state,
    is_specimen_state,
    state_name,
)
from idcheck.icao.states import ICAO_STATES


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("utO", "UTO"), ("D<<", "D"), ("  nzl ", "NZL"), ("d", "D"), ("GBD", "GBD"), ("<<D<<", "D")],
)
def test_canonical_state_strips_upper_cases_and_drops_fillers(raw: str, canonical: str) -> None:
    assert canonical_state(raw) == canonical


@pytest.mark.parametrize("code", ["ZZZ", "GB", "DE", "XYZ", "N ZL", "ıTA", "UTOP"])
def test_unknown_codes_are_rejected_with_the_code_named(code: str) -> None:
    with pytest.raises(StateCodeError, match="unknown") as caught:
        canonical_state(code)
    named = code.upper() if code.isascii() else code  # non-ASCII codes are named as given
    assert repr(named) in str(caught.value)
    assert not is_known_state(code)


@pytest.mark.parametrize("code", ["", "   ", "<<<"])
def test_empty_code_is_rejected(code: str) -> None:
    with pytest.raises(StateCodeError, match="empty"):
        canonical_state(code)


def test_is_known_state_never_raises() -> None:
    assert is_known_state("D<<")
    assert not is_known_state("")
    assert not is_known_state(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("D", "Germany"),
        ("DEU", "Germany"),
        ("NZL", "New Zealand"),
        ("UTO", "Utopia (specimen)"),
        ("GBD", "British Overseas Territories Citizen"),
        ("UNO", "United Nations Organization"),
        ("XXA", "Stateless person"),
        ("RKS", "Kosovo"),
        ("EUE", "European Union"),
        ("BOL", "Bolivia"),
    ],
)
def test_state_names(code: str, name: str) -> None:
    assert state_name(code) == name


def test_state_name_of_unknown_code_raises() -> None:
    with pytest.raises(StateCodeError):
        state_name("ZZZ")


def test_every_icao_addition_is_known_and_named() -> None:
    expected = {
        "D", "GBD", "GBN", "GBO", "GBP", "GBS", "UNO", "UNA", "UNK", "XXA", "XXB", "XXC", "XXX", "EUE",
        "XBA", "XIM", "XCC", "XCE", "XCO", "XEC", "XPO", "XES", "XMP", "XOM", "XDC", "RKS",
    }  # fmt: skip
    assert set(ICAO_STATES) == expected
    for code in expected:
        assert code in KNOWN_STATES
        assert state_name(code)


def test_iso_codes_come_from_pycountry() -> None:
    for code in ("NZL", "DEU", "GBR", "FRA", "USA", "CHN", "BRA"):
        assert code in KNOWN_STATES
    assert len(KNOWN_STATES) > 249  # ISO 3166-1 countries plus ICAO's codes plus UTO


def test_only_utopia_is_a_specimen_state() -> None:
    assert "UTO" in KNOWN_STATES
    assert is_specimen_state("UTO")
    assert is_specimen_state("uto<")
    assert not is_specimen_state("NZL")
    assert not is_specimen_state("ZZZ")
    assert not is_specimen_state("")


def test_deu_is_canonicalised_to_the_mrz_code_d() -> None:
    from idcheck.icao import canonical_state

    assert canonical_state("DEU") == "D"
    assert canonical_state("d<<") == "D"
