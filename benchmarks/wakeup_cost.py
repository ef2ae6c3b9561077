"""What a sleeping loop costs on this machine: the CPU a process is charged for a thread that
only sleeps and wakes up, per wake-up and in cores.

An idle worker still wakes up often: each consumer's least fetch interval, the take-batch timer,
the producers' linger, Faust's own timers, the hand-off from Faust's consumer thread. On a
virtual machine each wake-up can cost far more than the few microseconds of Python it runs.
This measures that cost with nothing else in the loop:

    python -m benchmarks.wakeup_cost                  # time.sleep and asyncio.sleep, 1 and 10 ms
    python -m benchmarks.wakeup_cost --seconds 10 --json out/wakeup.json

Each row: the sleep kind and interval, wake-ups per second achieved, the process CPU time over
the run (``time.process_time``) in cores, and per wake-up in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from benchmarks import print_json


def _thread_sleeps(interval: float, seconds: float) -> int:
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(interval)
        n += 1
    return n


async def _loop_sleeps(interval: float, seconds: float) -> int:
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(interval)
        n += 1
    return n


def measure(kind: str, interval_ms: float, seconds: float) -> dict:
    interval = interval_ms / 1000
    wall0, cpu0 = time.monotonic(), time.process_time()
    n = _thread_sleeps(interval, seconds) if kind == "time.sleep" else asyncio.run(_loop_sleeps(interval, seconds))
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    return {
        "kind": kind, "interval_ms": interval_ms, "wakeups_per_s": round(n / wall, 1),
        "cores": round(cpu / wall, 4), "cpu_us_per_wakeup": round(1e6 * cpu / n, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="per row")
    ap.add_argument("--intervals", default="1,10", help="sleep intervals, ms")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rows = []
    for kind in ("time.sleep", "asyncio.sleep"):
        for iv in a.intervals.split(","):
            rows.append(measure(kind, float(iv), a.seconds))
            print(json.dumps(rows[-1]), file=sys.stderr)
    print_json(rows, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
