"""CPU time and memory of a whole process tree from /proc: neither server under test is one process.

Our server is a supervisor with an engine process and N frontend processes (with
`--frontends 0`, one process); TorchServe is a Java frontend plus the Python workers it
starts, and short-lived helpers (the system-metrics collector, once a minute). Children that
already exited count through their parent's cutime/cstime once reaped. So the server CPU of
a run is the difference of tree_cpu_seconds() taken before and after it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat this module needs, in clock ticks."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int  # children that exited and were waited for
    cstime: int

    @property
    def ticks(self) -> int:
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> Stat:
    """Parse one /proc/PID/stat line; the command name in parentheses may hold spaces and ')'."""
    pid = int(text.split(" ", 1)[0])
    fields = text.rpartition(")")[2].split()
    # After the name: fields[0] is the state (field 3 of proc(5)), ppid field 4, utime 14 .. cstime 17.
    return Stat(pid, int(fields[1]), int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14]))


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_stat(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def all_stats() -> list[Stat]:
    stats = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := read_stat(int(name))) is not None:
            stats.append(stat)
    return stats


def descendants(root: int, stats: list[Stat] | None = None) -> list[Stat]:
    """The root's stat and every live descendant's, root first."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[Stat]] = {}
    by_pid = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat)
        by_pid[stat.pid] = stat
    if root not in by_pid:
        return []
    tree, todo = [], [by_pid[root]]
    while todo:
        stat = todo.pop()
        tree.append(stat)
        todo.extend(children.get(stat.pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of the root and its live descendants, plus what their reaped children used."""
    return sum(s.ticks for s in descendants(root)) / CLOCK_TICKS


def tree_rss_bytes(root: int) -> int:
    total = 0
    for stat in descendants(root):
        try:
            with open(f"/proc/{stat.pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total
