"""The ``idcheck`` command line.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and sets ``func``, and
``_cmd_<name>(args) -> int`` runs it and returns the exit status. To add a subcommand, write the pair and
call ``_add_<name>`` from :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence

from idcheck.icao import (
    MRZ,
    DocumentClass,
    MRZError,
    MRZFormat,
    document_class,
    is_known_state,
    is_specimen_state,
    parse_mrz,
    state_name,
)

EXIT_OK = 0
EXIT_UNREADABLE = 2

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


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


if __name__ == "__main__":
    raise SystemExit(main())
