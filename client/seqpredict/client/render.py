"""Human-readable and JSON renderings of the client's results, for the CLI.

Pure functions from our dataclasses to strings, so the CLI stays a thin layer of argument
parsing and exit codes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from seqpredict.client.types import GeneratedToken, ModelInfo, Prediction, SessionInfo, TopK


def to_json(value: Any) -> str:
    """Dataclasses as JSON objects, datetimes as ISO 8601."""
    data = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return json.dumps(data, indent=2, default=_json_default, ensure_ascii=False)


def to_json_line(value: Any) -> str:
    """As `to_json`, on one line: JSON lines, one object per record, for a listing read as it streams."""
    data = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return json.dumps(data, default=_json_default, ensure_ascii=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _fields(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def training_summary(record: dict[str, Any]) -> str:
    """One line out of a training record whose exact keys vary between training runs."""
    parts = []
    loss, step = record.get("best_val_loss"), record.get("best_step")
    if isinstance(loss, int | float):
        parts.append(f"best validation loss {loss:.4f}" + (f" at step {step}" if step is not None else ""))
    max_steps = (record.get("train_config") or {}).get("max_steps")
    if max_steps:
        parts.append(f"{max_steps} steps planned")
    files = record.get("train_files") or []
    if files:
        chars = sum(f.get("chars", 0) for f in files)
        names = ", ".join(str(f.get("path", "?")).rsplit("/", 1)[-1] for f in files)
        parts.append(f"trained on {names} ({chars:,} characters)")
    if record.get("partial"):
        parts.append("partial run")
    return "; ".join(parts) if parts else "(no training record)"


def model_info(info: ModelInfo) -> str:
    limits = info.limits
    return _fields(
        [
            ("model", info.name),
            ("fingerprint", f"sha256:{info.fingerprint}"),
            (
                "architecture",
                f"{info.cell.upper()}, {info.num_layers} layers x {info.hidden_size} hidden, "
                f"embedding {info.embed_dim}, state {', '.join(info.state_names)}",
            ),
            ("vocabulary", f"{info.vocab_size} tokens"),
            ("training", training_summary(info.training_record)),
            ("session state", f"{_size(info.state_bytes_per_session)} per session"),
            (
                "limits",
                f"{limits.max_tokens_per_request} tokens per request, "
                f"{limits.max_generate_tokens} tokens per generate, {limits.max_sessions} sessions, "
                f"idle TTL {limits.idle_ttl_seconds:g} s, {_size(limits.max_message_bytes)} per message",
            ),
        ]
    )


def _table(rows: Sequence[Sequence[str]], align: str) -> str:
    """Rows in columns; `align` has one letter per column: r(ight) or l(eft)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(align))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if a == "r" else cell.ljust(w) for cell, a, w in zip(row, align, widths, strict=True)
        ).rstrip()
        for row in rows
    )


def top_table(top: TopK) -> str:
    rows = [("rank", "token", "id", "probability", "log-prob")]
    for rank, t in enumerate(top, 1):
        rows.append((str(rank), repr(t.text), str(t.id), f"{t.probability:.4f}", f"{t.log_probability:.4f}"))
    return _table(rows, "rlrrr")


def prediction(pred: Prediction, inputs: Sequence[str]) -> str:
    """The header, then one table per input token with all_steps, else the table of `next`.

    `inputs` labels the steps: the fed characters, or the ids as text when fed as ids.
    """
    flags = [flag for flag, on in (("created", pred.created), ("ended", pred.ended)) if on]
    header = f"session {pred.session_id}  position {pred.position}  incarnation {pred.incarnation}"
    header += f"  ({', '.join(flags)})" if flags else ""
    if not pred.steps:
        return f"{header}\n{top_table(pred.next)}"
    start = pred.position - len(pred.steps)
    blocks = [header]
    for i, step in enumerate(pred.steps):
        label = inputs[i] if i < len(inputs) else "?"
        blocks.append(f"\nafter {label} (position {start + i + 1})\n{top_table(step)}")
    return "\n".join(blocks)


def prediction_json(pred: Prediction) -> str:
    """The Prediction's fields, and its perplexity when it was scored (a property, not a field)."""
    data = dataclasses.asdict(pred)
    if pred.token_log_probs is not None:
        data["perplexity"] = pred.perplexity
    return to_json(data)


def scores(pred: Prediction, inputs: Sequence[str]) -> str:
    """Each fed token's log-probability under the state before it and its surprisal, then the total.

    Surprisal is in bits (-log2 p), how it is usually read; log-probabilities stay natural logs,
    as the API returns them.
    """
    logps = pred.token_log_probs or ()
    if not logps or pred.log_prob_sum is None:
        return "score: nothing fed, nothing scored"
    start = pred.position - len(logps)
    rows = [("position", "token", "log-prob", "surprisal")]
    for i, logp in enumerate(logps):
        label = inputs[i] if i < len(inputs) else "?"
        rows.append((str(start + i + 1), label, f"{logp:.4f}", f"{-logp / math.log(2):.2f} bits"))
    total = f"sum of log-probs {pred.log_prob_sum:.4f} over {len(logps)} tokens, perplexity {pred.perplexity:.4f}"
    return f"{_table(rows, 'rlrr')}\n{total}"


def state(info: SessionInfo) -> str:
    """Where a session stands, in one phrase: what a guard (--expected-*) would name."""
    return f"position {info.position}, incarnation {info.incarnation}"


def session_info(info: SessionInfo) -> str:
    return _fields(
        [
            ("session", info.session_id),
            ("position", str(info.position)),
            ("incarnation", str(info.incarnation)),
            ("created", info.created_at.isoformat(timespec="seconds")),
            ("last used", info.last_used_at.isoformat(timespec="seconds")),
            ("expires", info.expires_at.isoformat(timespec="seconds")),
        ]
    )


# A listing streams page by page, so its columns cannot be sized to the widest value: the numbers
# and times get fixed widths (20 digits hold any uint64), and the id, of any length, comes last.
_ROW = "{:>10}  {:>20}  {:<25}  {:<25}  {}"
SESSION_HEADER = _ROW.format("position", "incarnation", "last used", "expires", "session")


def session_row(info: SessionInfo) -> str:
    return _ROW.format(
        info.position,
        info.incarnation,
        info.last_used_at.isoformat(timespec="seconds"),
        info.expires_at.isoformat(timespec="seconds"),
        info.session_id,
    )


def listing_summary(shown: int, prefix: str, more: bool) -> str:
    which = f" whose id starts with {prefix!r}" if prefix else ""
    if not shown:
        return f"no sessions{which}"
    counted = f"{shown} session{'s' if shown != 1 else ''}{which}"
    return f"{counted}; more follow (raise --limit)" if more else counted


def generation_summary(
    count: int, position: int | None, last: GeneratedToken | None, interrupted: bool, incarnation: int | None = None
) -> str:
    """tokens, where the session stands, and why generation finished."""
    if interrupted:
        finish = "interrupted"
    elif last is not None and last.finish_reason == "stop":
        finish = f"finished: stop string {last.stop!r}"
    elif last is not None and last.finish_reason:
        finish = f"finished: {last.finish_reason}"
    else:
        finish = "unfinished"
    where = "unknown" if position is None else str(position)
    history = "" if incarnation is None else f", incarnation {incarnation}"
    return f"{count} tokens, position {where}{history}, {finish}"
