"""ListSessions page tokens: opaque to clients, bound to the prefix they were issued for."""

from __future__ import annotations

import base64
import binascii

from seqpredict.server.validation import SESSION_ID, SESSION_PREFIX, invalid


def page_token(prefix: str, last_id: str) -> str:
    return base64.urlsafe_b64encode(f"{prefix}\n{last_id}".encode()).decode().rstrip("=")


def after_id(token: str, prefix: str) -> str:
    """The last id of the previous page; INVALID_ARGUMENT for a token we did not issue for this prefix."""
    if not token:
        return ""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid("page_token is not one this server issued") from None
    token_prefix, sep, last = raw.partition("\n")
    if not sep or SESSION_PREFIX.fullmatch(token_prefix) is None or SESSION_ID.fullmatch(last) is None:
        raise invalid("page_token is not one this server issued")
    if token_prefix != prefix:
        raise invalid(f"page_token was issued for prefix {token_prefix!r}, not {prefix!r}")
    return last
