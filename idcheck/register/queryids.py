"""Query ids: unique across processes and restarts, without a system call per query.

A check answered in a millisecond cannot afford `uuid.uuid4()`: it reads the system's random source, which
releases the interpreter lock, and the audit writer thread may then hold it for a whole switch interval
(5 ms) before the check gets it back. A query id is a random per-process prefix (read once) and a counter:
32 hex digits, like the uuid4 hex ids that came before it. Ids are for finding a query again (ConfirmHit,
GetHitOutcome); who may use one is decided by membership, never by the id being hard to guess.
"""

from __future__ import annotations

import itertools
import os
import secrets

_pid = os.getpid()
_prefix = secrets.token_hex(8)
_counter = itertools.count()


def new_query_id() -> str:
    """A fresh 32-hex-digit id (a forked worker process gets a fresh prefix)."""
    global _pid, _prefix, _counter
    if os.getpid() != _pid:  # a forked child must not repeat its parent's ids
        _pid, _prefix, _counter = os.getpid(), secrets.token_hex(8), itertools.count()
    return f"{_prefix}{next(_counter):016x}"
