"""ICAO Doc 9303 travel documents: machine readable zones, check digits, state codes, document numbers.

Pure functions and values only: nothing here does I/O or knows about gRPC.
"""

from __future__ import annotations

from idcheck.icao.checkdigit import check_digit
from idcheck.icao.documents import DocumentClass, document_class
from idcheck.icao.mrz import MRZ, MRZError, MRZFormat, compose_mrz, parse_mrz
from idcheck.icao.numbers import (
    CONFUSION_TABLE,
    DocumentNumberError,
    NumberMatch,
    canonical_number,
    canonical_numbers,
    folded_key,
    folded_keys,
    match_numbers,
)
from idcheck.icao.states import (
    CANONICAL_STATES,
    KNOWN_STATES,
    StateCodeError,
    canonical_state,
    is_known_state,
    is_specimen_state,
    state_name,
)

__all__ = [
    "CANONICAL_STATES",
    "CONFUSION_TABLE",
    "KNOWN_STATES",
    "MRZ",
    "DocumentClass",
    "DocumentNumberError",
    "MRZError",
    "MRZFormat",
    "NumberMatch",
    "StateCodeError",
    "canonical_number",
    "canonical_numbers",
    "canonical_state",
    "check_digit",
    "compose_mrz",
    "document_class",
    "folded_key",
    "folded_keys",
    "is_known_state",
    "is_specimen_state",
    "match_numbers",
    "parse_mrz",
    "state_name",
]
