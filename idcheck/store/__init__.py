"""The durable source of truth: the SQLite register, its schema and migrations, the audit log."""

from idcheck.store.audit import AuditWriter
from idcheck.store.errors import AmbiguousKey, NotOwner, RecordNotFound, StoreError
from idcheck.store.sqlite import AuditCall, AuditClear, AuditDocument, AuditRow, CancelOutcome, RegisterStore, utc_now

__all__ = [
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
