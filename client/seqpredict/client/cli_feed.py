"""`seqpredict predict` and `seqpredict generate`: feeding a session and sampling from it.

Argument parsing and output only; the calls are `Session.feed` and `Session.generate`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from seqpredict.client import render
from seqpredict.client.arguments import ESCAPES_HELP, SESSION_HELP, add_guard_options, escapes, integer, token_ids
from seqpredict.client.cli_exits import EXIT_INTERRUPTED, EXIT_OK
from seqpredict.client.ranges import UINT32, UINT64
from seqpredict.client.sync import Client


def add_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    predict = commands.add_parser("predict", help="feed input to a session and show the next-token candidates")
    predict.add_argument("--session", required=True, help=SESSION_HELP)
    given = predict.add_mutually_exclusive_group()
    given.add_argument("--text", help="input text (omit --text and --tokens to predict from the current state)")
    given.add_argument("--tokens", type=token_ids, help="input token ids, comma-separated: 1,2,3")
    predict.add_argument("--top-k", type=integer(*UINT32), help="candidates to show (server default 5)")
    predict.add_argument("--all-steps", action="store_true", help="a table after every input token")
    predict.add_argument(
        "--score",
        action="store_true",
        help="also each input token's log-probability under the state before it, their sum and the perplexity",
    )
    predict.add_argument("--reset", action="store_true", help="start the session from the zero state")
    predict.add_argument("--end", action="store_true", help="release the session afterwards")
    add_guard_options(predict)
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.set_defaults(run=cmd_predict)

    generate = commands.add_parser("generate", help="stream a sampled continuation (no deadline: Ctrl-C stops it)")
    generate.add_argument("--session", required=True, help=SESSION_HELP)
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
    add_guard_options(generate)
    generate.set_defaults(run=cmd_generate)
    return [predict, generate]


def cmd_predict(client: Client, args: argparse.Namespace) -> int:
    given = args.tokens if args.tokens is not None else (args.text or "")
    pred = client.session(args.session).feed(
        given,
        top_k=args.top_k,
        all_steps=args.all_steps,
        reset=args.reset,
        end=args.end,
        expected_position=args.expected_position,
        expected_incarnation=args.expected_incarnation,
        score=args.score,
    )
    if args.json:
        print(render.prediction_json(pred))
        return EXIT_OK
    labels = [repr(ch) for ch in given] if isinstance(given, str) else [f"id {t}" for t in given]
    print(render.prediction(pred, labels))
    if args.score:
        print(f"\n{render.scores(pred, labels)}")
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
        expected_incarnation=args.expected_incarnation,
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
    position, incarnation = (
        (session.position, session.incarnation) if interrupted or last is None else (last.position, last.incarnation)
    )
    print(render.generation_summary(count, position, last, interrupted, incarnation), file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK
