"""Why the worker scores its sequence model on the event-loop thread (``INTENTSTREAM_SEQUENCE_SCORING``).

``python -m benchmarks.gil_convoy [--windows 40,300] [--rounds 10]`` times one
``SequenceScorer.score_batch`` call (one torch thread, the default ``SeqConfig``, untrained
weights: the cost depends on the shapes only), median of ``--rounds``:

* ``inline``: on the calling thread;
* ``thread, idle caller``: on a pool thread while the caller waits (what an idle worker does);
* ``thread, busy caller``: on a pool thread while the caller runs pure Python, as the worker's
  event loop does while a batch is scored (ingest, Faust, aiokafka).

Torch releases the GIL inside each op and takes it back after; while another thread runs Python,
taking it back waits for that thread's switch interval (``sys.getswitchinterval()``, 5 ms), once
per op. ``--switch-ms`` sets the interval for the busy case.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.scoring_cost import untrained_scorer, windows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", default="40,300", help="windows per scoring call (comma-separated)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--switch-ms", type=float, default=None, help="sys.setswitchinterval for the busy case")
    a = ap.parse_args(argv)
    scorer = untrained_scorer()
    sizes = [int(x) for x in a.windows.split(",")]
    pool = ThreadPoolExecutor(max_workers=1)
    wins = windows(max(sizes))
    while len(wins) < max(sizes):
        wins = wins + wins
    if a.switch_ms is not None:
        sys.setswitchinterval(a.switch_ms / 1000)

    def timed() -> float:
        t = time.perf_counter()
        scorer.score_batch(batch)
        return time.perf_counter() - t

    print(f"one torch thread; switch interval {1e3 * sys.getswitchinterval():g} ms; median of {a.rounds} calls")
    for n in sizes:
        batch = wins[:n]
        timed()  # warm-up
        inline = [timed() for _ in range(a.rounds)]
        idle = [pool.submit(timed).result() for _ in range(a.rounds)]
        busy = []
        for _ in range(a.rounds):
            fut = pool.submit(timed)
            x = 0
            while not fut.done():  # the caller keeps the GIL busy with Python, as a working loop does
                for i in range(2_000):
                    x += i
            busy.append(fut.result())
        for name, ts in (("inline", inline), ("thread, idle caller", idle), ("thread, busy caller", busy)):
            print(f"  {n:5d} windows  {name:<20}  {1e3 * statistics.median(ts):8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
