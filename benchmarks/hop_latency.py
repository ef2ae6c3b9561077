"""One hop through a local Kafka broker: how long a record takes from ``send`` to a reader, by
producer linger.

A worker's event crosses the broker three times (input, internal topic, signals) and each hop
pays the producer's linger and the consumer's wait for its next fetch. This measures one hop on
its own, with nothing else running: a producer sends one small record every ``1/rate`` s, a
consumer on the same event loop reads them, and the latency is the reader's wall clock minus
the value (the wall clock just before ``send``).

    python -m benchmarks.hop_latency                       # linger 0 and 5 ms
    python -m benchmarks.hop_latency --rate 100 --records 1000 --json out/hop.json

Prints a JSON list, one row per setting: p50, p90, p99 and max in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import print_json
from benchmarks.harness.stats import percentile
from stream.broker import create_plain_topics


async def one_setting(bootstrap: str, topic: str, linger_ms: int, rate: float, records: int) -> dict:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="latest", group_id=None)
    await producer.start()
    await consumer.start()
    latencies: list[float] = []
    try:
        await consumer.getmany(timeout_ms=500)  # assigned, positioned at the end

        async def read() -> None:
            while len(latencies) < records:
                got = await consumer.getmany(timeout_ms=100)
                now = time.time() * 1000
                latencies.extend(now - float(m.value) for msgs in got.values() for m in msgs)

        reader = asyncio.create_task(read())
        for _ in range(records):
            await producer.send(topic, value=str(time.time() * 1000).encode())
            await asyncio.sleep(1 / rate)
        await asyncio.wait_for(reader, timeout=30)
    finally:
        await consumer.stop()
        await producer.stop()
    return {
        "linger_ms": linger_ms, "rate": rate, "records": len(latencies),
        **{f"p{q}_ms": round(percentile(latencies, q), 2) for q in (50, 90, 99)}, "max_ms": round(max(latencies), 2),
    }  # fmt: skip


def run(lingers: list[int], rate: float, records: int) -> list[dict]:
    from stream.broker import EmbeddedBroker
    from stream.settings import Settings

    rows = []
    with tempfile.TemporaryDirectory() as d, EmbeddedBroker.for_settings(Settings(), Path(d)) as broker:
        for i, linger in enumerate(lingers):
            topic = f"hop-{i}"
            asyncio.run(create_plain_topics(Settings(), broker.bootstrap, [topic], 1))
            rows.append(asyncio.run(one_setting(broker.bootstrap, topic, linger, rate, records)))
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=100.0, help="records per second")
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--linger", default="0,5", help="producer linger values, ms")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rows = run([int(lg) for lg in a.linger.split(",")], a.rate, a.records)
    print_json(rows, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
