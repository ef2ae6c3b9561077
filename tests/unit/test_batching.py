"""When the raw ingest processes the records it fetched (stream.logic.batching)."""

import pytest

from stream.logic.batching import Linger


def test_young_records_wait_until_the_oldest_is_linger_old():
    lg = Linger(max_events=1000, linger_ms=40)
    lg.add([("a", 10_000)], now_ms=10_012)  # fetched 12 ms after it was produced
    assert not lg.due(10_012) and lg.wait_ms(10_012) == 28
    lg.add([("b", 10_030), ("c", 10_031)], now_ms=10_035)
    assert not lg.due(10_039) and lg.wait_ms(10_039) == 1  # the oldest, "a", sets the deadline
    assert lg.due(10_040)
    assert lg.take() == ["a", "b", "c"]
    assert len(lg) == 0 and not lg.due(99_999) and lg.wait_ms(99_999) == 0


def test_records_already_older_than_the_linger_go_at_once():
    """A worker behind its input (or a backlog) must not wait on top of its queue."""
    lg = Linger(max_events=1000, linger_ms=40)
    lg.add([("a", 5_000), ("b", 5_001)], now_ms=9_000)
    assert lg.due(9_000) and lg.wait_ms(9_000) == 0


def test_a_full_batch_goes_at_once_and_fetches_ask_only_for_the_room_left():
    lg = Linger(max_events=3, linger_ms=1_000)
    assert lg.room() == 3
    lg.add([("a", 100), ("b", 100)], now_ms=100)
    assert lg.room() == 1 and not lg.due(100)
    lg.add([("c", 101)], now_ms=101)
    assert lg.due(101) and lg.room() == 1  # never ask a consumer for 0 records


def test_a_producer_clock_ahead_of_ours_does_not_hold_records_longer():
    """The deadline counts from the earlier of the record's timestamp and its fetch."""
    lg = Linger(max_events=100, linger_ms=40)
    lg.add([("a", 60_000)], now_ms=1_000)  # stamped a minute in our future
    assert lg.wait_ms(1_000) == 40 and lg.due(1_040)


def test_records_without_a_timestamp_count_from_their_fetch():
    lg = Linger(max_events=100, linger_ms=20)
    lg.add([("a", None)], now_ms=500)
    assert not lg.due(519) and lg.due(520)


def test_no_linger_processes_every_fetch_as_it_comes():
    lg = Linger(max_events=100, linger_ms=0)
    lg.add([("a", 1_000)], now_ms=1_000)
    assert lg.due(1_000)
    assert not Linger(max_events=100, linger_ms=0).due(1_000)  # nothing held, nothing due


@pytest.mark.parametrize("max_events, linger_ms", [(0, 10), (10, -1)])
def test_nonsense_limits_are_refused(max_events, linger_ms):
    with pytest.raises(ValueError):
        Linger(max_events=max_events, linger_ms=linger_ms)
