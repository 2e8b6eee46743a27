"""A register on a real SQLite file in a temporary directory, and small builders for uploads and queries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from idcheck.register import Caller, RawRecord, Register
from idcheck.uploads import UploadMode, UploadOutcome

NZL = Caller("NZL", "member", "test")
FJI = Caller("FJI", "member", "test")
BORDER = Caller("AUS", "border", "ipv4:127.0.0.1:5000")


def raw(
    number: str, status: int = 2, *, state: str = "NZL", cls: int = 1, event: str = "2024-01-01", **holder: str
) -> RawRecord:
    return RawRecord(state, number, cls, status, event, **holder)


def upload(
    register: Register,
    caller: Caller,
    upload_id: str,
    rows: Sequence[RawRecord],
    mode: UploadMode = UploadMode.INCREMENTAL,
) -> UploadOutcome:
    session = register.begin_upload(caller, upload_id, mode, "test")
    session.add(rows)
    return session.commit()


@pytest.fixture
def register(tmp_path: Path) -> Iterator[Register]:
    reg = Register.open(tmp_path)
    yield reg
    reg.close()
