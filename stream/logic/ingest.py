"""Ingest: raw Kafka bytes -> validated, pseudonymised events, or a dead-letter reason.

Pure functions (no Kafka, no Faust): the ingest agent calls :func:`ingest_one` per message
inside a batch; the importers, the fuzz tests and the evaluation use the same code.

>>> p = Pseudonymizer(b"k" * 32)
>>> ev = ingest_one(b'{"event_id":"1","user_id":"alice","type":"click","ts":1700000000000,"item_id":"i"}', p)
>>> ev.user == p("alice") and ev.user != "alice"
True
>>> ingest_one(b'{"event_id":', p)
Traceback (most recent call last):
...
models.events.InvalidEvent: malformed_json: Expecting value: line 1 column 13 (char 12)
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from functools import lru_cache
from hashlib import sha256

from models.events import Event, InvalidEvent, parse_event

# Reasons are a closed set: they are metric label values and DLQ fields.
REASONS = (
    "oversized", "invalid_utf8", "malformed_json", "not_an_object", "missing_field", "wrong_type",
    "unknown_type", "field_too_long", "out_of_range", "bad_timestamp", "timestamp_too_old",
    "timestamp_in_future", "duplicate_event_id", "late_event", "processing_error", "too_deeply_nested",
)  # fmt: skip


class Pseudonymizer:
    """Keyed hash of raw user ids (HMAC-SHA256, 128 bits, hex).

    Without the key the mapping cannot be recomputed or reversed, so pseudonyms can travel to
    output topics, logs and model artifacts. The key is never logged (``repr`` hides it).
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("pseudonymisation key must be at least 16 bytes")
        self._key = key
        # Users repeat within a batch and across batches; the cache saves ~1 us per event.
        self._cached = lru_cache(maxsize=65_536)(self._compute)

    def _compute(self, raw_id: str) -> str:
        return hmac.new(self._key, raw_id.encode("utf-8"), sha256).hexdigest()[:32]

    def __call__(self, raw_id: str) -> str:
        return self._cached(raw_id)

    def __repr__(self) -> str:
        return "Pseudonymizer(key=***)"


def decode(raw: bytes | None, *, max_bytes: int = 16_384) -> object:
    """Bytes -> JSON value, with the failure modes named."""
    if raw is None:
        raise InvalidEvent("missing_field", "message has no value")
    if len(raw) > max_bytes:
        raise InvalidEvent("oversized", f"{len(raw)} bytes > {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent("invalid_utf8", f"byte {exc.start}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidEvent("malformed_json", str(exc)[:120]) from None
    except RecursionError:  # the decoder recurses per nesting level
        raise InvalidEvent("too_deeply_nested", "JSON nested deeper than the decoder's recursion limit") from None


def ingest_one(
    raw: bytes | None,
    pseudonymize: Pseudonymizer,
    *,
    max_bytes: int = 16_384,
    now_ms: int | None = None,
    max_future_ms: int = 3_600_000,
) -> Event:
    """Validate one raw message and replace the raw user id by its pseudonym."""
    return parse_event(decode(raw, max_bytes=max_bytes), now_ms=now_ms, max_future_ms=max_future_ms, user_map=pseudonymize)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What goes to the dead-letter topic: enough to find, understand and replay the message."""

    reason: str
    detail: str
    original: bytes | None
    topic: str
    partition: int
    offset: int

    def to_dict(self, max_original: int | None = None) -> dict[str, object]:
        """The record's JSON object; the original bytes cut to ``max_original`` (a dead letter
        must stay under the producer's record limit whatever the size of what it reports).

        >>> d = DeadLetter("oversized", "2000000 bytes > 16384", b"x" * 2_000_000, "shop.events", 0, 7).to_dict(10)
        >>> d["original_b64"], d["original_bytes"], d["original_truncated"]
        ('eHh4eHh4eHh4eA==', 2000000, True)
        """
        import base64

        original = self.original
        truncated = original is not None and max_original is not None and len(original) > max_original
        return {
            "reason": self.reason,
            "detail": self.detail[:500],
            "original_b64": base64.b64encode(original[:max_original] if truncated else original).decode()  # type: ignore[index]
            if original is not None else None,
            "original_bytes": len(original) if original is not None else None,
            "original_truncated": truncated,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }  # fmt: skip
