"""Importers: public e-commerce logs -> raw events of the ``shop.events`` input schema.

Each importer turns one row of a public dataset (the formats of ``../shared/data``) into a raw
event dict (``event_id, user_id, type, ts, session_id, item_id, category_id, price, quantity,
query``), exactly what a producer would put on Kafka. So the same dicts can be replayed into the
stream, or validated with :func:`models.events.parse_event` for offline training and evaluation:
one schema, one validator, whatever the source.

Design choices that hold for every format:

* **Never crash on a bad row.** A malformed row is skipped and counted in :class:`ImportStats`
  with a short reason and its line number; ``strict=True`` turns the first one into an
  :class:`ImportRowError` naming the file and the line. Rows that are well-formed but have no
  place in the schema (Taobao ``fav``) are *dropped* and counted under their own reason.
* **A file of the wrong format fails loudly.** If none of the first rows of a file parses (a
  CDNOW file fed to the Taobao importer), or a header does not match, :class:`WrongFormat` is
  raised instead of silently skipping every row.
* **Deterministic event ids**, ``f"{fmt}:{source}:{line_no}"`` where ``source`` is the file
  name without ``.gz`` (override with ``source=...``), so re-importing the same file produces
  the same ids and the stream's dedupe drops the repeats, while two files of one format do not
  collide.
* **gzip is transparent**: a path ending in ``.gz`` is decompressed on the fly.
* Line numbers are 1-based physical lines of the (decompressed) file, the header included.

Format mappings (see :data:`FORMATS`):

``taobao``
    ``user,item,category,behavior,unix_s`` (no header). ``pv`` -> click, ``cart`` ->
    add_to_cart, ``buy`` -> purchase; ``fav`` has no event type and is dropped (reason
    ``dropped_fav``); any other behaviour is skipped (``unknown_behavior``). The data has no
    sessions, so ``session_id`` is absent.
``cdnow``
    Whitespace-separated with header ``customer_id date number_of_cds dollar_value``. One
    purchase per row at the day's 00:00 UTC plus one second per earlier row of the same
    customer on the same day, so a customer's same-day rows stay distinct and in file order.
    ``quantity`` = CDs; ``price`` = the transaction's dollar value (an order total, not a unit
    price; 0.0 is kept). Rows with 0 CDs are skipped (``zero_quantity``): the schema's quantity
    is at least 1, and a purchase of nothing carries no signal. ``customer_id`` keeps its zero
    padding. No item or category.
``yoochoose``
    TSV with header ``SessionId ItemId Time`` (float unix seconds, rounded to ms). Clicks. The
    data has no user ids, so ``user_id = "s" + SessionId`` (one "user" per session) and
    ``session_id = SessionId``.
``diginetica-purchases`` / ``diginetica-views``
    ``sessionId;userId;timeframe;eventdate;ordernumber;itemId`` (purchases) and
    ``session_id;user_id;item_id;timeframe;eventdate`` (views -> click). ``ts`` = eventdate
    00:00 UTC + timeframe ms. Timeframe counts from the session's first event, whose time of
    day is unknown, so order within a session is exact but absolute times are early by that
    unknown start (and some purchase timeframes span days). ``user_id`` = the user id or, when
    ``NA``, ``"s" + sessionId``. ``categories=`` the ``itemId;categoryId`` file (or a dict)
    fills ``category_id``. The order number has no field in the schema and is not kept.
``jsonl``
    One JSON object per line, already in the input schema, passed through; a missing
    ``event_id`` is filled with the deterministic id.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "ub.csv"
>>> _ = p.write_text("1,10,7,pv,1511544070\\n1,10,7,fav,1511544080\\n1,10,7,buy,1511544090\\n")
>>> stats = ImportStats()
>>> [(e["type"], e["ts"]) for e in read_dataset(p, "taobao", stats=stats)]
[('click', 1511544070000), ('purchase', 1511544090000)]
>>> stats.rows_read, stats.events, dict(stats.skipped)
(3, 2, {'dropped_fav': 1})
>>> events, stats = load_events(p, "taobao")
>>> events[0].event_id, events[0].user, events[0].category_id
('taobao:ub.csv:1', '1', '7')
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TextIO

from models.events import MIN_TS_MS, Event, InvalidEvent, parse_event, parse_ts

FORMATS: tuple[str, ...] = (
    "taobao",
    "cdnow",
    "yoochoose",
    "diginetica-purchases",
    "diginetica-views",
    "jsonl",
)

TAOBAO_BEHAVIORS: dict[str, str | None] = {
    "pv": "click",
    "cart": "add_to_cart",
    "buy": "purchase",
    "fav": None,  # no event type for "favourite": dropped and counted, not an error
}

# parse_event rejects timestamps before 2000-01-01 because on a live stream they are unit
# mistakes. Historical logs (CDNOW is 1997-98) are genuinely older, so offline loading accepts
# anything from 1990 on: epoch seconds sent as milliseconds land in January 1970 and are still
# rejected.
HISTORICAL_MIN_TS_MS = 631_152_000_000  # 1990-01-01T00:00:00Z

# How many leading data rows must all fail before a file is declared the wrong format.
FORMAT_PROBE_ROWS = 50


class ImportRowError(ValueError):
    """A row that cannot be imported, raised only with ``strict=True``.

    The message names the file and line: ``path:line: reason: detail``.
    """

    def __init__(self, path: Path | str, line_no: int, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.line_no = line_no
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}:{line_no}: {reason}" + (f": {detail}" if detail else ""))


class WrongFormat(ValueError):
    """The file does not look like the requested format at all (bad header or no row parses)."""


class _RowError(Exception):
    """Internal: one malformed row, turned into a skip (or an ImportRowError when strict)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(reason)


class _Drop(Exception):
    """Internal: a well-formed row that the schema has no place for (e.g. Taobao ``fav``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclasses.dataclass
class ImportStats:
    """What an import did: rows read, events produced, skips by reason, the first errors.

    ``rows_read`` counts data rows (not the header, not blank lines). ``skipped`` counts every
    row that produced no event, by reason (``dropped_*`` reasons are deliberate drops, the rest
    are malformed or invalid rows). ``errors`` keeps the first ``max_errors`` malformed rows as
    ``(line_no, reason, detail)`` so a report can point at them.

    >>> s = ImportStats()
    >>> s.skip(7, "bad_timestamp", "'x' is not a number")
    >>> s.skipped["bad_timestamp"], s.errors
    (1, [(7, 'bad_timestamp', "'x' is not a number")])
    """

    rows_read: int = 0
    events: int = 0
    skipped: Counter[str] = dataclasses.field(default_factory=Counter)
    by_type: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    max_errors: int = 10

    def skip(self, line_no: int, reason: str, detail: str = "") -> None:
        """Count one skipped row; remember it if it is an error among the first few."""
        self.skipped[reason] += 1
        if not reason.startswith("dropped_") and len(self.errors) < self.max_errors:
            self.errors.append((line_no, reason, detail))

    def produced(self, event_type: str) -> None:
        """Count one event handed out."""
        self.events += 1
        self.by_type[event_type] += 1

    def reject(self, line_no: int, event_type: str, reason: str, detail: str = "") -> None:
        """Take back an event that failed validation after it was produced, and skip its row."""
        self.events -= 1
        self.by_type[event_type] -= 1
        if self.by_type[event_type] <= 0:
            del self.by_type[event_type]
        self.skip(line_no, reason, detail)

    @property
    def malformed(self) -> int:
        """Rows skipped for a reason other than a deliberate drop."""
        return sum(n for r, n in self.skipped.items() if not r.startswith("dropped_"))

    def summary(self) -> str:
        """One line for logs: ``rows=.. events=.. skipped={reason: n}``."""
        return f"rows={self.rows_read} events={self.events} skipped={dict(self.skipped)}"


# ---------------------------------------------------------------------------------------------
# Small parsing helpers: each raises _RowError with a stable reason.


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _RowError("bad_number", f"{name} {text[:40]!r} is not an integer") from None


def _float(text: str, name: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise _RowError("bad_number", f"{name} {text[:40]!r} is not a number") from None
    if not math.isfinite(v):
        raise _RowError("bad_number", f"{name} {text[:40]!r} is not finite")
    return v


def _day_ms(text: str, fmt: str, name: str) -> int:
    """Epoch ms of 00:00 UTC on a calendar date written as ``YYYYMMDD`` or ``YYYY-MM-DD``."""
    try:
        d = datetime.strptime(text, fmt).replace(tzinfo=UTC)
    except ValueError:
        raise _RowError("bad_date", f"{name} {text[:40]!r} is not a {fmt} date") from None
    return int(d.timestamp()) * 1000


def _id(text: str, name: str) -> str:
    text = text.strip()
    if not text:
        raise _RowError("missing_field", name)
    return text


def _fields(line: str, sep: str | None, n: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) != n:
        raise _RowError("wrong_field_count", f"expected {n} fields, got {len(parts)}")
    return [p.strip() for p in parts]


# ---------------------------------------------------------------------------------------------
# Per-format row parsers. Each is built per file (so it can hold per-file state) and maps
# (line, line_no) -> raw event dict without event_id; read_dataset adds the id.

RowParser = Callable[[str, int], dict[str, Any]]


def _taobao(options: dict[str, Any]) -> tuple[tuple[str, ...] | None, RowParser]:
    def row(line: str, line_no: int) -> dict[str, Any]:
        user, item, cat, behavior, ts = _fields(line, ",", 5)
        if behavior not in TAOBAO_BEHAVIORS:
            raise _RowError("unknown_behavior", f"{behavior[:40]!r} is not pv, cart, fav or buy")
        etype = TAOBAO_BEHAVIORS[behavior]
        seconds = _int(ts, "timestamp")
        if etype is None:
            raise _Drop(f"dropped_{behavior}")
        return {
            "user_id": _id(user, "user_id"),
            "type": etype,
            "ts": seconds * 1000,
            "item_id": _id(item, "item_id"),
            "category_id": _id(cat, "category_id"),
        }

    return None, row


def _cdnow(options: dict[str, Any]) -> tuple[tuple[str, ...] | None, RowParser]:
    # Rows already seen per (customer, date): the k-th one gets +k seconds so that a customer's
    # same-day transactions have distinct, file-ordered timestamps.
    seen: Counter[tuple[str, str]] = Counter()

    def row(line: str, line_no: int) -> dict[str, Any]:
        customer, day, cds, dollars = _fields(line, None, 4)
        customer = _id(customer, "customer_id")
        base = _day_ms(day, "%Y%m%d", "date")
        quantity = _int(cds, "number_of_cds")
        price = _float(dollars, "dollar_value")
        if quantity == 0:
            raise _RowError("zero_quantity", "number_of_cds is 0")
        if quantity < 0 or price < 0:
            raise _RowError("out_of_range", "number_of_cds and dollar_value must not be negative")
        k = seen[(customer, day)]
        seen[(customer, day)] = k + 1
        return {
            "user_id": customer,
            "type": "purchase",
            "ts": base + min(k, 86_399) * 1000,
            "quantity": quantity,
            "price": price,
        }

    return ("customer_id", "date", "number_of_cds", "dollar_value"), row


def _yoochoose(options: dict[str, Any]) -> tuple[tuple[str, ...] | None, RowParser]:
    def row(line: str, line_no: int) -> dict[str, Any]:
        session, item, t = _fields(line, "\t", 3)
        session = _id(session, "SessionId")
        return {
            "user_id": "s" + session,
            "type": "click",
            # round, not int: 1396437466.94 * 1000 is 1396437466939.9998 in binary floating point
            "ts": round(_float(t, "Time") * 1000),
            "session_id": session,
            "item_id": _id(item, "ItemId"),
        }

    return ("SessionId", "ItemId", "Time"), row


def load_categories(path: Path | str) -> dict[str, str]:
    """Read a Diginetica ``itemId;categoryId`` file (header, optional .gz) into a dict.

    Rows that do not have two non-empty fields are ignored: the map only fills an optional field.
    """
    out: dict[str, str] = {}
    with _open(Path(path)) as f:
        header = f.readline()
        if [h.strip() for h in header.split(";")] != ["itemId", "categoryId"]:
            raise WrongFormat(f"{path}: expected header 'itemId;categoryId', got {header.strip()[:80]!r}")
        for line in f:
            parts = line.strip().split(";")
            if len(parts) == 2 and parts[0] and parts[1]:
                out[parts[0]] = parts[1]
    return out


def _diginetica_user(user: str, session: str) -> str:
    return "s" + session if user in ("", "NA") else user


def _diginetica(kind: str) -> Callable[[dict[str, Any]], tuple[tuple[str, ...] | None, RowParser]]:
    def build(options: dict[str, Any]) -> tuple[tuple[str, ...] | None, RowParser]:
        cats_opt = options.get("categories")
        if isinstance(cats_opt, dict):
            cats: dict[str, str] = cats_opt
        else:
            cats = load_categories(cats_opt) if cats_opt is not None else {}

        if kind == "purchases":
            header: tuple[str, ...] = (
                "sessionId",
                "userId",
                "timeframe",
                "eventdate",
                "ordernumber",
                "itemId",
            )
        else:
            header = ("session_id", "user_id", "item_id", "timeframe", "eventdate")

        def row(line: str, line_no: int) -> dict[str, Any]:
            if kind == "purchases":
                session, user, tf, day, _order, item = _fields(line, ";", 6)
            else:
                session, user, item, tf, day = _fields(line, ";", 5)
            session = _id(session, "session id")
            item = _id(item, "item id")
            offset = _int(tf, "timeframe")
            if offset < 0:
                raise _RowError("out_of_range", "timeframe is negative")
            ev: dict[str, Any] = {
                "user_id": _diginetica_user(user, session),
                "type": "purchase" if kind == "purchases" else "click",
                "ts": _day_ms(day, "%Y-%m-%d", "eventdate") + offset,
                "session_id": session,
                "item_id": item,
            }
            if item in cats:
                ev["category_id"] = cats[item]
            return ev

        return header, row

    return build


def _jsonl(options: dict[str, Any]) -> tuple[tuple[str, ...] | None, RowParser]:
    def row(line: str, line_no: int) -> dict[str, Any]:
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise _RowError("bad_json", str(e)[:80]) from None
        if not isinstance(obj, dict):
            raise _RowError("not_an_object", f"got {type(obj).__name__}")
        return obj

    return None, row


_BUILDERS: dict[str, Callable[[dict[str, Any]], tuple[tuple[str, ...] | None, RowParser]]] = {
    "taobao": _taobao,
    "cdnow": _cdnow,
    "yoochoose": _yoochoose,
    "diginetica-purchases": _diginetica("purchases"),
    "diginetica-views": _diginetica("views"),
    "jsonl": _jsonl,
}
_OPTIONS: dict[str, frozenset[str]] = {
    "diginetica-purchases": frozenset({"categories"}),
    "diginetica-views": frozenset({"categories"}),
}
_COMMON_OPTIONS = frozenset({"strict", "source"})
_HEADER_SEP: dict[str, str | None] = {
    "cdnow": None,
    "yoochoose": "\t",
    "diginetica-purchases": ";",
    "diginetica-views": ";",
}


def _open(path: Path) -> TextIO:
    # errors="replace": undecodable bytes become a malformed row downstream instead of a crash
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", errors="replace")
    return open(path, encoding="utf-8-sig", errors="replace")  # noqa: SIM115


def default_source(path: Path | str) -> str:
    """The file name without a ``.gz`` suffix: the middle part of generated event ids.

    >>> default_source("/data/UserBehavior.csv.gz")
    'UserBehavior.csv'
    """
    name = Path(path).name
    return name[:-3] if name.endswith(".gz") else name


def read_dataset(
    path: Path | str, fmt: str, *, stats: ImportStats | None = None, **options: Any
) -> Iterator[dict[str, Any]]:
    """Yield the raw input-schema event dicts of one file, in file order.

    ``fmt`` is one of :data:`FORMATS`. Options: ``strict`` (raise :class:`ImportRowError` on the
    first malformed row instead of skipping it), ``source`` (middle part of event ids; default
    the file name without ``.gz``), and for the Diginetica formats ``categories`` (path to the
    ``itemId;categoryId`` file, or a ready dict). Pass an :class:`ImportStats` to see what was
    read and skipped. The dicts are not validated here; :func:`load_events` does that.

    An unknown format or option raises at once; the file is read lazily. Iterating raises
    :class:`WrongFormat` when the header does not match, or when none of the first
    :data:`FORMAT_PROBE_ROWS` data rows parses.
    """
    rows = _rows(Path(path), fmt, stats if stats is not None else ImportStats(), options)
    return (ev for _, ev in rows)


def _rows(
    path: Path, fmt: str, stats: ImportStats, options: dict[str, Any]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Check format and options now, then return the lazy ``(line_no, raw event)`` iterator."""
    if fmt not in _BUILDERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    unknown = set(options) - _COMMON_OPTIONS - _OPTIONS.get(fmt, frozenset())
    if unknown:
        raise TypeError(f"format {fmt!r} does not take option(s) {', '.join(sorted(unknown))}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    header, parse_row = _BUILDERS[fmt](options)
    return _scan(
        path,
        fmt,
        stats,
        header,
        parse_row,
        bool(options.get("strict", False)),
        str(options.get("source") or default_source(path)),
    )


def _scan(
    path: Path,
    fmt: str,
    stats: ImportStats,
    header: tuple[str, ...] | None,
    parse_row: RowParser,
    strict: bool,
    source: str,
) -> Iterator[tuple[int, dict[str, Any]]]:
    good = 0  # rows that produced an event or a deliberate drop
    with _open(path) as f:
        line_no = 0
        if header is not None:
            first = f.readline()
            line_no = 1
            got = tuple(h.strip() for h in first.strip().split(_HEADER_SEP[fmt]))
            if got != header:
                raise WrongFormat(
                    f"{path}: not a {fmt} file: expected header {' '.join(header)!r}, "
                    f"got {first.strip()[:80]!r}"
                )
        for line in f:
            line_no += 1
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            stats.rows_read += 1
            try:
                ev = parse_row(line, line_no)
            except _Drop as d:
                good += 1
                stats.skip(line_no, d.reason)
                continue
            except _RowError as e:
                if strict:
                    raise ImportRowError(path, line_no, e.reason, e.detail) from None
                stats.skip(line_no, e.reason, e.detail)
                if good == 0 and stats.rows_read >= FORMAT_PROBE_ROWS:
                    raise _wrong_format(path, fmt, stats) from None
                continue
            good += 1
            ev.setdefault("event_id", f"{fmt}:{source}:{line_no}")
            stats.produced(str(ev.get("type")))
            yield line_no, ev
    if good == 0 and stats.rows_read > 0:
        raise _wrong_format(path, fmt, stats)


def _wrong_format(path: Path, fmt: str, stats: ImportStats) -> WrongFormat:
    first = " (line {}: {}: {})".format(*stats.errors[0]) if stats.errors else ""
    return WrongFormat(
        f"{path}: does not look like {fmt!r}: none of the first {stats.rows_read} rows parsed{first}"
    )


def load_events(
    path: Path | str, fmt: str, *, min_ts_ms: int = HISTORICAL_MIN_TS_MS, **options: Any
) -> tuple[list[Event], ImportStats]:
    """Read, validate with :func:`~models.events.parse_event`, and sort one file.

    Returns the events sorted by ``(ts, file order)`` (a stable sort on ``ts``) and the
    :class:`ImportStats`. Rows that parse but fail validation are skipped under
    ``invalid_<reason>`` with their line number (or raise :class:`ImportRowError` with
    ``strict=True``). Options are those of :func:`read_dataset`.

    Validation is parse_event's, except for its 2000-01-01 floor on timestamps, which is meant
    for live traffic: here timestamps from ``min_ts_ms`` (default 1990-01-01) on are accepted
    so historical logs such as CDNOW load. The raw dicts of such files would still be refused
    by the live stream; a replay has to shift their time.
    """
    stats = ImportStats()
    strict = bool(options.get("strict", False))
    events: list[Event] = []
    for line_no, raw in _rows(Path(path), fmt, stats, options):
        try:
            events.append(_validate(raw, min_ts_ms))
        except InvalidEvent as e:
            if strict:
                raise ImportRowError(path, line_no, f"invalid_{e.reason}", e.detail) from None
            stats.reject(line_no, str(raw.get("type")), f"invalid_{e.reason}", e.detail)
    events.sort(key=lambda ev: ev.ts)
    return events, stats


def _validate(raw: dict[str, Any], min_ts_ms: int) -> Event:
    """parse_event, with the timestamp floor lowered to ``min_ts_ms`` (see load_events)."""
    try:
        return parse_event(raw)
    except InvalidEvent as e:
        if e.reason != "timestamp_too_old":
            raise
        ts = parse_ts(raw.get("ts"))
        if ts < min_ts_ms:
            raise
        # Validate every other field exactly as the stream would, then restore the real time.
        return parse_event({**raw, "ts": MIN_TS_MS}).replace(ts=ts)


def day_start_ms(d: date) -> int:
    """Epoch ms of 00:00 UTC on ``d``: handy for cut-offs.

    >>> day_start_ms(date(1998, 1, 1))
    883612800000
    """
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1000


__all__ = [
    "FORMATS",
    "FORMAT_PROBE_ROWS",
    "HISTORICAL_MIN_TS_MS",
    "ImportRowError",
    "ImportStats",
    "TAOBAO_BEHAVIORS",
    "WrongFormat",
    "day_start_ms",
    "default_source",
    "load_categories",
    "load_events",
    "read_dataset",
]
