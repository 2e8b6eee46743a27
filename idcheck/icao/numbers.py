"""Document numbers normalised for matching against the register.

Two forms are used:

* the **canonical number** (:func:`canonical_number`): upper case, with the MRZ filler ``<`` and the
  punctuation that people and forms add (spaces, ``-``, ``.``, ``/``) removed. Equal canonical numbers from
  the same issuing state are the same document: a HIT.
* the **folded key** (:func:`folded_key`): the canonical number with each group of characters that OCR and
  people commonly confuse replaced by one representative, so a near match is found with one extra lookup.
  Equal folded keys with different canonical numbers are a POSSIBLE match, never a HIT
  (:func:`match_numbers`).

The fold table (:data:`CONFUSION_TABLE`) is deliberately conservative; every letter folds onto the digit it
is mistaken for::

    O, Q, D -> 0      I, L -> 1      Z -> 2      S -> 5      G -> 6      B -> 8

Not folded, on purpose: U/V, T/7, A/4 and E/F. The MRZ font (OCR-B) was designed to keep these apart, they
are rarely confused in practice, and every extra fold adds false POSSIBLE matches for border officers to
clear by hand.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

__all__ = [
    "CONFUSION_TABLE",
    "DocumentNumberError",
    "NumberMatch",
    "canonical_number",
    "canonical_numbers",
    "folded_key",
    "folded_keys",
    "match_numbers",
]

#: Each commonly confused character and the representative it folds to.
CONFUSION_TABLE: Mapping[str, str] = MappingProxyType(
    {
        "O": "0",
        "Q": "0",
        "D": "0",
        "I": "1",
        "L": "1",
        "Z": "2",
        "S": "5",
        "G": "6",
        "B": "8",
    }
)

_FOLD = str.maketrans(dict(CONFUSION_TABLE))

# Upper-case ASCII letters and drop the separators in one str.translate pass. Only ASCII is upper-cased:
# str.upper() would turn "ß" into "SS" and accept a number never printed on a document.
_CANONICAL = str.maketrans(
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "< \t\r\n\f\v-./",
)
_CANONICAL_FORM = re.compile(r"[A-Z0-9]+")


class DocumentNumberError(ValueError):
    """A document number that is empty or holds characters other than letters and digits."""


class NumberMatch(enum.StrEnum):
    """How two canonical document numbers compare."""

    EXACT = "EXACT"  # same canonical number: a HIT (given the same issuing state)
    POSSIBLE = "POSSIBLE"  # same folded key only: worth a human look, never a HIT
    NONE = "NONE"


def canonical_number(number: str) -> str:
    """Upper-case ``number`` and drop fillers, spaces, ``-``, ``.`` and ``/``.

    Raises :class:`DocumentNumberError` when nothing is left or a character other than A-Z, 0-9 remains.
    """
    canonical = number.translate(_CANONICAL)
    if not canonical:
        raise DocumentNumberError(f"document number {number!r} is empty")
    if _CANONICAL_FORM.fullmatch(canonical) is None:
        bad = next(c for c in canonical if not ("A" <= c <= "Z" or "0" <= c <= "9"))
        raise DocumentNumberError(
            f"document number {number!r} holds {bad!r}: only letters A-Z and digits 0-9 are allowed"
        )
    return canonical


# Batch forms: one translate over the whole batch joined by a separator outside the canonical alphabet.
_SEP = "\x1f"
_BATCH_FORM = re.compile(r"[A-Z0-9]+(?:\x1f[A-Z0-9]+)*")


def canonical_numbers(numbers: Sequence[str]) -> list[str]:
    """:func:`canonical_number` of every number, several times faster for manifests.

    Raises :class:`DocumentNumberError` when any number is invalid, without saying which: call
    :func:`canonical_number` on each to find out.
    """
    if not numbers:
        return []
    joined = _SEP.join(numbers).translate(_CANONICAL)
    if _BATCH_FORM.fullmatch(joined) is None:
        raise DocumentNumberError("a document number in the batch is empty or holds characters other than A-Z, 0-9")
    out = joined.split(_SEP)
    if len(out) != len(numbers):  # a number held the separator itself
        raise DocumentNumberError("a document number in the batch holds a control character")
    return out


def folded_keys(canonicals: Sequence[str]) -> list[str]:
    """:func:`folded_key` of every canonical number."""
    if not canonicals:
        return []
    return _SEP.join(canonicals).translate(_FOLD).split(_SEP)


def folded_key(canonical: str) -> str:
    """Confusion-folded key of a canonical document number (no validation)."""
    return canonical.translate(_FOLD)


def match_numbers(first: str, second: str) -> NumberMatch:
    """Compare two canonical document numbers: EXACT, POSSIBLE (same folded key only) or NONE."""
    if first == second:
        return NumberMatch.EXACT
    if first.translate(_FOLD) == second.translate(_FOLD):
        return NumberMatch.POSSIBLE
    return NumberMatch.NONE
