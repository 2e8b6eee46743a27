"""In-memory derived state: the document key index and the biometric template index. Pure compute."""

from idcheck.index.documents import (
    Candidate,
    DocumentIndex,
    DocumentIndexSettings,
    Lookup,
    Match,
    MatchKind,
    PreparedChanges,
    classify,
    folded_number_key,
    number_key,
    number_keys,
)

__all__ = [
    "Candidate",
    "DocumentIndex",
    "DocumentIndexSettings",
    "Lookup",
    "Match",
    "MatchKind",
    "PreparedChanges",
    "classify",
    "folded_number_key",
    "number_key",
    "number_keys",
]
