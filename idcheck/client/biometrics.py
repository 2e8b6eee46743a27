"""`BiometricsClient`: the Python client of the biometric template index.

    with BiometricsClient("127.0.0.1:50051", member="NZL", role="member") as client:
        ids = client.enrol([{"subject_id": "NZL-000123", "vector": embedding, "documents": [("NZL", "LA123456")]}])
        answer = client.verify(live_capture, subject_id="NZL-000123")
        print(answer.decision, answer.score, answer.threshold, answer.target_rate)

Vectors are numpy arrays (any float dtype, any norm); they travel as little-endian float32 bytes. Failures
raise `idcheck.client.errors.IdcheckError` subclasses carrying the server's field violations.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from idcheck.client.channel import ServiceClient
from idcheck.v1 import biometrics_pb2 as pb
from idcheck.v1 import biometrics_pb2_grpc

FACE = pb.MODALITY_FACE


def encode_vector(vector: np.ndarray | Sequence[float]) -> pb.FeatureVector:
    """A FeatureVector (little-endian float32 bytes) from a 1-D array."""
    values = np.asarray(vector, dtype="<f4").reshape(-1)
    return pb.FeatureVector(dimension=len(values), data=values.tobytes())


@dataclass(frozen=True)
class EnrolResult:
    """What an enrolment did: one template id per template, in order."""

    template_ids: tuple[int, ...]
    template_sequence: int
    subjects_created: int


@dataclass(frozen=True)
class VerifyAnswer:
    decision: str  # MATCH or NO_MATCH
    score: float
    threshold: float
    target_rate: float
    rate_kind: str
    best_template_id: int
    subject_id: str
    templates_compared: int
    template_sequence: int
    query_id: str = ""  # the answer's id in the audit log


@dataclass(frozen=True)
class CandidateInfo:
    rank: int
    subject_id: str
    score: float
    owner_member: str
    documents: tuple[tuple[str, str], ...]
    template_id: int


@dataclass(frozen=True)
class IdentifyAnswer:
    candidates: tuple[CandidateInfo, ...]
    threshold: float
    target_rate: float
    rate_kind: str
    gallery_size: int
    template_sequence: int
    search_kind: str
    query_id: str = ""  # the answer's id in the audit log


@dataclass(frozen=True)
class RemoveResult:
    removed: int
    template_sequence: int


TemplateLike = pb.TemplateEnrolment | Mapping[str, Any]


def make_template(t: TemplateLike) -> pb.TemplateEnrolment:
    """A TemplateEnrolment from a dict: subject_id, vector, optional quality, documents ((state, number) pairs
    or "STATE:NUMBER" strings) and modality (default FACE)."""
    if isinstance(t, pb.TemplateEnrolment):
        return t
    documents = []
    for d in t.get("documents") or ():
        state, number = d.split(":", 1) if isinstance(d, str) else d
        documents.append(pb.LinkedDocument(issuing_state=state, document_number=number))
    quality = t.get("quality")
    return pb.TemplateEnrolment(
        subject_id=str(t["subject_id"]),
        modality=pb.Modality.ValueType(int(t.get("modality", FACE))),
        vector=encode_vector(t["vector"]),
        quality=None if quality is None or (isinstance(quality, float) and np.isnan(quality)) else float(quality),
        documents=documents,
    )


class BiometricsClient(ServiceClient):
    """Client of the Biometrics service."""

    stub_class = biometrics_pb2_grpc.BiometricsStub

    def enrol(
        self,
        templates: Iterable[TemplateLike],
        *,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
        timeout: float | None = 60.0,
    ) -> EnrolResult:
        """Enrol templates in calls of `batch_size` (each call is all or nothing; calls already answered stay
        committed if a later one fails). `on_batch` gets the size of each committed batch."""
        if not 1 <= batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10,000")
        ids: list[int] = []
        sequence = created = 0
        it = iter(templates)
        while chunk := list(itertools.islice(it, batch_size)):
            req = pb.EnrolTemplatesRequest(templates=[make_template(t) for t in chunk])
            resp = self._call(self._stub.EnrolTemplates, req, timeout)
            ids += resp.template_ids
            sequence, created = resp.template_sequence, created + resp.subjects_created
            if on_batch:
                on_batch(len(chunk))
        return EnrolResult(tuple(ids), sequence, created)

    def verify(
        self,
        probe: np.ndarray | Sequence[float],
        *,
        subject_id: str | None = None,
        document: tuple[str, str] | None = None,
        modality: int = FACE,
        timeout: float | None = None,
    ) -> VerifyAnswer:
        """Compare a probe with one subject's templates, or with those linked to one (state, number)."""
        req = pb.VerifyRequest(modality=pb.Modality.ValueType(modality), probe=encode_vector(probe))
        if subject_id is not None:
            req.subject_id = subject_id
        if document is not None:
            req.document.issuing_state, req.document.document_number = document
        r = self._call(self._stub.Verify, req, timeout)
        op = r.operating_point
        return VerifyAnswer(
            decision=pb.Decision.Name(r.decision).removeprefix("DECISION_"),
            score=r.score,
            threshold=op.threshold,
            target_rate=op.target_rate,
            rate_kind=op.rate_kind,
            best_template_id=r.best_template_id,
            subject_id=r.subject_id,
            templates_compared=r.templates_compared,
            template_sequence=r.template_sequence,
            query_id=r.query_id,
        )

    def identify(
        self,
        probe: np.ndarray | Sequence[float],
        *,
        max_candidates: int = 0,
        modality: int = FACE,
        timeout: float | None = None,
    ) -> IdentifyAnswer:
        """Search the whole gallery: candidates at or above the identify threshold, best first."""
        req = pb.IdentifyRequest(
            modality=pb.Modality.ValueType(modality), probe=encode_vector(probe), max_candidates=max_candidates
        )
        r = self._call(self._stub.Identify, req, timeout)
        op = r.operating_point
        return IdentifyAnswer(
            candidates=tuple(
                CandidateInfo(
                    rank=c.rank,
                    subject_id=c.subject_id,
                    score=c.score,
                    owner_member=c.owner_member,
                    documents=tuple((d.issuing_state, d.document_number) for d in c.documents),
                    template_id=c.template_id,
                )
                for c in r.candidates
            ),
            threshold=op.threshold,
            target_rate=op.target_rate,
            rate_kind=op.rate_kind,
            gallery_size=r.gallery_size,
            template_sequence=r.template_sequence,
            search_kind=r.search_kind,
            query_id=r.query_id,
        )

    def remove(
        self,
        *,
        template_ids: Iterable[int] = (),
        subject_ids: Iterable[str] = (),
        timeout: float | None = None,
    ) -> RemoveResult:
        """Remove own templates by id and/or all templates of own subjects, all or nothing."""
        req = pb.RemoveTemplatesRequest(template_ids=list(template_ids), subject_ids=list(subject_ids))
        r = self._call(self._stub.RemoveTemplates, req, timeout)
        return RemoveResult(r.removed, r.template_sequence)


__all__ = [
    "BiometricsClient",
    "CandidateInfo",
    "EnrolResult",
    "IdentifyAnswer",
    "RemoveResult",
    "VerifyAnswer",
    "encode_vector",
    "make_template",
]
