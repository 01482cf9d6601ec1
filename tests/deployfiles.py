"""Reading the deployment files the way Docker, docker-compose, Prometheus and Grafana do.

tests/test_deploy.py checks the Docker image and the compose stack on machines without a
Docker engine; these helpers let it replay what an engine would do with the same files:
the Dockerfile's stages and instructions, the build context left by .dockerignore, COPY,
the compose file as docker-compose resolves it, and the queries of the dashboard and alerts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "seqpredict.json"


def require_tool(name: str, apt_package: str) -> str:
    """The path of a command-line tool the deployment tests run for real; never a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: `apt-get install {apt_package}` (Debian) provides it")
    return path


# -- YAML -------------------------------------------------------------------------------------
def load_yaml(text: str) -> Any:
    """Parse YAML with the PyYAML that Debian's docker-compose itself runs on.

    PyYAML is not a dependency of the project; docker-compose (Python, `#!/usr/bin/python3`)
    cannot work without python3-yaml, and these tests need docker-compose anyway.
    """
    compose = Path(require_tool("docker-compose", "docker-compose"))
    first_line = compose.read_bytes()[:200].split(b"\n", 1)[0]
    if not first_line.startswith(b"#!"):
        pytest.fail(f"{compose} is not Debian's Python docker-compose (no #! line): `apt-get install docker-compose`")
    interpreter = shlex.split(first_line[2:].decode())
    code = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout, default=str)"
    done = subprocess.run([*interpreter, "-c", code], input=text, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"YAML did not parse:\n{done.stderr}"
    return json.loads(done.stdout)


def compose_config() -> dict[str, Any]:
    """docker-compose.yml as docker-compose resolves it: validated, interpolated, normalised.

    The environment is emptied first so only the file's own defaults are interpolated.
    """
    exe = require_tool("docker-compose", "docker-compose")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run(
        [exe, "-f", str(COMPOSE), "config"], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )
    assert done.returncode == 0, f"docker-compose config rejected {COMPOSE.name}:\n{done.stderr}"
    return load_yaml(done.stdout)


def compose_literal(value: str) -> str:
    """`config` prints a literal `$` as `$$`, as it is written in the file; the container sees one `$`."""
    return value.replace("$$", "$")


def duration_s(text: str) -> float:
    """A Go-style duration as compose and Docker write them: 45s, 1m, 1m30s, 1h."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# -- Dockerfile -------------------------------------------------------------------------------
@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name!r} has {len(found)} {keyword} instructions, expected one"
        return found[0]

    def args(self) -> dict[str, str]:
        """The stage's ARG defaults (`ARG NAME=default`), as a build without --build-arg sees them."""
        found = {}
        for args in self.all("ARG"):
            name, _, default = args.partition("=")
            found[name.strip()] = default.strip()
        return found

    def env(self) -> dict[str, str]:
        """ENV key=value pairs, in order (values kept literal: `$PATH` stays `$PATH`)."""
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                assert sep, f"use the ENV key=value form: {args!r}"
                env[key] = value
        return env


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped."""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}  # ARGs before the first FROM, usable in FROM lines
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not logical):
            continue
        if line.endswith("\\"):
            logical += line[:-1].strip() + " "
            continue
        logical += line
        keyword, _, args = logical.partition(" ")
        keyword, args, logical = keyword.upper(), args.strip(), ""
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            for name, default in global_args.items():
                args = args.replace("${" + name + "}", default)
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """An instruction's JSON (exec) form; fails on the shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        value = None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not in exec form: {args!r}"
    return value


def healthcheck_command(args: str) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK's options and the argv Docker runs: the shell form through /bin/sh -c."""
    options: dict[str, str] = {}
    words = args.split(" ")
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        options[key] = value
    rest = " ".join(words).strip()
    assert rest.upper().startswith("CMD "), f"HEALTHCHECK without CMD: {args!r}"
    command = rest[4:].strip()
    return options, exec_form(command) if command.startswith("[") else ["/bin/sh", "-c", command]


def compose_healthcheck_command(test: list[str]) -> list[str]:
    """The argv of a compose healthcheck `test`: CMD runs as is, CMD-SHELL through /bin/sh -c."""
    kind, *rest = (compose_literal(word) for word in test)
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(rest)]
    assert kind == "CMD", f"unexpected healthcheck test {test!r}"
    return rest


# -- build context and COPY -------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as an anchored regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) pairs; a `!` pattern re-includes, the last match wins."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((not negate, _pattern_regex(pattern)))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: a pattern excludes a path when it matches the path or one of its parents."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for excludes, regex in rules:
        if any(regex.match(p) for p in prefixes):
            result = excludes
    return result


def build_context(dest: Path) -> list[str]:
    """Copy what `docker build .` would send to the daemon into `dest`; returns the relative paths."""
    rules = dockerignore_rules()
    prune = not any(not excludes for excludes, _ in rules)  # without `!` rules, an ignored folder is gone whole
    sent = []
    for folder, dirs, files in os.walk(ROOT):
        rel_folder = os.path.relpath(folder, ROOT)
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        if prune:
            dirs[:] = [d for d in dirs if not ignored(rel_folder + d, rules)]
        for name in files:
            rel = rel_folder + name
            if not ignored(rel, rules):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, target)
                sent.append(rel)
    return sorted(sent)


def replay_copies(stage: Stage, context: Path, root: Path) -> Path:
    """Apply a stage's WORKDIR and COPY (from the context, not --from) under `root`; returns the last WORKDIR.

    `${NAME}` in a COPY is the stage's ARG default, as in a build without --build-arg.
    """
    workdir = "/"
    defaults = stage.args()
    for keyword, args in stage.instructions:
        for name, default in defaults.items():
            args = args.replace("${" + name + "}", default)
        if keyword == "WORKDIR":
            workdir = os.path.join(workdir, args)
            (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif keyword in ("COPY", "ADD"):
            words = exec_form(args) if args.startswith("[") else shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue
            *sources, target = [w for w in words if not w.startswith("--")]
            dest = root / os.path.join(workdir, target).lstrip("/")
            for source in sources:
                matches = (
                    sorted(context.glob(source.rstrip("/")))
                    if any(c in source for c in "*?[")
                    else [context / source.rstrip("/")]
                )
                assert matches and all(m.exists() for m in matches), (
                    f"{keyword} {args}: {source} is not in the build context (see .dockerignore)"
                )
                for match in matches:
                    if match.is_dir():
                        shutil.copytree(match, dest, dirs_exist_ok=True)
                    else:
                        into = dest / match.name if target.endswith("/") or len(sources) > 1 else dest
                        into.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(match, into)
    return root / workdir.lstrip("/")


# -- queries ----------------------------------------------------------------------------------
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def without_comparison(expr: str) -> str:
    """The left side of an expression's last top-level comparison (`up == 0` → `up`).

    An alert expression like `ratio > 0.05` returns nothing while the alert is quiet; its left
    side returns the measured value whenever the series behind it exist, so that is what can
    be checked to return data.
    """
    depth, quote, cut, i = 0, "", -1, 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            for op in _COMPARISONS:
                if expr.startswith(op, i) and not expr.startswith("=~", i) and not expr.startswith("!~", i):
                    cut = i
                    i += len(op) - 1
                    break
        i += 1
    return expr[:cut].strip() if cut >= 0 else expr.strip()


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query target of every panel."""
    return [
        (panel["title"], target["expr"]) for panel in dashboard_panels(dashboard) for target in panel.get("targets", [])
    ]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, PromQL) of the template variables: `label_values(SELECTOR, label)` → SELECTOR."""
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query, re.S)
        found.append((variable["name"], match.group(1) if match else query))
    return found


def grafana_to_promql(expr: str, dashboard: dict[str, Any], rate_interval: str) -> str:
    """Replace Grafana's variables the way it would on a dashboard left at its defaults ("All")."""
    for variable in dashboard.get("templating", {}).get("list", []):
        assert variable.get("includeAll") and variable.get("allValue"), (
            f"variable ${variable['name']} needs includeAll with an allValue"
        )
        for spelling in (f"${{{variable['name']}}}", f"${variable['name']}"):
            expr = expr.replace(spelling, variable["allValue"])
    expr = expr.replace("$__rate_interval", rate_interval).replace("${__rate_interval}", rate_interval)
    assert "$" not in expr, f"a Grafana variable the tests do not know: {expr}"
    return expr
