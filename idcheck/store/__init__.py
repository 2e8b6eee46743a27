"""The durable source of truth: the SQLite register, its schema and migrations, the audit log."""

from idcheck.store.audit import AuditWriter
from idcheck.store.errors import AmbiguousKey, NotOwner, RecordNotFound, StoreError
from idcheck.store.sqlite import AuditRow, CancelOutcome, RegisterStore, utc_now

__all__ = [
    "AmbiguousKey",
    "AuditRow",
    "AuditWriter",
    "CancelOutcome",
    "NotOwner",
    "RecordNotFound",
    "RegisterStore",
    "StoreError",
    "utc_now",
]
