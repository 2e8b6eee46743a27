"""Doc 9303 check digits: weights 7-3-1, '<' is 0, A-Z are 10-35."""

from __future__ import annotations

import pytest

from idcheck.icao import MRZError, check_digit


@pytest.mark.parametrize(
    ("field", "digit"),
    [
        # Fields of the Doc 9303 specimens, with the digit printed after them.
        ("L898902C3", 6),
        ("740812", 2),
        ("120415", 9),
        ("ZE184226B<<<<<", 1),
        ("D23145890", 7),
        ("L8988901C", 4),
        ("400907", 8),
        ("961210", 9),
        # Long TD1/TD2 document number of Doc 9303 Part 11 Appendix D.2.
        ("D23145890734", 9),
        # TD3 specimen composite: number+digit, birth+digit, expiry+digit+personal number+digit.
        ("L898902C36" + "7408122" + "1204159ZE184226B<<<<<1", 0),
    ],
)
def test_specimen_fields_have_their_printed_check_digit(field: str, digit: int) -> None:
    assert check_digit(field) == digit


def test_fillers_count_as_zero() -> None:
    assert check_digit("") == 0
    assert check_digit("<<<<<<<<<") == 0
    assert check_digit("AB<") == check_digit("AB0") == check_digit("AB")


def test_letters_count_from_ten() -> None:
    # A=10, weight 7 -> 70 -> 0; B=11 at weight 7 -> 77 -> 7; Z=35 at weight 3 (second place) -> 105 -> 5.
    assert check_digit("A") == 0
    assert check_digit("B") == 7
    assert check_digit("<Z") == 5
    assert check_digit("<<Z") == 5


def test_weights_repeat_7_3_1() -> None:
    assert check_digit("111") == (7 + 3 + 1) % 10
    assert check_digit("1111") == (7 + 3 + 1 + 7) % 10
    assert check_digit("9" * 100) == (9 * (7 + 3 + 1) * 33 + 9 * 7) % 10  # longer than any MRZ field


@pytest.mark.parametrize("field", ["ab1", "A B", "A-1", "É12", "12#"])
def test_characters_outside_the_mrz_alphabet_raise(field: str) -> None:
    with pytest.raises(MRZError, match="is not allowed"):
        check_digit(field)
