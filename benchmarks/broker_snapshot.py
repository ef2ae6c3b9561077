"""The embedded broker's periodic whole-state write, measured: CPU bursts that grow with its data.

``python -m benchmarks.broker_snapshot --rate 2000 --seconds 30`` starts a fresh embedded noida-db,
produces ``--rate`` records/s of ``--bytes`` each (keyed over 5,000 keys) to one 4-partition
topic, samples the broker's CPU every 0.1 s and the size of its state file (``kafka.json`` in its
data directory), and prints, per interval of ``--report-s`` seconds: records held, state file
size, the broker's average cores, and its longest run of busy samples (>= 70% of a core), i.e.
how long one write of the state kept it busy. ``--drop`` deletes the topic halfway and shows the
cost fall back.

noida-db 0.2.3 keeps every record of every topic in memory and writes them all to one JSON file
every few seconds (no segments, no retention: ``retention.ms``/``retention.bytes`` are accepted
and ignored). On a 2-core machine shared with a worker, that write takes a core away for a time
that grows with everything the broker holds. A real Kafka appends to log segments instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

BUSY = 0.7  # a 0.1 s sample counts as busy at 70% of a core or more


async def _run(a: argparse.Namespace) -> list[dict]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from stream.bench import cpu_seconds
    from stream.broker import EmbeddedBroker

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="broker-snapshot-") as tmp, EmbeddedBroker(Path(tmp)) as broker:
        assert broker.process is not None
        pid, data = broker.process.pid, Path(tmp)
        if cpu_seconds(pid) is None:
            raise SystemExit("broker_snapshot needs psutil to read the broker's CPU time")

        def cpu() -> float:
            return cpu_seconds(pid) or 0.0

        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("t", 4, 1)])
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        await producer.start()
        samples: list[float] = []  # cores per 0.1 s
        stop = threading.Event()

        def sample() -> None:
            prev, t_prev = cpu(), time.monotonic()
            while not stop.wait(0.1):
                cur, t = cpu(), time.monotonic()
                samples.append((cur - prev) / (t - t_prev))
                prev, t_prev = cur, t

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        value = b"x" * a.bytes
        t0 = time.monotonic()
        sent = held = 0
        dropped = False
        next_report = a.report_s
        try:
            while next_report <= a.seconds:
                elapsed = time.monotonic() - t0
                due = int(elapsed * a.rate)
                while sent < due:
                    await producer.send("t", value, key=str(sent % 5000).encode())
                    sent += 1
                    held += 1
                if elapsed >= next_report:
                    window = samples[-int(a.report_s * 10) :]
                    longest = run = 0
                    for c in window:
                        run = run + 1 if c >= BUSY else 0
                        longest = max(longest, run)
                    state = data / "kafka.json"
                    rows.append({
                        "t_s": round(elapsed), "records_held": held, "dropped": dropped,
                        "state_mb": state.stat().st_size / 2**20 if state.exists() else 0.0,
                        "broker_cores": sum(window) / max(1, len(window)), "longest_busy_s": longest / 10,
                    })  # fmt: skip
                    next_report += a.report_s
                if a.drop and not dropped and next_report > a.seconds / 2:
                    await producer.flush()
                    await admin.delete_topics(["t"])
                    await asyncio.sleep(1.0)  # the topic is gone before it is made again
                    await admin.create_topics([NewTopic("t", 4, 1)])
                    dropped, held = True, 0
                await asyncio.sleep(0.005)
        finally:
            stop.set()
            sampler.join()
            await producer.stop()
            await admin.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=2000.0, help="records per second")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--bytes", type=int, default=120, help="bytes per record value")
    p.add_argument("--report-s", type=float, default=5.0)
    p.add_argument("--drop", action="store_true", help="delete and re-create the topic halfway")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    a = p.parse_args(argv)
    rows = asyncio.run(_run(a))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    print(f"{'t':>4} {'records held':>12} {'state file':>10} {'broker cores':>12} {'longest busy':>12}")
    for r in rows:
        mark = "  (after the drop)" if r["dropped"] else ""
        print(f"{r['t_s']:>3}s {r['records_held']:>12,} {r['state_mb']:>8.1f}MB {r['broker_cores']:>12.2f}"
              f" {r['longest_busy_s']:>11.1f}s{mark}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
