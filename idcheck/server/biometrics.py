"""The Biometrics servicer: translates requests into gallery calls and results into responses.

No business rules here: validation, ownership, thresholds and atomicity live in idcheck.biometrics and
idcheck.store.templates; errors are mapped to status codes by idcheck.server.errors.
"""

from __future__ import annotations

import grpc

from idcheck.biometrics import Gallery, OperatingPoint, Probe, TemplateInput
from idcheck.server.auth import current_caller
from idcheck.v1 import biometrics_pb2 as pb
from idcheck.v1 import biometrics_pb2_grpc


def _point(p: OperatingPoint) -> pb.OperatingPoint:
    return pb.OperatingPoint(threshold=p.threshold, target_rate=p.target_rate, rate_kind=p.rate_kind)


def _probe(v: pb.FeatureVector, modality: int) -> Probe:
    return Probe(modality=modality, dimension=v.dimension, data=v.data)


class BiometricsServicer(biometrics_pb2_grpc.BiometricsServicer):
    """Enrol, Verify, Identify and Remove over one gallery."""

    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    def EnrolTemplates(
        self, request: pb.EnrolTemplatesRequest, context: grpc.ServicerContext
    ) -> pb.EnrolTemplatesResponse:
        templates = [
            TemplateInput(
                subject_id=t.subject_id,
                modality=t.modality,
                dimension=t.vector.dimension,
                data=t.vector.data,
                quality=t.quality if t.HasField("quality") else None,
                documents=[(d.issuing_state, d.document_number) for d in t.documents],
            )
            for t in request.templates
        ]
        result = self.gallery.enrol(current_caller().member, templates)
        return pb.EnrolTemplatesResponse(
            template_ids=result.template_ids,
            template_sequence=result.template_sequence,
            subjects_created=result.subjects_created,
        )

    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> pb.VerifyResponse:
        claim = request.WhichOneof("claim")
        document = request.document
        result = self.gallery.verify(
            _probe(request.probe, request.modality),
            subject_id=request.subject_id if claim == "subject_id" else None,
            document=(document.issuing_state, document.document_number) if claim == "document" else None,
            caller=current_caller(),
        )
        return pb.VerifyResponse(
            decision=pb.DECISION_MATCH if result.decision == "MATCH" else pb.DECISION_NO_MATCH,
            score=result.score,
            operating_point=_point(result.operating_point),
            best_template_id=result.best_template_id,
            subject_id=result.subject_id,
            templates_compared=result.templates_compared,
            template_sequence=result.template_sequence,
            query_id=result.query_id,
        )

    def Identify(self, request: pb.IdentifyRequest, context: grpc.ServicerContext) -> pb.IdentifyResponse:
        result = self.gallery.identify(
            _probe(request.probe, request.modality), request.max_candidates, caller=current_caller()
        )
        return pb.IdentifyResponse(
            candidates=[
                pb.Candidate(
                    subject_id=c.subject_id,
                    score=c.score,
                    owner_member=c.owner_member,
                    documents=[pb.LinkedDocument(issuing_state=s, document_number=n) for s, n in c.documents],
                    template_id=c.template_id,
                    rank=c.rank,
                )
                for c in result.candidates
            ],
            operating_point=_point(result.operating_point),
            gallery_size=result.gallery_size,
            template_sequence=result.template_sequence,
            search_kind=result.search_kind,
            query_id=result.query_id,
        )

    def RemoveTemplates(
        self, request: pb.RemoveTemplatesRequest, context: grpc.ServicerContext
    ) -> pb.RemoveTemplatesResponse:
        result = self.gallery.remove(current_caller().member, list(request.template_ids), list(request.subject_ids))
        return pb.RemoveTemplatesResponse(removed=result.removed, template_sequence=result.template_sequence)
