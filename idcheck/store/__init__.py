"""The durable source of truth: the SQLite register, its schema and migrations, the audit log."""

from idcheck.store.audit import AUDIT_INTERVAL, AuditWriter
from idcheck.store.errors import AmbiguousKey, NotOwner, RecordNotFound, StoreError
from idcheck.store.sqlite import AuditCall, AuditClear, AuditDocument, AuditRow, CancelOutcome, RegisterStore, utc_now

__all__ = [
    "AUDIT_INTERVAL",
    "AmbiguousKey",
    "AuditCall",
    "AuditClear",
    "AuditDocument",
    "AuditRow",
    "AuditWriter",
    "CancelOutcome",
    "NotOwner",
    "RecordNotFound",
    "RegisterStore",
    "StoreError",
    "utc_now",
]
