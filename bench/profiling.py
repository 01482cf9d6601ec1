"""Where the server's time goes: py-spy against the running server, summarised from collapsed stacks.

Issue 4 asks for the hot path to be measured with a profiler and reported before and after
each change. py-spy samples the live server from outside (no code change, no restart), so
the profile is of the real process under the benchmark's load; the multi-process server is
profiled one process at a time (the engine, a frontend), each into a file of its own. `record` writes py-spy's
raw collapsed stacks; `summarize` turns them into the figures the team compares: share of
samples by package (grpc/asyncio, protobuf, our service, scheduler, engine/torch, ...), by
thread, and the top functions by self and inclusive time.

Caveat, written into every summary: without --native, time inside C extensions (upb
protobuf, grpc's Cython core, torch kernels) is charged to the Python line that called them;
`Handle._run (asyncio/events.py)` as a leaf is mostly grpc's Cython callbacks.

    .venv/bin/python bench/profiling.py bench/out/profile-before.collapsed      # print a summary
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Leaf frames that mean "blocked, waiting for work" rather than computing.
WAITS = re.compile(
    r"^(epoll_wait|poll|select|__poll|EpollSelector\.select|_PollLikeSelector\.select|Poller\.poll|Condition\.wait|"
    r"Event\.wait|"
    r"pthread_cond_(timed)?wait|sem_(timed)?wait|futex_wait|__futex_abstimed_wait\w*)\b"
)
# First match wins, tried from the leaf frame towards the root.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("protobuf", ("google/protobuf", "_message.abi3", "upb_", "PyUpb")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("scheduler", ("server/scheduler.py",)),
    (
        "engine/torch",
        (
            "server/engine.py",
            "server/sessions.py",
            "server/sampling.py",
            "models/",
            "torch/",
            "libtorch",
            "mkl_",
            "numpy/",
        ),
    ),
    # The hop between a frontend and the engine process: ZeroMQ sockets, msgpack (de)coding of the
    # messages, the engine's loop around them and the frontend's link to it.
    (
        "IPC (zmq, msgpack, engine loop)",
        ("server/remote.py", "server/wire.py", "server/engine_loop.py", "zmq/", "msgspec"),
    ),
    # Every other module of the server: service, interceptors, validation, jobs.
    ("our service", ("server/", "seqpredict/")),
    ("grpc/asyncio", ("grpc/", "cygrpc", "libgrpc", "asyncio/", "_asynciomodule", "selectors.py")),
]
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def pyspy_binary() -> str | None:
    """py-spy from this venv (a dev dependency), else from PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def record(pid: int, duration: float, out: Path, rate: int = 200, native: bool = False) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `duration` seconds into `out` (raw collapsed stacks); returns the process.

    Non-native sampling does not pause the server (--nonblocking), so it barely moves the
    figures; --native pauses it for every sample and roughly halves throughput.
    """
    binary = pyspy_binary()
    if binary is None:
        raise FileNotFoundError("py-spy not found: pip install -e '.[dev]'")
    argv = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(int(duration), 1)),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--threads",
        "--output",
        str(out),
    ]
    argv.append("--native" if native else "--nonblocking")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _split(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    return (match["func"], match["file"]) if match else (frame.strip(), "")


def categorize(frames: list[str], thread: str = "") -> str:
    """The package a sample's time belongs to: waits by the leaf, then the nearest known frame."""
    for frame in reversed(frames):  # native frames under the innermost Python frame, and that frame
        func, file = _split(frame)
        if WAITS.match(func):
            return "waiting (idle)"
        if file.endswith(".py") or file.startswith("<"):
            break
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    # grpc's poller thread runs Cython only: invisible frames below threading.Thread.run.
    return "grpc/asyncio" if "_poll_wrapper" in thread else "other"


def read_collapsed(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames root→leaf, count) for every line of py-spy's raw output."""
    samples = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        samples.append((thread, frames[1:] if frames[0].startswith("thread") else frames, int(count)))
    return samples


def _table(counter: Counter[str], total: int, top: int) -> list[str]:
    return [f"  {n / total:6.1%}  {n:7d}  {key}" for key, n in counter.most_common(top)]


def summarize(path: Path, top: int = 25, title: str = "") -> str:
    samples = read_collapsed(path)
    total = sum(n for _, _, n in samples)
    if not total:
        return f"{title}\nno samples in {path}\n"
    by_category: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for thread, frames, n in samples:
        if not frames:
            continue
        by_thread[thread] += n
        by_category[categorize(frames, thread)] += n
        func, file = _split(frames[-1])
        self_time[f"{func} ({file})"] += n
        for key in {"{} ({})".format(*_split(f)) for f in frames}:
            inclusive[key] += n
    busy = total - by_category["waiting (idle)"]
    busy_categories = Counter({k: v for k, v in by_category.items() if k != "waiting (idle)"})
    lines = [
        title,
        f"source: {path}",
        f"samples: {total} (thread-samples; {busy} not waiting)",
        "note: without --native, C-extension time (upb protobuf, grpc Cython, torch kernels) is charged to the",
        "      calling Python frame; a leaf 'Handle._run (asyncio/events.py)' is mostly grpc's Cython callbacks.",
        "",
        "By package (share of non-waiting samples, leaf-first attribution):",
        *_table(busy_categories, max(busy, 1), 20),
        f"  (waiting/idle samples excluded: {by_category['waiting (idle)']})",
        "",
        "By thread (all samples):",
        *_table(by_thread, total, 20),
        "",
        f"Top {top} functions by self time (all samples):",
        *_table(self_time, total, top),
        "",
        f"Top {top} functions by inclusive time (all samples):",
        *_table(inclusive, total, top),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("collapsed", type=Path, help="py-spy raw output (record --format raw)")
    p.add_argument("--top", type=int, default=25, help="functions to list (default: %(default)s)")
    args = p.parse_args(argv)
    sys.stdout.write(summarize(args.collapsed, args.top, title=f"profile {args.collapsed.name}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
