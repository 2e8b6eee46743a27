"""In-memory derived state: the document key index and the biometric template index. Pure compute."""

from idcheck.index.documents import DocumentIndex, Lookup, Match, MatchKind, classify

__all__ = ["DocumentIndex", "Lookup", "Match", "MatchKind", "classify"]
