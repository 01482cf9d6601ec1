"""`seqpredict session ...`: find, inspect, copy, save, restore and end sessions.

An operator's tools: `list` finds sessions (a page at a time, so a server holding 100,000 of
them streams its table), `show` and `end` act on one, `fork` copies one, and `export` /
`import` move a session's whole state through a file as the server's self-describing blob.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from seqpredict.client import render
from seqpredict.client.arguments import SESSION_HELP, add_guard_options, integer
from seqpredict.client.cli_exits import EXIT_OK, CliError
from seqpredict.client.errors import AlreadyExists, PositionMismatch
from seqpredict.client.ranges import UINT64
from seqpredict.client.sync import Client
from seqpredict.client.types import SessionInfo

STDIO = "-"
MAX_PAGE_SIZE = 1000  # the server's largest page


def add_parser(commands: Any) -> list[argparse.ArgumentParser]:
    """The `session` command and its actions; returns every parser made, for --version."""
    session = commands.add_parser("session", help="list, inspect, fork, export, import or end sessions")
    actions = session.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="sessions in name order, a page at a time (exit 0 also when none)")
    listing.add_argument("--prefix", default="", help="only sessions whose id starts with this")
    listing.add_argument(
        "--page-size", type=integer(1, MAX_PAGE_SIZE), help="sessions fetched per call, 1-1000 (server default 100)"
    )
    listing.add_argument("--limit", type=integer(1, UINT64[1]), help="show at most this many")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=cmd_list)

    show = actions.add_parser("show", help="position, incarnation, creation, last use and expiry of a session")
    show.add_argument("session_id", metavar="ID", help=SESSION_HELP)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(run=cmd_show)

    end = actions.add_parser("end", help="release a session and print its final position")
    end.add_argument("session_id", metavar="ID", help=SESSION_HELP)
    end.set_defaults(run=cmd_end)

    fork = actions.add_parser("fork", help="copy a session's state and position onto another id, as a new history")
    # Not dest="target": that is the global --target, the server's address.
    fork.add_argument("source_id", metavar="SOURCE", help="the session copied (unchanged)")
    fork.add_argument("target_id", metavar="TARGET", help="the copy's id")
    fork.add_argument("--replace", action="store_true", help="overwrite TARGET when it exists (else exit 7)")
    add_guard_options(fork, "SOURCE")
    fork.add_argument("--json", action="store_true", help="machine-readable output")
    fork.set_defaults(run=cmd_fork)

    export = actions.add_parser("export", help="write a session's whole state (a checksummed blob) to a file")
    export.add_argument("session_id", metavar="ID", help=SESSION_HELP)
    export.add_argument(
        "--out", metavar="FILE", help="where to write it; - is stdout (default: stdout, not a terminal)"
    )
    add_guard_options(export)
    export.set_defaults(run=cmd_export)

    restore = actions.add_parser("import", help="install an exported blob, with its position and incarnation")
    restore.add_argument("file", metavar="FILE", help="the blob written by `session export`; - reads stdin")
    restore.add_argument(
        "--session", metavar="ID", help="install it under this id (default: the id it was exported under)"
    )
    restore.add_argument(
        "--force", action="store_true", help="replace the session even if it moved on or is another history of it"
    )
    restore.add_argument("--json", action="store_true", help="machine-readable output")
    restore.set_defaults(run=cmd_import)
    return [session, show, end, listing, fork, export, restore]


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    info = client.session(args.session_id).info()
    print(render.to_json(info) if args.json else render.session_info(info))
    return EXIT_OK


def cmd_end(client: Client, args: argparse.Namespace) -> int:
    position = client.session(args.session_id).end()
    print(f"ended session {args.session_id} at position {position}")
    return EXIT_OK


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    """The table (or JSON lines) on stdout as pages arrive; how many, or that none match, on stderr."""
    page_size = args.page_size or 0
    if args.limit is not None and not page_size:
        page_size = min(args.limit + 1, MAX_PAGE_SIZE)  # one more than shown, to say whether more exist
    shown, more = 0, False
    for info in client.list_sessions(args.prefix, page_size=page_size):
        if shown == args.limit:
            more = True
            break
        if shown == 0 and not args.json:
            print(render.SESSION_HEADER)
        print(render.to_json_line(info) if args.json else render.session_row(info))
        shown += 1
    print(render.listing_summary(shown, args.prefix, more), file=sys.stderr)
    return EXIT_OK


def cmd_fork(client: Client, args: argparse.Namespace) -> int:
    try:
        info = client.fork_session(
            args.source_id,
            args.target_id,
            replace=args.replace,
            expected_position=args.expected_position,
            expected_incarnation=args.expected_incarnation,
        )
    except AlreadyExists as exc:  # the server's reason names its field; say which option it is here
        raise AlreadyExists(f"session {args.target_id!r} already exists; --replace overwrites it") from exc
    print(render.to_json(info) if args.json else f"forked {args.source_id} to {info.session_id}: {render.state(info)}")
    return EXIT_OK


def cmd_export(client: Client, args: argparse.Namespace) -> int:
    to_stdout = args.out in (None, STDIO)
    if args.out is None and sys.stdout.isatty():
        raise CliError("refusing to write a binary blob to a terminal: give --out FILE, or redirect (--out - insists)")
    exported = client.export_session(
        args.session_id, expected_position=args.expected_position, expected_incarnation=args.expected_incarnation
    )
    if to_stdout:
        sys.stdout.buffer.write(exported.blob)
        sys.stdout.buffer.flush()
    else:
        write_atomically(Path(args.out), exported.blob)
    where = "stdout" if to_stdout else args.out
    print(f"exported {_summary(exported.info)}, {len(exported.blob)} bytes to {where}", file=sys.stderr)
    return EXIT_OK


def cmd_import(client: Client, args: argparse.Namespace) -> int:
    blob = read_blob(args.file)
    try:
        info = client.import_session(blob, args.session, force=args.force)
    except PositionMismatch as exc:
        # The server names the session's actual state only when it is the obstacle (moved on, another
        # history), which --force overrides; another model's blob has none, and --force cannot help.
        if exc.actual_position is None:
            raise
        raise PositionMismatch(
            f"{exc.message.removesuffix(' (set force to replace it)')}; --force replaces it",
            actual_position=exc.actual_position,
            actual_incarnation=exc.actual_incarnation,
        ) from exc
    print(render.to_json(info) if args.json else f"imported {_summary(info)}")
    return EXIT_OK


def _summary(info: SessionInfo) -> str:
    return f"session {info.session_id}: {render.state(info)}"


# -- files ------------------------------------------------------------------------------------------
def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that it holds either its old content or all of the new.

    An export often overwrites the previous backup of the same session: a disk that fills up
    half-way must not leave neither. Not a regular file (a FIFO, /dev/stdout): written directly.
    """
    direct = path.exists() and not path.is_file()
    partial = path if direct else path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as out:
            out.write(data)
        if not direct:
            os.replace(partial, path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if not direct:
            partial.unlink(missing_ok=True)


def read_blob(name: str) -> bytes:
    """The bytes of FILE, or of stdin for `-` (never from a terminal: that would wait for typed binary)."""
    if name == STDIO:
        if sys.stdin.isatty():
            raise CliError("refusing to read a binary blob from a terminal: give a FILE, or pipe one in")
        data = sys.stdin.buffer.read()
        name = "stdin"
    else:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {name}: {exc.strerror or exc}") from None
    if not data:
        raise CliError(f"{name} is empty: not an exported session")
    return data
