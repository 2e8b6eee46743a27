"""Document numbers: canonical form for HITs, confusion-folded key for POSSIBLE matches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idcheck.icao import (
    CONFUSION_TABLE,
    DocumentNumberError,
    NumberMatch,
    canonical_number,
    folded_key,
    match_numbers,
)

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("L898902C3", "L898902C3"),
        ("l898902c3", "L898902C3"),
        ("L898902C<<", "L898902C"),
        (" AB 12-34.56/78 ", "AB12345678"),
        ("ab\t12", "AB12"),
    ],
)
def test_canonical_number_drops_fillers_and_punctuation(raw: str, canonical: str) -> None:
    assert canonical_number(raw) == canonical


@pytest.mark.parametrize("raw", ["", "<<<", " - . / "])
def test_canonical_number_rejects_empty_numbers(raw: str) -> None:
    with pytest.raises(DocumentNumberError, match="empty"):
        canonical_number(raw)


@pytest.mark.parametrize(("raw", "bad"), [("AB#12", "#"), ("AB_12", "_"), ("straße", "ß"), ("A,1", ",")])
def test_canonical_number_names_the_character_it_rejects(raw: str, bad: str) -> None:
    with pytest.raises(DocumentNumberError) as caught:
        canonical_number(raw)
    assert repr(bad) in str(caught.value)


def test_o_and_zero_share_a_folded_key() -> None:
    assert folded_key("O123456") == folded_key("0123456")


def test_different_last_digits_do_not_share_a_folded_key() -> None:
    assert folded_key("A1234567") != folded_key("A1234568")


def test_fold_table_is_the_documented_one() -> None:
    assert dict(CONFUSION_TABLE) == {
        "O": "0", "Q": "0", "D": "0", "I": "1", "L": "1", "Z": "2", "S": "5", "G": "6", "B": "8",
    }  # fmt: skip
    assert folded_key("OQDILZSGB") == "000112568"
    # Deliberately not folded.
    assert folded_key("UVT7A4EF") == "UVT7A4EF"


def test_same_folded_key_is_a_possible_match_never_exact() -> None:
    assert match_numbers("L898902C3", "L898902C3") is NumberMatch.EXACT
    assert match_numbers("L898902C3", "1898902C3") is NumberMatch.POSSIBLE
    assert match_numbers("SO12345", "5012345") is NumberMatch.POSSIBLE
    assert match_numbers("A1234567", "A1234568") is NumberMatch.NONE


@given(st.text(alphabet=ALNUM, min_size=1, max_size=20), st.text(alphabet=ALNUM, min_size=1, max_size=20))
def test_match_numbers_agrees_with_canonical_and_folded_forms(first: str, second: str) -> None:
    match = match_numbers(first, second)
    if first == second:
        assert match is NumberMatch.EXACT
    elif folded_key(first) == folded_key(second):
        assert match is NumberMatch.POSSIBLE
    else:
        assert match is NumberMatch.NONE


@given(st.text(alphabet=ALNUM, min_size=1, max_size=20))
def test_folding_keeps_length_and_is_idempotent(number: str) -> None:
    key = folded_key(number)
    assert len(key) == len(number)
    assert folded_key(key) == key
    assert not set(key) & set(CONFUSION_TABLE)


@given(st.text(alphabet=ALNUM + ALNUM.lower() + "< -./", max_size=20))
def test_canonical_number_is_idempotent(raw: str) -> None:
    try:
        canonical = canonical_number(raw)
    except DocumentNumberError:
        assert not any(c.isalnum() for c in raw)
    else:
        assert canonical_number(canonical) == canonical
        assert set(canonical) <= set(ALNUM)


def test_batch_forms_agree_with_single_forms() -> None:
    from idcheck.icao import canonical_number, canonical_numbers, folded_key, folded_keys

    raw = ["l898902c3", "LA 123-456", "AB.12/34<<", "O0IL"]
    assert canonical_numbers(raw) == [canonical_number(n) for n in raw]
    assert folded_keys(canonical_numbers(raw)) == [folded_key(canonical_number(n)) for n in raw]
    assert canonical_numbers([]) == [] and folded_keys([]) == []


@pytest.mark.parametrize("bad", [["A1", ""], ["A1", "<<-"], ["A1", "AB#1"], ["A\x1fB"], ["ÄB"]])
def test_batch_canonical_numbers_refuses_any_bad_number(bad: list[str]) -> None:
    from idcheck.icao import DocumentNumberError, canonical_numbers

    with pytest.raises(DocumentNumberError):
        canonical_numbers(bad)
