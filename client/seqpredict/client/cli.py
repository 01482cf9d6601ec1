"""`seqpredict`: the command line over the sync client — inspect the model, feed, generate, manage sessions.

Argument parsing, output and exit codes only; everything that talks to the server is in
`seqpredict.client`. Reads the environment in `main`, never at import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from seqpredict.client import render
from seqpredict.client.arguments import ESCAPES_HELP, escapes, integer, positive_seconds, token_ids
from seqpredict.client.channel import DEFAULT_TARGET
from seqpredict.client.errors import (
    InvalidArgument,
    NotFound,
    PositionMismatch,
    ResourceExhausted,
    SeqpredictError,
    Unauthenticated,
    Unavailable,
)
from seqpredict.client.ranges import UINT32, UINT64
from seqpredict.client.sync import Client
from seqpredict.client.version import version_line

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_POSITION_MISMATCH = 4
EXIT_RESOURCE_EXHAUSTED = 5
EXIT_UNAUTHENTICATED = 6
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE from sysexits.h: a service is down, try again later
EXIT_INTERRUPTED = 130

# Most specific first: PositionMismatch is not an InvalidArgument, but order keeps this obvious.
EXIT_CODES: tuple[tuple[type[SeqpredictError], int], ...] = (
    (PositionMismatch, EXIT_POSITION_MISMATCH),
    (InvalidArgument, EXIT_USAGE),
    (NotFound, EXIT_NOT_FOUND),
    (ResourceExhausted, EXIT_RESOURCE_EXHAUSTED),
    (Unauthenticated, EXIT_UNAUTHENTICATED),
    (Unavailable, EXIT_UNAVAILABLE),
)

EPILOG = """\
exit codes:
  0   success (health: the server is SERVING)
  1   any other failure (health: not SERVING)
  2   usage error or invalid argument
  3   session (or health service) not found
  4   position mismatch: the session is not at --expected-position
  5   resource exhausted: a server limit was hit
  6   unauthenticated: missing or wrong token
  69  server unavailable: not running, unreachable or shutting down
"""


class CliError(Exception):
    """A problem found before any call, reported as one line with EXIT_USAGE."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqpredict",
        description="Talk to a seqpredict server: model info, health, predictions, generation, sessions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(version_line=version_line("seqpredict", "seqpredict-client"))
    parser.add_argument("--version", action="version", version=parser.get_default("version_line"))
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

    predict = commands.add_parser("predict", help="feed input to a session and show the next-token candidates")
    predict.add_argument("--session", required=True, help="session id: 1-128 characters of [A-Za-z0-9._:-]")
    given = predict.add_mutually_exclusive_group()
    given.add_argument("--text", help="input text (omit --text and --tokens to predict from the current state)")
    given.add_argument("--tokens", type=token_ids, help="input token ids, comma-separated: 1,2,3")
    predict.add_argument("--top-k", type=integer(*UINT32), help="candidates to show (server default 5)")
    predict.add_argument("--all-steps", action="store_true", help="a table after every input token")
    predict.add_argument("--reset", action="store_true", help="start the session from the zero state")
    predict.add_argument("--end", action="store_true", help="release the session afterwards")
    predict.add_argument("--expected-position", type=integer(*UINT64), help="fail (exit 4) unless the session is here")
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.set_defaults(run=cmd_predict)

    generate = commands.add_parser("generate", help="stream a sampled continuation (no deadline: Ctrl-C stops it)")
    generate.add_argument("--session", required=True, help="session id: 1-128 characters of [A-Za-z0-9._:-]")
    generate.add_argument("--prompt", help="text fed before sampling")
    generate.add_argument("--max-tokens", type=integer(*UINT32), required=True, help="tokens to generate")
    generate.add_argument("--temperature", type=float, help="0 is greedy (server default 1.0)")
    generate.add_argument("--top-k", type=integer(*UINT32), help="sample among the k most probable tokens")
    generate.add_argument("--top-p", type=float, help="nucleus sampling threshold in (0, 1]")
    generate.add_argument(
        "--seed", type=integer(*UINT64), help="same seed and same state give the same text (0 to 2**64-1)"
    )
    generate.add_argument(
        "--stop", type=escapes, action="append", default=[], help=f"stop after this string (repeatable); {ESCAPES_HELP}"
    )
    generate.add_argument("--reset", action="store_true", help="start the session from the zero state")
    generate.add_argument("--end", action="store_true", help="release the session afterwards")
    generate.add_argument("--expected-position", type=integer(*UINT64), help="fail (exit 4) unless the session is here")
    generate.set_defaults(run=cmd_generate)

    session = commands.add_parser("session", help="inspect or end a session")
    for sub in (info, health, predict, generate, session):
        sub.add_argument("--version", action="version", version=parser.get_default("version_line"))
    actions = session.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="position, creation, last use and expiry of a session")
    show.add_argument("session_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(run=cmd_session_show)
    end = actions.add_parser("end", help="release a session and print its final position")
    end.add_argument("session_id", metavar="ID")
    end.set_defaults(run=cmd_session_end)
    return parser


# -- commands: each returns its exit code -----------------------------------------------------------
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


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    given = args.tokens if args.tokens is not None else (args.text or "")
    pred = client.session(args.session).feed(
        given,
        top_k=args.top_k,
        all_steps=args.all_steps,
        reset=args.reset,
        end=args.end,
        expected_position=args.expected_position,
    )
    if args.json:
        print(render.to_json(pred))
    else:
        labels = [repr(ch) for ch in given] if isinstance(given, str) else [f"id {t}" for t in given]
        print(render.prediction(pred, labels))
    return EXIT_OK


def cmd_generate(client: Client, args: argparse.Namespace) -> int:
    session = client.session(args.session)
    tokens = session.generate(
        args.max_tokens,
        prompt=args.prompt,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        reset=args.reset,
        end=args.end,
        expected_position=args.expected_position,
    )
    count, last, interrupted = 0, None, False
    try:
        with tokens:
            try:
                for token in tokens:
                    count, last = count + 1, token
                    sys.stdout.write(token.text)
                    sys.stdout.flush()  # show each token as it arrives
            except KeyboardInterrupt:
                interrupted = True  # leaving `with` cancels the call and re-reads the position
    finally:
        if count or interrupted:  # end the text's line, also before an error message
            sys.stdout.write("\n")
            sys.stdout.flush()
    position = session.position if interrupted or last is None else last.position
    print(render.generation_summary(count, position, last, interrupted), file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def cmd_session_show(client: Client, args: argparse.Namespace) -> int:
    info = client.session(args.session_id).info()
    print(render.to_json(info) if args.json else render.session_info(info))
    return EXIT_OK


def cmd_session_end(client: Client, args: argparse.Namespace) -> int:
    position = client.session(args.session_id).end()
    print(f"ended session {args.session_id} at position {position}")
    return EXIT_OK


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


def exit_code(error: SeqpredictError) -> int:
    return next((code for cls, code in EXIT_CODES if isinstance(error, cls)), EXIT_FAILURE)


def describe(error: SeqpredictError, target: str) -> str:
    if isinstance(error, Unavailable) and "draining" in error.message:
        return (
            f"server at {target} is draining: it is shutting down and takes no new calls ({error.message}); "
            "retry when it has restarted, or point --target / SEQPREDICT_TARGET at another server"
        )
    if isinstance(error, Unavailable):
        return (
            f"server at {target} is unavailable ({error.message}); is it running? "
            "Start one with `make run`, or point --target / SEQPREDICT_TARGET at it"
        )
    return error.message


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
        print(f"seqpredict: {describe(exc, client.target)}", file=sys.stderr)
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
