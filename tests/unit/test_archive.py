"""Event archive: Parquet partitioned by UTC hour, atomic parts, time-range reads."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.archive import HOUR_MS, EventArchive, partition_of
from models.events import EVENT_TYPES, Event

T0 = 1_511_658_000_000  # 2017-11-26 01:00:00 UTC


def sample() -> list[Event]:
    return [
        Event("e1", "u1", "click", T0 + 5, session_id="s1", item_id="i1", category_id="c1", price=9.5),
        Event("e2", "u2", "search", T0 + 10, query="red shoes"),
        Event("e3", "u1", "purchase", T0 + HOUR_MS + 1, quantity=2, price=19.0),
        Event("e4", "u3", "add_to_cart", T0 + 25 * HOUR_MS, item_id="i9"),  # next day
    ]


def test_round_trip_and_partition_layout(tmp_path):
    arch = EventArchive(tmp_path)
    paths = arch.write(sample())
    rel = sorted(os.path.relpath(p, tmp_path).rsplit("/", 1)[0] for p in paths)
    assert rel == ["dt=2017-11-26/hour=01", "dt=2017-11-26/hour=02", "dt=2017-11-27/hour=02"]
    assert all(os.path.basename(p).startswith("part-") and p.endswith(".parquet") for p in paths)
    assert arch.read(T0, T0 + 30 * HOUR_MS) == sample()  # every field, None included


def test_read_is_a_half_open_time_range(tmp_path):
    arch = EventArchive(tmp_path)
    arch.write(sample())
    assert [e.event_id for e in arch.read(T0 + 6, T0 + HOUR_MS + 2)] == ["e2", "e3"]
    assert [e.event_id for e in arch.read(T0 + 10, T0 + HOUR_MS + 1)] == ["e2"]
    assert arch.read(T0 - 10 * HOUR_MS, T0) == []


def test_appends_add_parts_and_never_rewrite(tmp_path):
    arch = EventArchive(tmp_path)
    first = arch.write(sample()[:1])
    second = arch.write(sample()[1:2])
    assert first != second and os.path.dirname(first[0]) == os.path.dirname(second[0])
    assert [e.event_id for e in arch.read(T0, T0 + HOUR_MS)] == ["e1", "e2"]


def test_crash_while_writing_leaves_no_part(tmp_path, monkeypatch):
    arch = EventArchive(tmp_path)
    arch.write(sample()[:1])
    real = pq.write_table

    def crash_midway(table, where, **kw):
        real(table.slice(0, 0), where, **kw)  # some bytes reach the disk, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        arch.write(sample()[1:2])
    monkeypatch.undo()
    files = [f for _, _, fs in os.walk(tmp_path) for f in fs]
    assert len(files) == 1 and files[0].startswith("part-")
    # A temporary file left by a hard kill (no cleanup ran) is skipped by readers.
    (tmp_path / partition_of(T0) / ".part-dead.parquet.tmp").write_bytes(b"PAR1 half")
    assert [e.event_id for e in arch.read(T0, T0 + HOUR_MS)] == ["e1"]


def test_rejects_unvalidated_input(tmp_path):
    with pytest.raises(TypeError):
        EventArchive(tmp_path).write([{"event_id": "e1"}])  # type: ignore[list-item]


events_st = st.lists(
    st.builds(
        Event,
        event_id=st.uuids().map(str),
        user=st.text(min_size=1, max_size=8),
        type=st.sampled_from(EVENT_TYPES),
        ts=st.integers(T0, T0 + 72 * HOUR_MS),
        item_id=st.none() | st.text(max_size=8),
        price=st.none() | st.floats(0, 1e6, allow_nan=False),
        quantity=st.none() | st.integers(1, 10_000),
        query=st.none() | st.text(max_size=20),
    ),
    max_size=30,
)


@settings(max_examples=25, deadline=None)
@given(events_st)
def test_any_events_round_trip(tmp_path_factory, events):
    arch = EventArchive(tmp_path_factory.mktemp("arch"))
    arch.write(events)
    assert arch.read(T0, T0 + 73 * HOUR_MS) == sorted(events, key=lambda e: (e.ts, e.event_id))
