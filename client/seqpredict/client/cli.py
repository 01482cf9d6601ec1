"""`seqpredict`: the command line over the sync client — inspect the model, feed, generate, manage sessions.

Argument parsing, output and exit codes only; everything that talks to the server is in
`seqpredict.client`. This module holds the entry point, the global options and the two
commands about the server (info, health); feeding is in `cli_feed.py`, sessions in
`cli_session.py`, exit codes in `cli_exits.py`. Reads the environment in `main`, never at
import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from seqpredict.client import cli_feed, cli_session, render
from seqpredict.client.arguments import positive_seconds
from seqpredict.client.channel import DEFAULT_TARGET
from seqpredict.client.cli_exits import (
    EPILOG,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    describe,
    exit_code,
)
from seqpredict.client.errors import NotFound, SeqpredictError
from seqpredict.client.sync import Client
from seqpredict.client.version import version_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqpredict",
        description="Talk to a seqpredict server: model info, health, predictions, generation, sessions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    version = version_line("seqpredict", "seqpredict-client")
    parser.add_argument("--version", action="version", version=version)
    parser.add_argument("--target", help=f"server address (env SEQPREDICT_TARGET, default {DEFAULT_TARGET})")
    parser.add_argument(
        "--timeout", type=positive_seconds, default=30.0, help="deadline of each call in seconds (default 30)"
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", help="bearer token (env SEQPREDICT_TOKEN)")
    auth.add_argument("--token-file", type=Path, help="read the bearer token from this file")
    parser.add_argument("--tls-ca", type=Path, help="CA certificates (PEM): connect with TLS")
    parser.add_argument("--tls-cert", type=Path, help="client certificate chain (PEM) for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="client private key (PEM) for mutual TLS")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="describe the served model")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=cmd_info)

    health = commands.add_parser("health", help="print the serving status (exit 0 only when SERVING)")
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    health.set_defaults(run=cmd_health)

    for sub in (info, health, *cli_feed.add_parsers(commands), *cli_session.add_parser(commands)):
        sub.add_argument("--version", action="version", version=version)  # every command answers it
    return parser


def cmd_info(client: Client, args: argparse.Namespace) -> int:
    info = client.model_info()
    print(render.to_json(info) if args.json else render.model_info(info))
    return EXIT_OK


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    try:
        status = client.health(args.service)
    except NotFound as exc:  # the health service answers a bare NOT_FOUND
        raise NotFound(f"the server reports no health status for service {args.service!r}") from exc
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_FAILURE


# -- the entry point --------------------------------------------------------------------------------
def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def make_client(args: argparse.Namespace, environ: Mapping[str, str]) -> Client:
    """A Client from the global options; flags win over SEQPREDICT_* variables."""
    target = args.target or environ.get("SEQPREDICT_TARGET") or DEFAULT_TARGET
    token = args.token
    if token is None and args.token_file is not None:
        token = (_read(args.token_file, "token file") or b"").decode().strip()
    if token is None:
        token = environ.get("SEQPREDICT_TOKEN") or None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("mutual TLS needs both --tls-cert and --tls-key")
    return Client(
        target,
        timeout=args.timeout,
        token=token,
        root_certificates=_read(args.tls_ca, "CA file"),
        private_key=_read(args.tls_key, "key file"),
        certificate_chain=_read(args.tls_cert, "certificate file"),
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    logging.basicConfig(level=logging.WARNING, format="seqpredict: %(message)s")
    args = build_parser().parse_args(argv)
    run: Callable[[Client, argparse.Namespace], int] = args.run
    try:
        client = make_client(args, environ)
    except (CliError, ValueError) as exc:
        print(f"seqpredict: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client:
            return run(client, args)
    except SeqpredictError as exc:
        print(f"seqpredict: {describe(exc, client.target, client.timeout)}", file=sys.stderr)
        return exit_code(exc)
    except CliError as exc:
        print(f"seqpredict: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): not an error of ours. Silence the flush at exit too.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
