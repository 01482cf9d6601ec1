"""SEQPREDICT_* variables that no setting reads: a misspelt setting is otherwise silently ignored.

Settings reads exactly the variables named after its fields; anything else with the prefix is
reported at start-up, with the closest setting's name when there is one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

PREFIX = "SEQPREDICT_"
# Read by other parts of the project, so not misspellings when the server sees them.
READ_ELSEWHERE = {
    "SEQPREDICT_TARGET": "the seqpredict CLI's server address",
    "SEQPREDICT_TOKEN": "the seqpredict CLI's bearer token",
    "SEQPREDICT_DOCKER_REQUIRED": "make test-docker in CI",
    "SEQPREDICT_TEST_DOCKERD": "the Docker tests' daemon binary",
}


def unknown_variables(environ: Mapping[str, str], settings: Iterable[str]) -> list[str]:
    """One warning per SEQPREDICT_* variable that is neither a setting nor read elsewhere."""
    known = set(settings)
    warnings = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in known or name in READ_ELSEWHERE:
            continue
        # Compared without the prefix they all share, which would make every name look close.
        suffixes = {k.removeprefix(PREFIX): k for k in known}
        close = difflib.get_close_matches(name.removeprefix(PREFIX), sorted(suffixes), n=1, cutoff=0.8)
        hint = f"; did you mean {suffixes[close[0]]}?" if close else "; `seqpredict-server --help` lists the settings"
        warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings
