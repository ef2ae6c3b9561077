"""The fuzz corpus: simulated shop events with seeded bad and replayed records among them, each
with the outcome it must have. The pure accounting test (tests/unit/test_fuzz_accounting.py) and
the one on Kafka (tests/integration/test_poison.py) read the same corpus.

Outcomes: ``"good"`` (applied), a dead-letter reason from ``stream.logic.ingest.REASONS``, or
``"late_or_applied"`` (pushed back past the lateness: late, unless it lands inside the user's
lateness window after a silence).
"""

from __future__ import annotations

import json
import random
import zlib
from typing import NamedTuple

from stream.logic.simulator import ShopperSimulator

LONG_ID = "😀" * 128  # 128 characters (the longest id allowed), 512 bytes of UTF-8


class Case(NamedTuple):
    key: bytes | None
    value: bytes | None
    outcome: str


def _dump(e: object) -> bytes:
    return json.dumps(e).encode()


def mutate(rng: random.Random, ev: dict, earlier: list[bytes], now_ms: int) -> tuple[bytes | None, str]:
    """A bad (or replayed) version of ``ev`` and the outcome it must have."""
    kind = rng.randrange(22)
    e = dict(ev)
    if kind == 0:
        return _dump(e)[: rng.randrange(1, 40)], "malformed_json"
    if kind == 1:
        return b"\xc3\x28" + _dump(e), "invalid_utf8"
    if kind == 2:
        e["type"] = rng.choice(["refund", "wishlist", "", "CLICK"])
        return _dump(e), "unknown_type"
    if kind == 3:
        del e[rng.choice(["event_id", "user_id", "ts"])]
        return _dump(e), "missing_field"
    if kind == 4:
        e["ts"] = e["ts"] // 1000  # seconds instead of milliseconds
        return _dump(e), "timestamp_too_old"
    if kind == 5:
        e["ts"] = now_ms + 10 * 86_400_000
        return _dump(e), "timestamp_in_future"
    if kind == 6:
        e["price"] = rng.choice(["free", "9.5", [1], {"v": 2}])
        return _dump(e), "wrong_type"
    if kind == 7:
        e["pad"] = "x" * rng.choice([20_000, 900_000])  # past max_event_bytes; the second near Kafka's 1 MB
        return _dump(e), "oversized"
    if kind == 8:
        return _dump([e]), "not_an_object"
    if kind == 9 and earlier:
        return rng.choice(earlier[-20:]), "duplicate_event_id"  # a producer retry
    if kind == 10:
        e["event_id"] = f"late-{e['event_id']}"
        e["ts"] -= 10 * 60_000  # ten minutes behind the user's stream: past the lateness
        return _dump(e), "late_or_applied"
    if kind == 11:
        e["quantity"] = rng.choice([0, -3, 10**6])
        return _dump(e), "out_of_range"
    if kind == 12:
        depth = rng.choice([2_000, 5_000])
        return (("[" * depth) + ("]" * depth)).encode(), "too_deeply_nested"
    if kind == 13:  # a lone UTF-16 surrogate, spelled with JSON's escape
        field = rng.choice(["user_id", "event_id"]) if len(e["user_id"]) < 128 else "event_id"
        return _dump(e).replace(f'"{field}": "'.encode(), f'"{field}": "\\ud800'.encode(), 1), "invalid_utf8"
    if kind == 14:
        return _dump({**e, "type": "search", "query": "q" * 1_000}), "field_too_long"
    if kind == 15:
        return _dump({**e, "type": "search", "query": "   "}), "missing_field"
    if kind == 16:
        e["ts"] = e["ts"] + 0.5
        return _dump(e), "wrong_type"
    if kind == 17:
        return rng.choice([(None, "missing_field"), (b"", "malformed_json")])  # a tombstone, an empty value
    if kind == 18:
        e["user_id"] = LONG_ID + "x"
        return _dump(e), "field_too_long"
    if kind == 19:
        e["ts"], outcome = rng.choice([(float("nan"), "bad_timestamp"), (True, "wrong_type"), (None, "missing_field"),
                                       ("yesterday", "bad_timestamp")])  # fmt: skip
        return _dump(e), outcome
    if kind == 20:
        e["type"] = 7
        return _dump(e), "wrong_type"
    return _dump({**e, "user_id": {"id": e["user_id"]}}), "wrong_type"


def corpus(seed: int = 7, events: int = 8_000, users: int = 200, now_ms: int = 1_800_000_000_000,
           bad_share: float = 0.3) -> list[Case]:  # fmt: skip
    """Simulated events in order, a bad or replayed record after about ``bad_share`` of them, and
    every 97th user with ids of the longest multi-byte kind."""
    rng = random.Random(seed)
    sim = ShopperSimulator(seed=11, users=users, start_ms=now_ms - 5 * 86_400_000).take(events)
    out: list[Case] = []
    earlier: list[bytes] = []
    for ev in sim:
        if zlib.crc32(ev["user_id"].encode()) % 97 == 0:
            ev = {**ev, "user_id": LONG_ID[:-12] + ev["user_id"][-12:].rjust(12, "0"),
                  "category_id": LONG_ID if ev.get("category_id") else None}  # fmt: skip
            ev = {k: v for k, v in ev.items() if v is not None}
        good = _dump(ev)
        out.append(Case(ev["user_id"].encode(), good, "good"))
        earlier.append(good)
        if rng.random() < bad_share:
            bad, outcome = mutate(rng, ev, earlier, now_ms)
            # A producer's retry goes under the key of the event it repeats (the same partition).
            key = json.loads(bad)["user_id"] if outcome == "duplicate_event_id" else ev["user_id"]
            out.append(Case(key.encode(), bad, outcome))
    return out
