"""The biometric template index of one node: validation, durable templates, the FAISS index, thresholds."""

from idcheck.biometrics.errors import TemplateError
from idcheck.biometrics.gallery import (
    Candidate,
    EnrolResult,
    Gallery,
    GallerySettings,
    IdentifyResult,
    OperatingPoint,
    Probe,
    RemoveResult,
    TemplateInput,
    VerifyResult,
)

__all__ = [
    "Candidate",
    "EnrolResult",
    "Gallery",
    "GallerySettings",
    "IdentifyResult",
    "OperatingPoint",
    "Probe",
    "RemoveResult",
    "TemplateError",
    "TemplateInput",
    "VerifyResult",
]
