"""The ``idcheck`` command line.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and sets ``func``, and
``_cmd_<name>(args) -> int`` runs it and returns the exit status. To add a subcommand, write the pair and
call ``_add_<name>`` from :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import datetime
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import pyarrow as pa
from tqdm import tqdm

from idcheck.client import files
from idcheck.client.channel import ServiceClient, TlsConfigError, TlsOptions
from idcheck.client.errors import (
    DeadlineExceeded,
    IdcheckError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from idcheck.client.register import (
    DEFAULT_TARGET,
    CheckAnswer,
    ManifestAnswer,
    RegisterClient,
    UploadResult,
    file_upload_id,
)
from idcheck.icao import (
    MRZ,
    DocumentClass,
    MRZError,
    MRZFormat,
    canonical_number,
    canonical_state,
    document_class,
    is_known_state,
    is_specimen_state,
    parse_mrz,
    state_name,
)
from idcheck.v1 import register_pb2 as pb

EXIT_OK = 0
EXIT_SERVICE_ERROR = 1
EXIT_UNREADABLE = 2
EXIT_BAD_INPUT = 2
EXIT_HIT = 3
EXIT_POSSIBLE_MATCH = 4

_TICK = "✓"
_CROSS = "✗"
_FORMAT_NAMES = {
    MRZFormat.TD1: "TD1 (3 lines of 30: ID card)",
    MRZFormat.TD2: "TD2 (2 lines of 36: ID card)",
    MRZFormat.TD3: "TD3 (2 lines of 44: passport)",
    MRZFormat.MRVA: "MRV-A (2 lines of 44: visa)",
    MRZFormat.MRVB: "MRV-B (2 lines of 36: visa)",
}
_CLASS_NAMES = {
    DocumentClass.UNSPECIFIED: "unspecified",
    DocumentClass.PASSPORT: "passport",
    DocumentClass.ID_CARD: "ID card or official travel document",
    DocumentClass.VISA: "visa",
    DocumentClass.OTHER: "other document",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``idcheck`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="idcheck",
        description="Register of lost, stolen and revoked travel documents: command-line client.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_mrz(subparsers)
    _add_serve(subparsers)
    _add_mirror(subparsers)
    _add_check(subparsers)
    _add_check_stream(subparsers)
    _add_check_manifest(subparsers)
    _add_upload(subparsers)
    _add_cancel(subparsers)
    _add_get(subparsers)
    _add_audit(subparsers)
    _add_hits(subparsers)
    _add_confirm_hit(subparsers)
    _add_hit_outcome(subparsers)
    _add_stats(subparsers)
    _add_enrol(subparsers)
    _add_verify(subparsers)
    _add_identify(subparsers)
    _add_remove_templates(subparsers)
    _add_calibrate(subparsers)
    _add_certs(subparsers)
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()
    except TlsConfigError as err:
        print(f"idcheck {args.command}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # Whoever read the output stopped early (`| head`): no traceback, and never a clear exit status.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SERVICE_ERROR
    return status


# --- idcheck mrz -----------------------------------------------------------------------------------------


def _iso_date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from err


def _add_mrz(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "mrz",
        help="read a machine readable zone and verify its check digits (no server needed)",
        description=(
            "Read the MRZ of a passport, ID card or visa (ICAO Doc 9303: TD1, TD2, TD3, MRV-A, MRV-B) and "
            "verify its check digits. Give each MRZ line as an argument, or one argument holding newlines, "
            "or '-' to read the MRZ from standard input. Quote the lines: '<' is special to the shell. "
            "Exits 0 when the MRZ was read (even if check digits fail), 2 when it cannot be read."
        ),
    )
    parser.add_argument("lines", nargs="+", metavar="LINE", help="MRZ line(s), or '-' for standard input")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--today",
        type=_iso_date,
        default=None,
        metavar="YYYY-MM-DD",
        help="resolve two-digit years relative to this day (default: today)",
    )
    parser.set_defaults(func=_cmd_mrz)


def _cmd_mrz(args: argparse.Namespace) -> int:
    if args.lines == ["-"]:
        text = sys.stdin.read()
    elif "-" in args.lines:
        print("idcheck mrz: '-' (standard input) cannot be combined with MRZ lines", file=sys.stderr)
        return EXIT_UNREADABLE
    else:
        text = "\n".join(args.lines)
    try:
        mrz = parse_mrz(text, today=args.today)
    except MRZError as err:
        print(f"idcheck mrz: not a readable MRZ: {err}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.json:
        print(json.dumps(mrz.to_dict(), ensure_ascii=False))
    else:
        print(_describe(mrz, args.today or datetime.date.today()))
    return EXIT_OK


def _state(code: str) -> str:
    if not code:
        return "(none)"
    if not is_known_state(code):
        return f"{code}  (unknown code)"
    return f"{code}  {state_name(code)}"


def _date(printed: str, resolved: datetime.date | None, *, expiry: bool, today: datetime.date) -> str:
    if resolved is None:
        return f"{printed}  (cannot be resolved to a date)"
    note = "  EXPIRED" if expiry and resolved < today else ""
    return f"{printed}  ({resolved.isoformat()}){note}"


def _describe(mrz: MRZ, today: datetime.date) -> str:
    """A human-readable account of an MRZ for a border officer."""
    doc_class = _CLASS_NAMES[document_class(mrz.document_type)]
    rows = [
        ("Format", _FORMAT_NAMES[mrz.format]),
        ("Document type", f"{mrz.document_type or '(none)'}  ({doc_class})"),
        ("Issuing state", _state(mrz.issuing_state)),
        ("Document number", mrz.document_number or "(none)"),
        ("Nationality", _state(mrz.nationality)),
        ("Surname", mrz.surname or "(none)"),
        ("Given names", mrz.given_names or "(none)"),
        ("Sex", mrz.sex),
        ("Birth date", _date(mrz.birth_date, mrz.birth_date_resolved, expiry=False, today=today)),
        ("Expiry date", _date(mrz.expiry_date, mrz.expiry_date_resolved, expiry=True, today=today)),
        ("Optional data", mrz.optional_data or "(none)"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    out = [f"{label + ':':<{width}}{value}" for label, value in rows]
    out.append("Check digits:")
    out.extend(f"  {_TICK if passed else _CROSS} {name}" for name, passed in mrz.checks.items())
    if mrz.valid:
        verdict = "valid MRZ: every check digit matches"
    else:
        verdict = f"INVALID MRZ: failed check digits: {', '.join(mrz.failed_checks)}"
    out.append(f"Verdict: {verdict}")
    if is_specimen_state(mrz.issuing_state):
        out.append("Note: issued by Utopia (UTO), the Doc 9303 specimen state: this is a specimen")
    return "\n".join(out)


# --- options shared by the commands that talk to the register --------------------------------------------

_ROLES = ("border", "member", "operator", "mirror")
_VERDICT_EXIT = {"CLEAR": EXIT_OK, "HIT": EXIT_HIT, "POSSIBLE_MATCH": EXIT_POSSIBLE_MATCH}
_VERDICT_TITLES = {
    "HIT": "HIT: the document is listed in the register",
    "POSSIBLE_MATCH": "POSSIBLE MATCH: a near match, compare the document with the record before acting",
    "CLEAR": "CLEAR: no active record matches",
}
_KIND_TEXT = {
    "EXACT": "same issuing state and number",
    "OCR_VARIANT": "number differs only by characters OCR commonly confuses",
    "STATE_MISMATCH": "same number, other issuing state",
    "STATE_MISSING": "same number, no issuing state given",
    "CLASS_MISMATCH": "same state and number, other document class",
}
_CLASS_HELP = "passport, id_card, visa or other"
_ROW_FIELD = re.compile(r"queries(?:_arrow_ipc)?\[(\d+)\]\.?(.*)")
_KEY_FIELD = re.compile(r"keys\[(\d+)\](.*)")

SubParsers = argparse._SubParsersAction  # the type argparse gives `add_subparsers`


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _batch_size(limit: int | None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < 1 or (limit is not None and int(text) > limit):
            upper = f" and {limit:,}" if limit else ""
            raise argparse.ArgumentTypeError(f"batch size must be a whole number between 1{upper}: {text!r}")
        return int(text)

    return parse


def _document_class(text: str) -> int:
    value = files.document_class_value(text)
    if value not in (1, 2, 3, 4):
        raise argparse.ArgumentTypeError(f"unknown document class {text!r} (use {_CLASS_HELP})")
    return value


def _client_options() -> argparse.ArgumentParser:
    """--target, --member, --role and --timeout, shared by every command that calls the register."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group(
        "connection",
        "With --tls-dir the client connects with mutual TLS and the server takes the member and role from the "
        "client certificate (--member/--role then only pick <member>-<role>.pem in that directory, else "
        "client.pem). Without it the client states its member and role in call metadata, which a server "
        "accepts only on loopback (development).",
    )
    group.add_argument(
        "--target",
        default=os.environ.get("IDCHECK_TARGET") or DEFAULT_TARGET,
        metavar="HOST:PORT",
        help=f"register server (default: $IDCHECK_TARGET or {DEFAULT_TARGET}; now %(default)s)",
    )
    group.add_argument(
        "--member",
        default=os.environ.get("IDCHECK_MEMBER") or "UTO",
        metavar="CODE",
        help="member authority you act for, ICAO state code (default: $IDCHECK_MEMBER or UTO; now %(default)s)",
    )
    group.add_argument(
        "--role",
        default=os.environ.get("IDCHECK_ROLE") or "member",
        choices=_ROLES,
        help="border, member, operator or mirror (default: $IDCHECK_ROLE or member; now %(default)s)",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="deadline of each call (default: 10 s; 1 hour for an upload)",
    )
    group.add_argument(
        "--tls-dir",
        type=Path,
        default=os.environ.get("IDCHECK_TLS_DIR") or None,
        metavar="DIR",
        help="mutual TLS with ca.pem and a client certificate from DIR (default: $IDCHECK_TLS_DIR; plaintext if unset)",
    )
    group.add_argument(
        "--tls-cert",
        type=Path,
        default=os.environ.get("IDCHECK_TLS_CERT") or None,
        metavar="FILE",
        help="client certificate (PEM) to use instead of the one picked in --tls-dir; its key is FILE with .key",
    )
    return common


def _tls(args: argparse.Namespace) -> TlsOptions | None:
    """The client's TLS files from --tls-dir/--tls-cert, or None for a plaintext (loopback) connection."""
    tls_dir, tls_cert = getattr(args, "tls_dir", None), getattr(args, "tls_cert", None)
    if tls_dir is None and tls_cert is None:
        return None
    base = tls_dir if tls_dir is not None else Path(str(tls_cert)).parent
    return TlsOptions.from_dir(base, member=args.member, role=args.role, cert=tls_cert)


_Client = TypeVar("_Client", bound=ServiceClient)


@overload
def _connect(args: argparse.Namespace) -> RegisterClient: ...
@overload
def _connect(args: argparse.Namespace, client_class: type[_Client]) -> _Client: ...
def _connect(args: argparse.Namespace, client_class: type[ServiceClient] = RegisterClient) -> ServiceClient:
    """A client of `client_class` from the common connection options (--target, --member, --role, TLS, --timeout)."""
    kwargs: dict[str, Any] = {} if args.timeout is None else {"timeout": args.timeout}
    return client_class(args.target, member=args.member, role=args.role, tls=_tls(args), **kwargs)


def _usage_error(command: str, message: str) -> int:
    print(f"idcheck {command}: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _service_error(
    command: str,
    err: IdcheckError,
    args: argparse.Namespace,
    rename: Callable[[str], str] | None = None,
    *,
    after: str = "",
) -> int:
    """Report a failed call on stderr; returns 2 for INVALID_ARGUMENT (bad input), 1 for everything else.

    `rename` turns a violation's field name (e.g. ``queries[3].mrz``) into words the user knows (a manifest
    row); `after` is a sentence appended to the report (e.g. what was not done)."""
    prog = f"idcheck {command}"
    if isinstance(err, InvalidArgument):
        print(f"{prog}: the register refused the request (INVALID_ARGUMENT):", file=sys.stderr)
        for field, description in err.violations or [("", err.message)]:
            name = rename(field) if rename and field else field
            print(f"  {name}: {description}" if name else f"  {description}", file=sys.stderr)
        status = EXIT_BAD_INPUT
    elif isinstance(err, Unavailable):
        print(
            f"{prog}: cannot reach the idcheck register at {args.target} ({err.message}).\n"
            f"  Is the server running? Start a local demo register with `make run` (idcheck serve --demo), "
            f"or point --target or IDCHECK_TARGET at a running one.",
            file=sys.stderr,
        )
        if _tls(args) is not None:
            print(
                "  With TLS, a refused handshake looks the same: check that your certificate is signed by the "
                "server's CA and has not expired, and that the server certificate names the host of --target.",
                file=sys.stderr,
            )
        status = EXIT_SERVICE_ERROR
    elif isinstance(err, DeadlineExceeded):
        print(
            f"{prog}: no answer from the idcheck register at {args.target} before the deadline ({err.message}).\n"
            f"  Is the server running (`make run`)? If it is only slow, give a longer --timeout.",
            file=sys.stderr,
        )
        status = EXIT_SERVICE_ERROR
    else:
        # e.g. "PERMISSION_DENIED: keys[1]: the record is owned by another member"; name the field in user terms
        field, sep, rest = err.message.partition(": ")
        message = f"{rename(field)}: {rest}" if rename and sep and " " not in field else err.message
        print(f"{prog}: {err.code.name}: {message}", file=sys.stderr)
        status = EXIT_SERVICE_ERROR
    if after:
        print(f"  {after}", file=sys.stderr)
    return status


def _verdict_exit(verdict: str) -> int:
    # An answer we cannot read is never reported as clear.
    return _VERDICT_EXIT.get(verdict, EXIT_SERVICE_ERROR)


def _pb_name(enum_type: Any, value: int, prefix: str) -> str:
    try:
        return str(enum_type.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


# --- idcheck serve ---------------------------------------------------------------------------------------


def _add_serve(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    # The server is imported only when needed: its configuration flags here, the server itself in _cmd_serve.
    from idcheck.server.config import add_arguments

    parser = subparsers.add_parser(
        "serve",
        help="serve the register over gRPC (health and reflection included)",
        description=(
            "Open the register in the data directory and serve it over gRPC until Ctrl-C or SIGTERM. Flags win "
            "over IDCHECK_* environment variables, which win over the TOML file (--config)."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from idcheck.server.app import run

    return run(args)


# --- idcheck mirror --------------------------------------------------------------------------------------


def _add_mirror(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    from idcheck.server.mirror import add_mirror_arguments

    parser = subparsers.add_parser(
        "mirror",
        help="serve an on-site, read-only mirror that follows a register's change feed",
        description=(
            "Follow the register at --upstream (role mirror), keep a durable copy in --data and answer "
            "CheckDocument, CheckDocuments and CheckManifest from it, also while the link is down. Health turns "
            "NOT_SERVING when the last contact with the upstream is older than --max-staleness seconds. Flags win over "
            "IDCHECK_* environment variables, which win over the TOML file (--config: tables [server], [mirror])."
        ),
    )
    add_mirror_arguments(parser)
    parser.set_defaults(func=_cmd_mirror)


def _cmd_mirror(args: argparse.Namespace) -> int:
    from idcheck.server.mirror import run

    return run(args)


# --- idcheck check ---------------------------------------------------------------------------------------


def _add_check(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        parents=[_client_options()],
        help="check one document: typed (--state, --number) or its MRZ (--mrz)",
        description=(
            "Check one travel document against the register and tell the officer what to do. Give the issuing "
            "state and document number, or the whole MRZ: one argument with newlines (real or written \\n), "
            "one --mrz per line, several lines after --mrz, or '--mrz -' to read standard input. Quote MRZ "
            "lines: '<' is special to the shell. Exit status: 0 CLEAR, 3 HIT, 4 POSSIBLE_MATCH, 2 bad input, "
            "1 service error."
        ),
    )
    parser.add_argument("--state", default="", metavar="CODE", help="issuing state, ICAO code (e.g. UTO)")
    parser.add_argument("--number", default="", help="document number as printed")
    parser.add_argument(
        "--class",
        dest="document_class",
        type=_document_class,
        default=0,
        metavar="CLASS",
        help=f"document class: {_CLASS_HELP} (default: any)",
    )
    parser.add_argument(
        "--birth-date", type=_iso_date, default=None, metavar="YYYY-MM-DD", help="holder's date of birth"
    )
    parser.add_argument("--mrz", action="extend", nargs="+", default=None, metavar="LINE", help="the MRZ lines")
    parser.add_argument("--reference", default="", help="your own reference for this check, echoed back")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=_cmd_check)


def _mrz_text(values: list[str]) -> str:
    """The MRZ from --mrz values: '-' reads stdin; a written '\\n' separates lines like a real newline."""
    if values == ["-"]:
        text = sys.stdin.read()
    elif "-" in values:
        raise ValueError("'--mrz -' (standard input) cannot be combined with MRZ lines")
    else:
        text = "\n".join(v.replace("\\n", "\n") for v in values)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def _cmd_check(args: argparse.Namespace) -> int:
    mrz = ""
    if args.mrz is not None:
        if args.state or args.number or args.document_class or args.birth_date:
            return _usage_error("check", "give either --mrz or --state/--number (with --class, --birth-date)")
        try:
            mrz = _mrz_text(args.mrz)
        except ValueError as err:
            return _usage_error("check", str(err))
        if not mrz:
            return _usage_error("check", "the MRZ is empty")
    elif not args.number:
        return _usage_error("check", "give the document: --state and --number, or --mrz")
    try:
        with _connect(args) as client:
            answer = client.check(
                state=args.state,
                number=args.number,
                document_class=args.document_class,
                birth_date=args.birth_date.isoformat() if args.birth_date else "",
                mrz=mrz,
                reference=args.reference,
            )
    except IdcheckError as err:
        return _service_error("check", err, args)
    if args.json:
        found = _answer_json(answer)
        if answer.upstream_contact_time:  # answered by a mirror
            found["upstream_contact_time"] = answer.upstream_contact_time
        print(json.dumps(found, ensure_ascii=False))
    else:
        print(_describe_answer(answer))
    return _verdict_exit(answer.verdict)


def _answer_json(a: CheckAnswer) -> dict[str, Any]:
    return {
        "verdict": a.verdict,
        "officer_action": a.officer_action,
        "matches": [dataclasses.asdict(m) for m in a.matches],
        "query_id": a.query_id,
        "register_sequence": a.register_sequence,
        "searched_state": a.searched_state,
        "searched_number": a.searched_number,
        "reference": a.reference,
        "mrz_checks": a.mrz_checks,
        "mrz_valid": a.mrz_valid,
        "mrz": a.mrz_fields or None,
    }


def _class_word(name: str) -> str:
    return {"ID_CARD": "ID card", "UNSPECIFIED": "any class"}.get(name, name.lower())


def _describe_answer(a: CheckAnswer) -> str:
    """A verdict for a border officer: verdict first, then what to do, then the evidence."""
    out = [_VERDICT_TITLES.get(a.verdict, f"{a.verdict}: unexpected verdict, treat as not cleared")]
    out.append(f"Action: {a.officer_action}")
    out.append(f"Searched: {a.searched_state or '(no issuing state)'} {a.searched_number}")
    for n, m in enumerate(a.matches, start=1):
        out.append(f"Match {n} of {len(a.matches)}: {m.kind} ({_KIND_TEXT.get(m.kind, 'near match')})")
        rows = [
            ("Document", f"{m.issuing_state} {m.document_number}, {_class_word(m.document_class)}"),
            ("Status", m.status),
            ("Owner", m.owner_member),
            ("Event date", m.event_date or "(not given)"),
            ("Instructions", m.instructions or "(none)"),
        ]
        holder = ", ".join(x for x in (m.holder_surname, m.holder_given_names) if x)
        if holder:
            rows.append(("Holder", holder))
        if m.holder_birth_date:
            rows.append(("Birth date", m.holder_birth_date))
        out.extend(f"  {label + ':':<14}{value}" for label, value in rows)
    if a.mrz_valid is not None:
        fmt = a.mrz_fields.get("format", "")
        out.append(f"MRZ check digits{f' ({fmt})' if fmt else ''}:")
        out.extend(f"  {_TICK if ok else _CROSS} {name}" for name, ok in a.mrz_checks.items())
        if a.mrz_valid:
            out.append("  every check digit matches")
        else:
            failed = ", ".join(name for name, ok in a.mrz_checks.items() if not ok)
            out.append(f"  INVALID MRZ: failed check digits: {failed} (forged or misread document?)")
    if a.reference:
        out.append(f"Reference: {a.reference}")
    out.append(f"Query id: {a.query_id}")
    out.append(f"Register sequence: {a.register_sequence}")
    if a.upstream_contact_time:
        out.append(f"Answered by a mirror, in step with its upstream as of {a.upstream_contact_time}")
    return "\n".join(out)


# --- idcheck check-stream --------------------------------------------------------------------------------

_STREAM_FIELDS = frozenset({"state", "issuing_state", "number", "document_number", "document_class", "birth_date",
                            "mrz", "reference"})  # fmt: skip


def _add_check_stream(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check-stream",
        parents=[_client_options()],
        help="check documents one by one as they come, on one check stream (JSON lines or MRZ text in, JSON out)",
        description=(
            "Check documents as they arrive, one JSON object per line on standard input (or FILE), on one "
            "CheckDocumentStream: for a document reader or a gate's software piping travellers in. A line holds "
            '{"state": ..., "number": ...} (optional "document_class", "birth_date", "reference") or {"mrz": ...}. '
            "With --mrz the input is the MRZ text a reader prints instead: each document's 2 or 3 lines one after "
            "the other (or on one line), blank lines between documents optional. "
            "Each answer is printed as soon as it arrives, one JSON object per line in input order, as `check "
            '--json` prints it plus "line" (the first line of the document); a refused document prints '
            '{"line": N, "error": {...}} and the stream goes on. Exit status: 3 if any HIT, 4 if any POSSIBLE_MATCH '
            "and no HIT, 2 if a document was refused and nothing matched, 0 all clear, 1 if the stream broke "
            "(service error)."
        ),
    )
    parser.add_argument(
        "input", nargs="?", type=Path, default=None, metavar="FILE", help="documents to check (default: stdin)"
    )
    parser.add_argument(
        "--mrz",
        action="store_true",
        help="the input is MRZ text (TD1: 3 lines of 30 characters; TD2, MRV-B: 2 of 36; TD3, MRV-A: 2 of 44)",
    )
    parser.set_defaults(func=_cmd_check_stream)


def _stream_query(line: str) -> dict[str, Any]:
    """The query of one input line; ValueError (with what is wrong) for anything else."""
    try:
        query = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg})") from None
    if not isinstance(query, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(query) - _STREAM_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} (use {', '.join(sorted(_STREAM_FIELDS))})")
    if query.get("mrz") and any(query.get(k) for k in ("state", "issuing_state", "number", "document_number")):
        raise ValueError('give either "mrz" or "state"/"number"')
    return {
        "state": str(query.get("state", query.get("issuing_state", ""))),
        "number": str(query.get("number", query.get("document_number", ""))),
        "document_class": int(query.get("document_class", 0) or 0),
        "birth_date": str(query.get("birth_date", "")),
        "mrz": str(query.get("mrz", "")),
        "reference": str(query.get("reference", "")),
    }


# MRZ layouts by line length: how many lines a document of that line length has (idcheck.icao.mrz).
_MRZ_LINES = {30: 3, 36: 2, 44: 2}


def _json_documents(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | ValueError]]:
    """(line number, query or what is wrong with it) for each JSON line that is not blank."""
    for n, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield n, _stream_query(line)
            except ValueError as err:
                yield n, err


def _mrz_documents(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | ValueError]]:
    """(first line number, query or what is wrong with it) for each MRZ in text a document reader prints: each
    document's lines one after the other, or all on one line; a blank line ends a document. A document is handed on
    as soon as its last line is read (a reader waits for its answer before the next traveller). Lines are only
    grouped here: the register checks each MRZ and says precisely what is wrong with one."""
    group: list[str] = []
    first = 0
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            if group:
                yield first, ValueError(f"incomplete MRZ: {len(group)} of {_MRZ_LINES[len(group[0])]} lines")
                group = []
            continue
        if not group:
            whole = [(length, count) for length, count in _MRZ_LINES.items() if len(line) == length * count]
            if whole:  # the whole MRZ on one line
                length = whole[0][0]
                yield n, {"mrz": "\n".join(line[i : i + length] for i in range(0, len(line), length))}
                continue
            if len(line) not in _MRZ_LINES:
                yield (
                    n,
                    ValueError(
                        f"not an MRZ line: {len(line)} characters (MRZ lines have 30, 36 or 44; "
                        "a whole MRZ on one line 90, 72 or 88)"
                    ),
                )
                continue
            first = n
        elif len(line) != len(group[0]):
            yield (
                first,
                ValueError(
                    f"MRZ lines of different lengths: line {first} has {len(group[0])} characters, line {n} {len(line)}"
                ),
            )
            group = []
            continue
        group.append(line)
        if len(group) == _MRZ_LINES[len(group[0])]:
            yield first, {"mrz": "\n".join(group)}
            group = []
    if group:
        yield first, ValueError(f"incomplete MRZ at the end: {len(group)} of {_MRZ_LINES[len(group[0])]} lines")


def _cmd_check_stream(args: argparse.Namespace) -> int:
    try:
        source = sys.stdin if args.input is None else args.input.open(encoding="utf-8")
    except OSError as err:
        return _usage_error("check-stream", f"cannot read {args.input}: {err.strerror}")
    verdicts: collections.Counter[str] = collections.Counter()
    refused = 0
    try:
        with source, _connect(args) as client, client.check_stream() as stream:
            for n, query in (_mrz_documents if args.mrz else _json_documents)(source):
                try:
                    if isinstance(query, ValueError):
                        raise query
                    answer = stream.check(**query)
                except ValueError as err:
                    refused += 1
                    out: dict[str, Any] = {
                        "line": n,
                        "error": {"code": "INVALID_ARGUMENT", "message": f"line {n}: {err}", "violations": []},
                    }
                except (InvalidArgument, ResourceExhausted) as err:  # this document refused; the stream goes on
                    if stream.broken:  # no: the stream itself was refused (e.g. too many open)
                        raise
                    refused += 1
                    out = {"line": n, "error": _error_json(err)}
                else:
                    verdicts[answer.verdict] += 1
                    out = {"line": n, **_answer_json(answer)}
                    if answer.upstream_contact_time:  # answered by a mirror
                        out["upstream_contact_time"] = answer.upstream_contact_time
                print(json.dumps(out, ensure_ascii=False), flush=True)
    except IdcheckError as err:
        after = "the documents after the last answer printed were not checked"
        return _service_error("check-stream", err, args, after=after)
    if verdicts["HIT"]:
        return EXIT_HIT
    if verdicts["POSSIBLE_MATCH"]:
        return EXIT_POSSIBLE_MATCH
    unreadable = set(verdicts) - set(_VERDICT_EXIT)
    if unreadable:
        return EXIT_SERVICE_ERROR  # an answer we cannot read is never reported as clear
    return EXIT_BAD_INPUT if refused else EXIT_OK


def _error_json(err: IdcheckError) -> dict[str, Any]:
    return {
        "code": err.code.name,
        "message": err.message,
        "violations": [{"field": f, "description": d} for f, d in err.violations],
        **({"reason": err.reason} if err.reason else {}),
        **({"retry_after": err.retry_after} if err.retry_after is not None else {}),
    }


# --- idcheck check-manifest ------------------------------------------------------------------------------


def _add_check_manifest(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check-manifest",
        parents=[_client_options()],
        help="check a whole passenger manifest (CSV, Parquet or Arrow)",
        description=(
            "Check every document of a manifest in batches. The file has an 'mrz' column, or 'issuing_state' "
            "and 'document_number' columns (optional: document_class, birth_date, reference). Prints every HIT "
            "and POSSIBLE_MATCH and a summary; rows are numbered from 1 after the header. Exit status: 3 if any "
            "HIT, 4 if any POSSIBLE_MATCH and no HIT, 0 all clear, 2 bad input, 1 service error."
        ),
    )
    parser.add_argument("manifest", type=Path, metavar="FILE", help="the manifest: .csv, .parquet or .arrow")
    parser.add_argument(
        "--batch-size", type=_batch_size(10_000), default=1000, help="documents per call (default: 1000)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object with every result")
    parser.set_defaults(func=_cmd_check_manifest)


def _cmd_check_manifest(args: argparse.Namespace) -> int:
    path: Path = args.manifest
    on_lines = files.is_csv(path)

    def where(row: int) -> str:
        return f"row {row} (line {row + 1})" if on_lines else f"row {row}"

    counts = {"HIT": 0, "POSSIBLE_MATCH": 0, "CLEAR": 0}
    results: list[dict[str, Any]] = []
    done = 0
    sequence = 0
    started = time.perf_counter()
    try:
        with _connect(args) as client:
            # Each batch goes as one Arrow table (CheckManifest): a verdict byte per row comes back, and the full
            # result of every row that is more than a plain CLEAR.
            for table in files.read_manifest_tables(path, chunk_rows=args.batch_size):
                answer = client.check_manifest(table)
                sequence = answer.register_sequence
                codes = answer.verdict_codes
                for verdict in counts:
                    counts[verdict] += codes.count(getattr(pb, f"VERDICT_{verdict}"))
                if args.json:
                    results.extend(_manifest_rows_json(done, table, answer))
                else:
                    for i in sorted(answer.details):
                        if answer.verdict(i) != "CLEAR":
                            print(_manifest_line(where(done + i + 1), answer.details[i]))
                done += len(answer)
    except files.FileFormatError as err:
        unchecked = f"rows after {done} were not checked" if done else ""
        print(f"idcheck check-manifest: {err}" + (f"; {unchecked}" if unchecked else ""), file=sys.stderr)
        return EXIT_BAD_INPUT
    except IdcheckError as err:

        def rename(field: str) -> str:
            # A call covers one batch: its queries[i] is manifest row done + i + 1.
            m = _ROW_FIELD.fullmatch(field)
            if not m:
                return field
            return where(done + int(m.group(1)) + 1) + (f", {m.group(2)}" if m.group(2) else "")

        note = f"the manifest was checked up to row {done} only" if done else "no document was checked"
        return _service_error("check-manifest", err, args, rename, after=note)
    elapsed = time.perf_counter() - started
    summary = {
        "file": str(path),
        "documents": done,
        "hits": counts["HIT"],
        "possible_matches": counts["POSSIBLE_MATCH"],
        "clear": counts["CLEAR"],
        "elapsed_seconds": round(elapsed, 3),
        "documents_per_second": round(done / elapsed, 1) if elapsed > 0 else None,
        "register_sequence": sequence,
    }
    if args.json:
        print(json.dumps({"summary": summary, "results": results}, ensure_ascii=False))
    else:
        print(
            f"{done} documents checked: {counts['HIT']} hits, {counts['POSSIBLE_MATCH']} possible matches, "
            f"{counts['CLEAR']} clear in {elapsed:.2f}s ({done / elapsed if elapsed > 0 else 0:,.0f} documents/s), "
            f"register sequence {sequence}"
        )
    if counts["HIT"]:
        return EXIT_HIT
    if counts["POSSIBLE_MATCH"]:
        return EXIT_POSSIBLE_MATCH
    if done != counts["CLEAR"]:
        return EXIT_SERVICE_ERROR  # a verdict we could not read: never report a manifest as all clear
    return EXIT_OK


def _manifest_rows_json(done: int, table: pa.Table, answer: ManifestAnswer) -> Iterator[dict[str, Any]]:
    """JSON of every row of one checked batch (rows numbered from done + 1). A plain CLEAR row comes back as a
    verdict only: its reference and searched key are the ones sent (canonical, as the register searched them)."""

    def column(name: str) -> list[str]:
        return table.column(name).to_pylist() if name in table.column_names else [""] * table.num_rows

    refs, states, numbers = column("client_reference"), column("issuing_state"), column("document_number")
    for i in range(len(answer)):
        if i in answer.details:
            yield _manifest_json(done + i + 1, answer.details[i])
            continue
        state = canonical_state(states[i]) if states[i].strip() else ""
        yield _manifest_json(
            done + i + 1,
            answer.answer(i, reference=refs[i], searched_state=state, searched_number=canonical_number(numbers[i])),
        )


def _manifest_json(row: int, a: CheckAnswer) -> dict[str, Any]:
    return {
        "row": row,
        "reference": a.reference,
        "verdict": a.verdict,
        "officer_action": a.officer_action,
        "searched_state": a.searched_state,
        "searched_number": a.searched_number,
        "query_id": a.query_id,
        "mrz_valid": a.mrz_valid,
        "matches": [dataclasses.asdict(m) for m in a.matches],
    }


def _manifest_line(where: str, a: CheckAnswer) -> str:
    document = f"{a.searched_state or '?'} {a.searched_number}"
    return f"{where}  {a.reference or '-'}  {document}  {a.verdict}  {a.officer_action}"


# --- idcheck upload --------------------------------------------------------------------------------------


def _add_upload(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "upload",
        parents=[_client_options()],
        help="upload your records (CSV, Parquet or Arrow), all or nothing",
        description=(
            "Upload the records of a file as one all-or-nothing change. Required columns: "
            f"{', '.join(files.REQUIRED_RECORD_COLUMNS)}; optional: surname, given_names, birth_date, nationality, "
            "expiry_date, instructions. The file is read in bounded chunks and sent as Arrow batches. Rows the "
            "register rejects are listed, with their reasons and original values, in <file>.rejected.csv next to "
            "the input (or --rejects FILE); the other rows are committed. Exit status: 0 committed (even with "
            "rejected rows), 2 bad input, 1 service error."
        ),
    )
    parser.add_argument("records", type=Path, metavar="FILE", help="the records: .csv, .parquet or .arrow")
    parser.add_argument(
        "--mode",
        choices=("incremental", "replace-all"),
        default="incremental",
        help="incremental: add or update these records (default); replace-all: these become your whole active "
        "set, your active records not in the file are cancelled",
    )
    parser.add_argument(
        "--upload-id",
        default=None,
        metavar="ID",
        help="idempotency key (default: derived from the file's content and the mode, so that sending the same "
        "file again changes nothing)",
    )
    parser.add_argument(
        "--batch-size",
        type=_batch_size(None),
        default=None,
        help="rows per message (default 50,000 as Arrow batches, 5000 as protobuf records)",
    )
    parser.add_argument(
        "--wire",
        choices=("arrow", "records"),
        default="arrow",
        help="arrow: Arrow IPC batches, the bulk path (default); records: one protobuf record per row",
    )
    parser.add_argument(
        "--rejects",
        type=Path,
        default=None,
        metavar="FILE",
        help="where to write the rejected rows as CSV (row_index, line, field, reason, then the row's values); "
        "default: <file>.rejected.csv next to the input",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(func=_cmd_upload)


def _cmd_upload(args: argparse.Namespace) -> int:
    path: Path = args.records
    show_progress = sys.stderr.isatty() and not args.quiet
    arrow = args.wire == "arrow"
    batch_size = args.batch_size or (50_000 if arrow else 5000)
    try:
        names = files.column_names(path)
        missing = [c for c in files.REQUIRED_RECORD_COLUMNS if c not in names]
        if missing:
            raise files.FileFormatError(f"{path}: missing column(s) {', '.join(missing)}; have {', '.join(names)}")
        total = files.count_rows(path) if show_progress else None
    except files.FileFormatError as err:
        return _usage_error("upload", str(err))
    bar = None
    if show_progress:
        big = (total or 0) >= 10_000  # 1.23M rows, 45.6k rows/s; small files in plain numbers
        bar = tqdm(total=total, unit=" rows", unit_scale=big, desc=path.name, file=sys.stderr)
    # The file is streamed as read_records batches, as RegisterClient.upload(path) does, with the same
    # content-derived upload id and description. A read error mid-file abandons the stream before its end
    # message, so nothing is applied; the client re-raises the reader's own error.
    started = time.perf_counter()
    try:
        with _connect(args) as client:
            kwargs: dict[str, Any] = {} if args.timeout is None else {"timeout": args.timeout}
            result = client.upload(
                path if arrow else files.read_records(path, chunk_rows=batch_size),
                mode=args.mode,
                upload_id=args.upload_id or file_upload_id(path, args.mode),
                description=path.name,
                batch_size=batch_size,
                arrow_rows=batch_size,
                on_batch=(lambda rows: _advance(bar, rows)) if bar is not None else None,
                **kwargs,
            )
    except files.FileFormatError as err:
        return _usage_error("upload", f"{err}; the upload was abandoned, nothing was applied")
    except IdcheckError as err:
        return _service_error("upload", err, args, after="nothing was applied")
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    rejected_path = args.rejects or path.with_name(f"{path.stem}.rejected.csv")
    written: Path | None = None
    if result.rejected_rows:
        try:
            _write_rejections(rejected_path, result, on_lines=files.is_csv(path), source=path)
            written = rejected_path
        except (OSError, files.FileFormatError) as err:
            print(f"idcheck upload: could not write the rejected rows to {rejected_path}: {err}", file=sys.stderr)
    if args.json:
        summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "rejected_rows"}
        summary.update(
            file=str(path),
            mode=args.mode,
            rejected_file=str(written) if written else None,
            elapsed_seconds=round(elapsed, 3),
        )
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(_describe_upload(path, result, elapsed))
    if result.rejected_rows:
        if written:
            print(
                f"{len(result.rejected_rows)} rejected row(s) written to {written} (row_index, line, field, reason)",
                file=sys.stdout if not args.json else sys.stderr,
            )
        else:
            for r in result.rejected_rows[:20]:
                print(f"  rejected row {r.row_index}: {r.field}: {r.reason}", file=sys.stderr)
    elif rejected_path.exists():
        print(f"note: {rejected_path} is from an earlier upload; this one rejected no row", file=sys.stderr)
    return EXIT_OK


def _advance(bar: tqdm, rows: int) -> None:
    bar.update(rows)
    if bar.total is not None and bar.n >= bar.total:
        bar.set_postfix_str("all sent, waiting for the commit")


def _describe_upload(path: Path, r: UploadResult, elapsed: float) -> str:
    if r.replayed:
        head = f"Upload of {path.name} replayed: nothing changed (upload id already committed; its first result)"
    else:
        head = f"Upload of {path.name} committed ({r.received / elapsed if elapsed > 0 else 0:,.0f} rows/s)"
    rows = [
        ("upload id", r.upload_id),
        ("received", r.received),
        ("accepted", r.accepted),
        ("  created", r.created),
        ("  updated", r.updated),
        ("  unchanged", r.unchanged),
        ("cancelled", r.cancelled),
        ("rejected", r.rejected),
        ("register sequence", r.register_sequence),
        ("elapsed", f"{elapsed:.2f}s"),
    ]
    return "\n".join([head, *(f"  {label + ':':<20}{value}" for label, value in rows)])


def _write_rejections(target: Path, result: UploadResult, *, on_lines: bool, source: Path | None = None) -> None:
    """The rejected rows as CSV; `line` is the CSV line of the row (header on line 1) for CSV inputs. With
    `source`, each row's original values follow (read back from the file in one streaming pass)."""
    names = files.column_names(source) if source is not None else []
    values = files.rows_at(source, (r.row_index for r in result.rejected_rows)) if source is not None else iter(())
    pending = next(values, None)
    with target.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row_index", "line", "field", "reason", *names])
        for r in result.rejected_rows:  # sorted by row index, as the server sends them
            while pending is not None and pending[0] < r.row_index:
                pending = next(values, None)
            original = pending[1] if pending is not None and pending[0] == r.row_index else {}
            line = r.row_index + 2 if on_lines else ""
            writer.writerow([r.row_index, line, r.field, r.reason, *(original.get(n, "") for n in names)])


# --- idcheck cancel --------------------------------------------------------------------------------------


def _key(text: str) -> tuple[str, str, int]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].strip() or not parts[1].strip():
        raise argparse.ArgumentTypeError(f"a key is STATE:NUMBER or STATE:NUMBER:CLASS, not {text!r}")
    return parts[0].strip(), parts[1].strip(), _document_class(parts[2]) if len(parts) == 3 else 0


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", default="", metavar="CODE", help="issuing state, ICAO code")
    parser.add_argument("--number", default="", help="document number")
    parser.add_argument(
        "--class",
        dest="document_class",
        type=_document_class,
        default=0,
        metavar="CLASS",
        help=f"{_CLASS_HELP}; needed only when you hold several classes under that state and number",
    )


def _add_cancel(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "cancel",
        parents=[_client_options()],
        help="withdraw records you own (document recovered, entered in error)",
        description=(
            "Cancel records you own, all or nothing: a cancelled record never hits and stays in the history. "
            "Exit status: 0 done, 2 invalid request, 1 other errors (not yours, not found, service)."
        ),
    )
    _add_key_options(parser)
    parser.add_argument(
        "--key",
        dest="keys",
        action="append",
        type=_key,
        default=[],
        metavar="STATE:NUMBER[:CLASS]",
        help="a record to cancel; repeat for several",
    )
    parser.add_argument("--reason", default="", help="kept in the history, e.g. 'document recovered'")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_cmd_cancel)


def _cmd_cancel(args: argparse.Namespace) -> int:
    keys: list[tuple[str, str, int]] = []
    if args.state or args.number:
        if not (args.state and args.number):
            return _usage_error("cancel", "--state and --number go together")
        keys.append((args.state, args.number, args.document_class))
    keys.extend(args.keys)
    if not keys:
        return _usage_error("cancel", "give the record: --state and --number, or --key STATE:NUMBER")

    def rename(field: str) -> str:
        m = _KEY_FIELD.fullmatch(field)
        if not m or int(m.group(1)) >= len(keys):
            return field
        state, number, _ = keys[int(m.group(1))]
        return f"{field} ({state}:{number})"

    try:
        with _connect(args) as client:
            result = client.cancel(keys, reason=args.reason)
    except IdcheckError as err:
        return _service_error("cancel", err, args, rename, after="nothing was cancelled")
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
    else:
        print(f"cancelled: {result.cancelled}")
        print(f"already cancelled: {result.already_cancelled}")
        print(f"register sequence: {result.register_sequence}")
    return EXIT_OK


# --- idcheck audit ---------------------------------------------------------------------------------------


def _add_audit(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "audit",
        parents=[_client_options()],
        help="list checked documents, verifies and identifies from the audit log",
        description="List checked documents, verifies and identifies, oldest first. Operators (--role operator) "
        "see every call, optionally one member's searches (--caller); a member sees the checks that hit its own "
        "records and the verifies and identifies that matched its own templates, whoever asked.",
    )
    parser.add_argument("--since", required=True, help="start, RFC 3339 time or YYYY-MM-DD (UTC)")
    parser.add_argument("--until", default="", help="end (exclusive), RFC 3339 time or YYYY-MM-DD")
    parser.add_argument("--caller", default="", help="operators: only this member's searches")
    parser.add_argument(
        "--verdict",
        action="append",
        default=[],
        choices=("HIT", "POSSIBLE_MATCH", "CLEAR", "MATCH", "NO_MATCH", "CANDIDATES", "NO_CANDIDATES"),
        help="only this verdict (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace) -> int:
    from idcheck.client.audit import AuditClient

    count = 0
    try:
        with _connect(args, AuditClient) as client:
            for e in client.entries(args.since, until=args.until, caller_member=args.caller, verdicts=args.verdict):
                count += 1
                matched = ",".join(str(x) for x in e.matched_record_ids)
                if args.json:
                    print(
                        json.dumps(
                            {
                                "query_id": e.query_id,
                                "at": e.at,
                                "caller_member": e.caller_member,
                                "caller_role": e.caller_role,
                                "peer": e.peer,
                                "query_kind": e.query_kind,
                                "issuing_state": e.issuing_state,
                                "document_number": e.document_number,
                                "verdict": e.verdict,
                                "matched_record_ids": list(e.matched_record_ids),
                                "register_sequence": e.register_sequence,
                                "subject_id": e.subject_id,
                            }
                        )
                    )
                else:
                    print(
                        f"{e.at}  {e.caller_member:<4} {e.caller_role:<8} {e.verdict:<14} "
                        f"{e.query_kind:<8} {e.issuing_state or '-':<4} {e.document_number or e.subject_id or '-':<12} "
                        f"{matched or '-':<10} {e.query_id}"
                    )
    except IdcheckError as err:
        return _service_error("audit", err, args)
    if not args.json:
        print(f"{count} checked document(s)", file=sys.stderr)
    return EXIT_OK


# --- idcheck hits, confirm-hit, hit-outcome ------------------------------------------------------------------


def _add_hits(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "hits",
        parents=[_client_options()],
        help="show the hits on your records (--follow: live)",
        description="Show every HIT and POSSIBLE_MATCH on the records you own, oldest first, after --cursor; with "
        "--follow keep waiting for new ones until interrupted. Each line ends with its cursor: pass the last one "
        "you processed as --cursor to resume without gap or duplicate.",
    )
    parser.add_argument("--cursor", default="", help="resume after this cursor (from an earlier line)")
    parser.add_argument("--follow", action="store_true", help="keep the stream open and print hits as they come")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=_cmd_hits)


def _cmd_hits(args: argparse.Namespace) -> int:
    from idcheck.client.audit import AuditClient

    # a follow waits for live hits: no deadline unless one is asked for
    timeout = args.timeout if args.timeout is not None else (0 if args.follow else None)
    try:
        with _connect(args, AuditClient) as client:
            for h in client.watch_hits(args.cursor, follow=args.follow, timeout=timeout):
                if args.json:
                    fields: tuple[str, ...] = ("cursor", "query_id", "at", "caller_member", "caller_role", "query_kind")
                    fields += ("issuing_state", "document_number", "verdict")
                    entry: dict[str, Any] = {f: getattr(h, f) for f in fields}
                    entry["matched_record_ids"] = list(h.matched_record_ids)
                    print(json.dumps(entry), flush=True)
                else:
                    matched = ",".join(str(x) for x in h.matched_record_ids)
                    print(
                        f"{h.at}  {h.caller_member:<4} {h.verdict:<14} {h.issuing_state:<4} {h.document_number:<12} "
                        f"{matched:<10} {h.query_id}  cursor {h.cursor}",
                        flush=True,
                    )
    except KeyboardInterrupt:
        return EXIT_OK
    except IdcheckError as err:
        return _service_error("hits", err, args)
    return EXIT_OK


def _add_confirm_hit(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "confirm-hit",
        parents=[_client_options()],
        help="confirm or reject a hit on one of your records",
        description="Record your decision on a HIT or POSSIBLE_MATCH on one of your records, once per query id; "
        "the member that asked the query can read it with `idcheck hit-outcome`.",
    )
    parser.add_argument("query_id", help="query id of the hit (from `idcheck hits`)")
    parser.add_argument("--outcome", required=True, choices=("confirmed", "rejected"), type=str.lower)
    parser.add_argument("--note", default="", help="free text for the querying border system")
    parser.set_defaults(func=_cmd_confirm_hit)


def _print_outcome(outcome: Any) -> None:
    print(f"query {outcome.query_id}: {outcome.outcome}")
    if outcome.decided_by:
        print(f"decided by {outcome.decided_by} at {outcome.decided_at}")
    if outcome.note:
        print(f"note: {outcome.note}")


def _cmd_confirm_hit(args: argparse.Namespace) -> int:
    from idcheck.client.audit import AuditClient

    try:
        with _connect(args, AuditClient) as client:
            _print_outcome(client.confirm_hit(args.query_id, args.outcome.upper(), args.note))
    except IdcheckError as err:
        return _service_error("confirm-hit", err, args)
    return EXIT_OK


def _add_hit_outcome(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "hit-outcome",
        parents=[_client_options()],
        help="show whether the owner confirmed or rejected a hit",
        description="Show the owner's decision on a hit (PENDING until it decides): for the member that asked "
        "the query and the owner of the matched record.",
    )
    parser.add_argument("query_id", help="query id given with the check's answer")
    parser.set_defaults(func=_cmd_hit_outcome)


def _cmd_hit_outcome(args: argparse.Namespace) -> int:
    from idcheck.client.audit import AuditClient

    try:
        with _connect(args, AuditClient) as client:
            _print_outcome(client.hit_outcome(args.query_id))
    except IdcheckError as err:
        return _service_error("hit-outcome", err, args)
    return EXIT_OK


# --- idcheck stats ---------------------------------------------------------------------------------------


def _add_stats(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "stats",
        parents=[_client_options()],
        help="service statistics (operators)",
        description="Show the server's statistics: register size by status, sequence numbers, templates, calls and "
        "verdicts since start, audit log writing, rate-limit and overload refusals, RPCs in flight. Role operator "
        "only (the default role of this command; with TLS an operator certificate).",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object with every counter")
    # an operator's command: act as operator unless told otherwise
    parser.set_defaults(func=_cmd_stats, role=os.environ.get("IDCHECK_ROLE") or "operator")


def _cmd_stats(args: argparse.Namespace) -> int:
    from idcheck.client.operations import OperationsClient

    try:
        with _connect(args, OperationsClient) as client:
            stats = client.statistics()
    except IdcheckError as err:
        return _service_error("stats", err, args)
    if args.json:
        # every field, numbers as numbers (the proto3 JSON mapping would quote the 64-bit ones)
        entry = {
            f.name: dict(getattr(stats, f.name)) if f.message_type is not None else getattr(stats, f.name)
            for f in stats.DESCRIPTOR.fields
        }
        print(json.dumps(entry))
        return EXIT_OK
    print(_describe_stats(stats))
    return EXIT_OK


def _counts(counts: Any, order: Sequence[str]) -> str:
    """`A 1, B 2` in `order`, then any other keys; '-' when there are none."""
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return ", ".join(f"{k} {counts[k]:,}" for k in keys) or "-"


def _describe_stats(s: Any) -> str:
    up = int(s.uptime_seconds)
    statuses = ("STOLEN", "STOLEN_BLANK", "LOST", "REVOKED", "INVALIDATED", "CANCELLED")
    documents = {k: v for k, v in s.answers_by_verdict.items() if k in ("HIT", "POSSIBLE_MATCH", "CLEAR")}
    biometric = {k: v for k, v in s.answers_by_verdict.items() if k not in documents}
    if s.audit_enabled:
        audit = (
            f"{s.audit_calls_written:,} calls / {s.audit_rows_written:,} rows written; {s.audit_rows_pending:,} rows "
            f"pending, {s.audit_calls_queued:,} calls queued; {s.audit_write_failures:,} failed commits"
            + (
                f"; {s.audit_calls_set_aside:,} calls SET ASIDE (see audit-rejected.jsonl)"
                if s.audit_calls_set_aside
                else ""
            )
        )
    else:
        audit = "NOT WRITTEN (server started with benchmark_no_audit)"
    lines = [
        f"uptime      {up // 3600}h {up % 3600 // 60:02d}m {up % 60:02d}s (since {s.started_at})",
        f"register    {s.active_records:,} active records at sequence {s.register_sequence:,}; by status: "
        + _counts(s.records_by_status, statuses),
        f"templates   {s.templates_enrolled:,} enrolled ({s.template_index or '-'} index), template sequence "
        f"{s.template_sequence:,}",
        "calls       " + _counts(s.calls_by_kind, ("check", "manifest", "verify", "identify")),
        f"documents   {s.documents_checked:,} checked: " + _counts(documents, ("HIT", "POSSIBLE_MATCH", "CLEAR")),
        "biometrics  " + _counts(biometric, ("MATCH", "NO_MATCH", "CANDIDATES", "NO_CANDIDATES")),
        f"audit       {audit}",
        f"limits      {s.rate_limited_calls:,} calls rate-limited; {s.overload_refusals:,} refused for overload; "
        f"{s.calls_in_work:,} in work, {s.calls_waiting:,} waiting; {s.streams_open:,} of {s.streams_max:,} "
        f"streams and {s.check_streams_open:,} of {s.check_streams_max:,} check streams open",
        f"rpcs        {s.rpcs_in_flight:,} in flight (this one included), {s.rpcs_started:,} started since start",
        f"background  {s.background_tasks:,} tasks running (index merge or snapshot, WAL checkpoint, template "
        "index rebuild)",
    ]
    if s.worker_processes > 1:
        lines.insert(1, f"process     worker {s.worker} of {s.worker_processes}: the counters below are its own")
    return "\n".join(lines)


# --- idcheck get -----------------------------------------------------------------------------------------


def _add_get(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "get",
        parents=[_client_options()],
        help="show one of your records and its history",
        description="Show a record you own as it stands, and every change to it, oldest first.",
    )
    _add_key_options(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_cmd_get)


def _cmd_get(args: argparse.Namespace) -> int:
    if not (args.state and args.number):
        return _usage_error("get", "give the record: --state and --number")
    try:
        with _connect(args) as client:
            view = client.get(args.state, args.number, args.document_class)
    except IdcheckError as err:
        return _service_error("get", err, args)
    record = _record_json(view.record)
    history = [_change_json(c) for c in view.history]
    if args.json:
        print(json.dumps({"record": record, "history": history}, ensure_ascii=False))
        return EXIT_OK
    holder = record["holder"]
    names = ", ".join(x for x in (holder["surname"], holder["given_names"]) if x)
    rows = [
        ("Document", f"{record['issuing_state']} {record['document_number']}, {_class_word(record['document_class'])}"),
        ("Status", record["status"]),
        ("Owner", record["owner_member"]),
        ("Event date", record["event_date"] or "(not given)"),
        ("Recorded at", record["recorded_at"]),
        ("Record id", record["record_id"]),
        ("Sequence", record["sequence"]),
        ("Instructions", record["instructions"] or "(none)"),
        ("Holder", names or "(not given)"),
    ]
    rows += [
        (label, holder[k])
        for label, k in (("Birth date", "birth_date"), ("Nationality", "nationality"), ("Expiry date", "expiry_date"))
        if holder[k]
    ]
    out = [f"{label + ':':<14}{value}" for label, value in rows]
    out.append(f"History ({len(history)} change{'s' if len(history) != 1 else ''}, oldest first):")
    for c in history:
        line = (
            f"  {c['sequence']:>8}  {c['changed_at']}  {c['operation']:<9}  {c['status']:<12}  by {c['actor_member']}"
        )
        if c["upload_id"]:
            line += f"  upload {c['upload_id']}"
        if c["reason"]:
            line += f"  reason: {c['reason']}"
        out.append(line)
    print("\n".join(out))
    return EXIT_OK


def _record_json(r: Any) -> dict[str, Any]:
    h = r.holder
    return {
        "issuing_state": r.key.issuing_state,
        "document_number": r.key.document_number,
        "document_class": _pb_name(pb.DocumentClass, r.key.document_class, "DOCUMENT_CLASS_"),
        "status": _pb_name(pb.RecordStatus, r.status, "RECORD_STATUS_"),
        "event_date": r.event_date,
        "holder": {
            "surname": h.surname,
            "given_names": h.given_names,
            "birth_date": h.birth_date,
            "nationality": h.nationality,
            "expiry_date": h.expiry_date,
        },
        "instructions": r.instructions,
        "owner_member": r.owner_member,
        "record_id": r.record_id,
        "recorded_at": r.recorded_at,
        "sequence": r.sequence,
    }


def _change_json(c: Any) -> dict[str, Any]:
    return {
        "sequence": c.sequence,
        "changed_at": c.changed_at,
        "operation": c.operation,
        "status": _pb_name(pb.RecordStatus, c.status, "RECORD_STATUS_"),
        "actor_member": c.actor_member,
        "upload_id": c.upload_id,
        "reason": c.reason,
    }


# --- idcheck enrol / verify / identify / remove-templates / calibrate ------------------------------------

EXIT_NO_MATCH = 5  # verify: NO_MATCH; identify: no candidate


def _bio_connect(args: argparse.Namespace) -> Any:
    from idcheck.client.biometrics import BiometricsClient

    return _connect(args, BiometricsClient)


def _read_vectors(path: Path, column: str = "vector") -> Any:
    """A 2-D float array from a .npy file, or the list<float> column of a Parquet file."""
    import numpy as np

    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        return array.reshape(1, -1) if array.ndim == 1 else array
    if path.suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=[column])
        values = table.column(column).combine_chunks()
        return np.asarray(values.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(values), -1)
    raise files.FileFormatError(f"{path}: use a .npy or .parquet file of vectors")


def _probe_vector(args: argparse.Namespace) -> Any:
    vectors = _read_vectors(args.probe, args.vector_col)
    if not 0 <= args.row < len(vectors):
        raise files.FileFormatError(f"{args.probe}: no row {args.row} ({len(vectors)} vectors)")
    return vectors[args.row]


def _add_probe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probe", type=Path, required=True, metavar="FILE", help="probe vector: .npy or .parquet")
    parser.add_argument("--row", type=int, default=0, help="row of FILE to use as the probe (default 0)")
    parser.add_argument("--vector-col", default="vector", help="vector column of a Parquet file (default vector)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _add_enrol(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "enrol",
        parents=[_client_options()],
        help="enrol biometric templates from a .npy or .parquet file",
        description=(
            "Enrol templates as your member. A Parquet file has one row per template: a subject column, a vector "
            "column (list of floats) and optionally a documents column (STATE:NUMBER, several separated by ';') "
            "and a quality column. A .npy file holds the vectors only (one row each); give their subjects (and "
            "documents) in a CSV with --labels. Each batch is all or nothing. Exit status: 0 enrolled, 2 bad "
            "input, 1 service error."
        ),
    )
    parser.add_argument("templates", type=Path, metavar="FILE", help=".parquet, or .npy with --labels")
    parser.add_argument("--labels", type=Path, default=None, metavar="CSV", help="subjects of a .npy file's rows")
    parser.add_argument("--subject-col", default="subject_id", help="subject column (default subject_id)")
    parser.add_argument("--vector-col", default="vector", help="vector column of a Parquet file (default vector)")
    parser.add_argument("--doc-col", default=None, help="linked documents column (STATE:NUMBER;...)")
    parser.add_argument("--quality-col", default=None, help="quality column (0 to 1)")
    parser.add_argument("--batch-size", type=_batch_size(10_000), default=1000, help="templates per call")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(func=_cmd_enrol)


def _label_columns(args: argparse.Namespace) -> dict[str, list[Any]]:
    path: Path = args.templates
    wanted = [c for c in (args.subject_col, args.doc_col, args.quality_col) if c]
    if path.suffix == ".npy":
        if args.labels is None:
            raise files.FileFormatError(f"{path}: a .npy file needs --labels CSV naming each row's subject")
        with args.labels.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        missing = [c for c in wanted if rows and c not in rows[0]]
        if missing or not rows:
            raise files.FileFormatError(f"{args.labels}: missing column(s) {', '.join(missing) or args.subject_col}")
        return {c: [r[c] for r in rows] for c in wanted}
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    missing = [c for c in [*wanted, args.vector_col] if c not in names]
    if missing:
        raise files.FileFormatError(f"{path}: missing column(s) {', '.join(missing)}; have {', '.join(names)}")
    table = pq.read_table(path, columns=wanted)
    return {c: table.column(c).to_pylist() for c in wanted}


def _documents(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(";")
    return [d.strip() for d in items if d and d.strip()]


def _cmd_enrol(args: argparse.Namespace) -> int:
    path: Path = args.templates
    try:
        vectors = _read_vectors(path, args.vector_col)
        labels = _label_columns(args)
        subjects = labels[args.subject_col]
        if len(subjects) != len(vectors):
            raise files.FileFormatError(f"{len(vectors)} vectors but {len(subjects)} subjects")
        bad_docs = [d for v in labels.get(args.doc_col, []) for d in _documents(v) if ":" not in d]
        if bad_docs:
            raise files.FileFormatError(f"document {bad_docs[0]!r} is not STATE:NUMBER")
    except (files.FileFormatError, OSError, ValueError) as err:
        return _usage_error("enrol", str(err))
    templates = (
        {
            "subject_id": str(subjects[i]),
            "vector": vectors[i],
            "documents": _documents(labels[args.doc_col][i]) if args.doc_col else [],
            "quality": float(labels[args.quality_col][i]) if args.quality_col else None,
        }
        for i in range(len(vectors))
    )
    bar = tqdm(total=len(vectors), unit=" templates", desc=path.name, file=sys.stderr) if sys.stderr.isatty() else None
    started = time.perf_counter()
    try:
        with _bio_connect(args) as client:
            result = client.enrol(templates, batch_size=args.batch_size, on_batch=bar.update if bar else None)
    except IdcheckError as err:

        def rename(field: str) -> str:  # templates[i] of a batch -> the file's row
            m = re.match(r"templates\[(\d+)\](.*)", field)
            return f"row {m.group(1)} of the failed batch{m.group(2)}" if m else field

        return _service_error("enrol", err, args, rename, after="the failed batch was not applied")
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - started
    summary = {
        "file": str(path),
        "enrolled": len(result.template_ids),
        "subjects_created": result.subjects_created,
        "first_template_id": result.template_ids[0] if result.template_ids else None,
        "last_template_id": result.template_ids[-1] if result.template_ids else None,
        "template_sequence": result.template_sequence,
        "elapsed_seconds": round(elapsed, 3),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        rate = len(result.template_ids) / elapsed if elapsed > 0 else 0
        print(f"Enrolled {len(result.template_ids):,} templates from {path.name} ({rate:,.0f} templates/s)")
        for key, value in summary.items():
            if key != "file":
                print(f"  {key.replace('_', ' ') + ':':<20}{value}")
    return EXIT_OK


def _add_verify(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        parents=[_client_options()],
        help="compare a probe with one subject's or one document's templates (1:1)",
        description="Exit status: 0 MATCH, 5 NO_MATCH, 2 bad input, 1 service error (or subject unknown).",
    )
    claim = parser.add_mutually_exclusive_group(required=True)
    claim.add_argument("--subject", default=None, help="the claimed subject id")
    claim.add_argument("--document", default=None, metavar="STATE:NUMBER", help="a document linked to templates")
    _add_probe_options(parser)
    parser.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    try:
        probe = _probe_vector(args)
        document = None
        if args.document:
            state, sep, number = args.document.partition(":")
            if not sep:
                raise files.FileFormatError(f"--document {args.document!r} is not STATE:NUMBER")
            document = (state, number)
    except (files.FileFormatError, OSError, ValueError) as err:
        return _usage_error("verify", str(err))
    try:
        with _bio_connect(args) as client:
            a = client.verify(probe, subject_id=args.subject, document=document)
    except IdcheckError as err:
        return _service_error("verify", err, args)
    if args.json:
        print(json.dumps(dataclasses.asdict(a)))
    else:
        print(
            f"{a.decision}: score {a.score:.4f} against threshold {a.threshold:.4f} "
            f"(target {a.rate_kind} {a.target_rate:g}); subject {a.subject_id}, best template {a.best_template_id} "
            f"of {a.templates_compared} compared; query id {a.query_id}"
        )
    return EXIT_OK if a.decision == "MATCH" else EXIT_NO_MATCH


def _add_identify(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "identify",
        parents=[_client_options()],
        help="search the whole gallery for a probe (1:N)",
        description="Exit status: 0 candidates found, 5 none, 2 bad input, 1 service error.",
    )
    _add_probe_options(parser)
    parser.add_argument("-k", "--max-candidates", type=int, default=10, help="most candidates (default 10)")
    parser.set_defaults(func=_cmd_identify)


def _cmd_identify(args: argparse.Namespace) -> int:
    try:
        probe = _probe_vector(args)
    except (files.FileFormatError, OSError, ValueError) as err:
        return _usage_error("identify", str(err))
    try:
        with _bio_connect(args) as client:
            a = client.identify(probe, max_candidates=args.max_candidates)
    except IdcheckError as err:
        return _service_error("identify", err, args)
    if args.json:
        print(json.dumps(dataclasses.asdict(a)))
    else:
        print(
            f"{len(a.candidates)} candidate(s) at or above {a.threshold:.4f} (target {a.rate_kind} {a.target_rate:g}); "
            f"{a.search_kind} search of {a.gallery_size:,} templates; query id {a.query_id}"
        )
        if a.candidates:
            print(f"  {'rank':>4}  {'score':>7}  {'subject':<24} {'owner':<6} documents")
            for c in a.candidates:
                docs = ", ".join(f"{s} {n}" for s, n in c.documents) or "-"
                print(f"  {c.rank:>4}  {c.score:>7.4f}  {c.subject_id:<24} {c.owner_member:<6} {docs}")
    return EXIT_OK if a.candidates else EXIT_NO_MATCH


def _add_remove_templates(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "remove-templates",
        parents=[_client_options()],
        help="remove your templates by id or by subject (all or nothing)",
    )
    parser.add_argument("--subject", action="append", default=[], help="remove all templates of this subject")
    parser.add_argument("--template-id", type=int, action="append", default=[], help="remove this template")
    parser.set_defaults(func=_cmd_remove_templates)


def _cmd_remove_templates(args: argparse.Namespace) -> int:
    try:
        with _bio_connect(args) as client:
            r = client.remove(template_ids=args.template_id, subject_ids=args.subject)
    except IdcheckError as err:
        return _service_error("remove-templates", err, args, after="nothing was removed")
    print(f"Removed {r.removed} template(s); template sequence {r.template_sequence}")
    return EXIT_OK


def _add_calibrate(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="compute score thresholds for target error rates from a labelled sample (no server needed)",
        description=(
            "Compute the verify threshold for a target false-match rate and the identify threshold for a target "
            "false-positive identification rate at a gallery size, from genuine and impostor scores: a .npz "
            "(arrays genuine and impostor, or template pairs a, b and mated) or a Parquet file (columns score, "
            "mated); or --synthetic for the built-in face model the defaults come from. --write updates a TOML "
            "configuration file that `idcheck serve --config` reads."
        ),
    )
    parser.add_argument("sample", type=Path, nargs="?", default=None, metavar="FILE", help=".npz or .parquet")
    parser.add_argument("--synthetic", action="store_true", help="calibrate on the synthetic face model")
    parser.add_argument("--verify-fmr", type=float, default=1e-4, help="target FMR of verify (default 1e-4)")
    parser.add_argument("--identify-fpir", type=float, default=1e-3, help="target FPIR of identify (default 1e-3)")
    parser.add_argument(
        "--gallery-size", type=int, default=1_000_000, help="gallery size the FPIR holds for (default 1,000,000)"
    )
    parser.add_argument("--write", type=Path, default=None, metavar="TOML", help="configuration file to update")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from idcheck.biometrics.calibration import CalibrationError, calibrate_rate, load_sample, write_settings

    if (args.sample is None) == (not args.synthetic):
        return _usage_error("calibrate", "give a sample FILE or --synthetic (not both)")
    try:
        if args.synthetic:
            from idcheck.biometrics.synthetic import FaceGenerator

            genuine, impostor = FaceGenerator().score_sample()
        else:
            genuine, impostor = load_sample(args.sample)
        verify = calibrate_rate(genuine, impostor, args.verify_fmr)
        identify = calibrate_rate(genuine, impostor, args.identify_fpir, kind="FPIR", gallery_size=args.gallery_size)
        if args.write:
            write_settings(
                args.write,
                {
                    "verify_fmr": args.verify_fmr,
                    "verify_threshold": verify.threshold,
                    "identify_fpir": args.identify_fpir,
                    "identify_threshold": identify.threshold,
                },
            )
    except (CalibrationError, OSError) as err:
        return _usage_error("calibrate", str(err))
    if args.json:
        print(
            json.dumps({"verify": verify.as_dict(), "identify": identify.as_dict(), "written": str(args.write or "")})
        )
        return EXIT_OK
    print(f"Sample: {verify.genuine:,} genuine and {verify.impostor:,} impostor scores")
    for name, c in (("verify", verify), ("identify", identify)):
        extra = (
            f" at gallery size {args.gallery_size:,} (per-comparison FMR {c.per_comparison_fmr:.3g})"
            if name == "identify"
            else ""
        )
        print(
            f"  {name:<9} {c.rate_kind} {c.target_rate:g}{extra}: threshold {c.threshold:.4f} ({c.method}); "
            f"observed FMR {c.observed_fmr:.3g}, FNMR {c.fnmr:.3%}"
        )
    if args.write:
        print(f"Written to {args.write}; start the server with --config {args.write}")
    return EXIT_OK


# --- idcheck certs ---------------------------------------------------------------------------------------


def _add_certs(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "certs",
        help="create a CA, server and member certificates for mutual TLS (demos and tests)",
        description=(
            "Create the federation's CA and the certificates signed by it, for demonstrations and tests. A member "
            "certificate carries its identity in one URI subject alternative name, "
            "idcheck://member/<STATE>/role/<ROLE>; the server trusts nothing else. Keys are ECDSA P-256, "
            "unencrypted, mode 0600."
        ),
    )
    actions = parser.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = actions.add_parser("init-ca", help="create ca.pem and ca.key in DIR")
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument("--name", default="idcheck federation CA", help="the CA's common name")
    init.add_argument("--days", type=_positive_float, default=3650, help="validity in days (default 3650)")
    init.add_argument("--force", action="store_true", help="replace an existing CA (invalidates its certificates)")
    init.set_defaults(func=_cmd_certs_init_ca)
    issue = actions.add_parser(
        "issue",
        help="issue a member certificate (<member>-<role>.pem/.key) signed by the CA in DIR",
        description="Issue a client certificate for a member authority acting in a role, signed by the CA in DIR.",
    )
    issue.add_argument("dir", type=Path, metavar="DIR")
    issue.add_argument("--member", required=True, metavar="CODE", help="ICAO state code of the member authority")
    issue.add_argument("--role", required=True, choices=_ROLES)
    issue.add_argument("--days", type=_positive_float, default=365, help="validity in days (default 365)")
    issue.add_argument(
        "--stem",
        default=None,
        help="file name in DIR without extension (default <member>-<role>; 'client' makes it DIR's default)",
    )
    issue.set_defaults(func=_cmd_certs_issue)
    server = actions.add_parser(
        "issue-server",
        help="issue the server certificate (server.pem/.key) for the given host names and addresses",
    )
    server.add_argument("dir", type=Path, metavar="DIR")
    server.add_argument(
        "--host", action="append", required=True, metavar="HOST", help="DNS name or IP address (repeat)"
    )
    server.add_argument("--days", type=_positive_float, default=825, help="validity in days (default 825)")
    server.set_defaults(func=_cmd_certs_issue_server)


def _cmd_certs_init_ca(args: argparse.Namespace) -> int:
    from idcheck.security import certs

    try:
        path = certs.init_ca(args.dir, name=args.name, days=args.days, overwrite=args.force)
    except certs.CertificateError as err:
        return _usage_error("certs init-ca", str(err))
    print(certs.describe(path))
    return EXIT_OK


def _cmd_certs_issue(args: argparse.Namespace) -> int:
    from idcheck.security import certs

    if args.stem is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", args.stem):
        return _usage_error("certs issue", f"--stem must be a plain file name, not {args.stem!r}")
    try:
        cert, key = certs.issue_member(args.dir, args.member, args.role, days=args.days, stem=args.stem)
    except certs.CertificateError as err:
        return _usage_error("certs issue", str(err))
    print(certs.describe(cert))
    print(f"{key}: private key")
    return EXIT_OK


def _cmd_certs_issue_server(args: argparse.Namespace) -> int:
    from idcheck.security import certs

    try:
        cert, key = certs.issue_server(args.dir, args.host, days=args.days)
    except certs.CertificateError as err:
        return _usage_error("certs issue-server", str(err))
    print(certs.describe(cert))
    print(f"{key}: private key")
    return EXIT_OK


# --- idcheck bench ---------------------------------------------------------------------------------------


def _add_bench(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    from idcheck.client import bench

    parser = subparsers.add_parser(
        "bench",
        help="latency and throughput of a register server, optionally beside Redis, SQLite and raw FAISS",
        description=(
            "Start a server on a fresh synthetic register (or target a running one) and measure single checks, "
            "manifests, verify, identify and uploads: requests/s, documents/s, p50/p95/p99/p99.9/max latency, "
            "errors by status code. Writes a JSON result file and a PNG plot; Ctrl-C prints what was measured."
        ),
    )
    bench.add_arguments(parser)
    parser.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from idcheck.client import bench

    return bench.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
