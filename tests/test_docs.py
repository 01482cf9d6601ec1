"""The README stays true: every setting and every metric the server has is documented there."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from seqpredict.server.config import ENV_PREFIX, Settings
from seqpredict.server.metrics import Metrics

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    missing = [
        f.name
        for f in dataclasses.fields(Settings)
        if f"`--{f.name.replace('_', '-')}" not in README or f"`{ENV_PREFIX}{f.name.upper()}`" not in README
    ]
    assert not missing, f"settings missing from README.md: {missing}"


def test_every_metric_is_in_the_observability_section():
    names = {family.name for family in Metrics().registry.collect()}
    exposed = {n + "_total" if not n.startswith("process_") and n + "_total" in README else n for n in names}
    missing = sorted(n for n in exposed if n not in README)
    assert not missing, f"metrics missing from README.md: {missing}"
