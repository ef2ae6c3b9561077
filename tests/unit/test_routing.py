"""When an internal partition may be processed where its events are ingested (stream.logic.routing)."""

from stream.logic.routing import LocalRouting


def armed(ends: dict[int, int], generation: int = 1) -> LocalRouting:
    r = LocalRouting()
    r.reset(generation)
    assert r.needs_arming(generation)
    assert r.arm(generation, ends)
    assert not r.needs_arming(generation)
    return r


def test_nothing_is_local_before_the_gates_are_armed_and_opened():
    r = LocalRouting()
    r.reset(1)
    assert r.local == set()
    assert r.open({0: 100}) == set()  # no gate armed: nothing to open


def test_an_empty_partition_opens_without_any_commit():
    r = armed({0: 0, 1: 0})
    assert r.open({}) == {0, 1}
    assert r.local == {0, 1} and not r.gates


def test_a_partition_opens_only_once_the_group_committed_its_end_offset():
    r = armed({0: 40, 1: 7})
    assert r.open({0: 39, 1: -1}) == set()
    assert r.open({0: 40, 1: 6}) == {0}
    assert r.open({1: 7}) == {1}
    assert r.local == {0, 1}


def test_a_forward_keeps_its_partition_closed_until_acknowledged_and_processed():
    r = armed({0: 10})
    r.sent(0)
    r.sent(0)
    assert r.open({0: 10}) == set(), "two packs in flight"
    r.acked(0, 10)
    r.acked(0, 11)
    assert r.open({0: 11}) == set(), "the pack at offset 11 is not processed yet"
    assert r.open({0: 12}) == {0}


def test_a_pack_forwarded_before_the_gate_was_armed_keeps_it_closed_until_processed():
    """Exactly-once: packs forwarded while the rebalance was under way are in the worker's open
    transaction when the gate is armed, so the end offset a ``read_committed`` reader sees (the
    last stable offset) is below them, and they are acknowledged only at the commit. Opening on
    the end offset would let events read after them be processed here first, and theirs would
    then be dead-lettered as late: lost."""
    r = LocalRouting()
    r.reset(1)
    r.sent(2)  # forwarded while the routing was closed, not committed yet
    assert r.arm(1, {2: 10})  # the last stable offset: before the open transaction's records
    assert r.open({2: 10}) == set(), "our own pack is not even committed"
    r.acked(2, 12)  # the transaction commits; the pack is at offset 12
    assert r.open({2: 12}) == set(), "committed but not processed"
    assert r.open({2: 13}) == {2}


def test_a_pack_forwarded_under_an_earlier_assignment_is_followed_too():
    r = armed({0: 5}, generation=1)
    r.sent(0)
    r.reset(2)
    assert r.arm(2, {0: 6})
    assert r.open({0: 6}) == set(), "the earlier pack is still in flight"
    r.acked(0, 8)  # its acknowledgement arrives under the new assignment
    assert r.open({0: 8}) == set()
    assert r.open({0: 9}) == {0}


def test_a_new_assignment_closes_everything_and_a_stale_arming_is_refused():
    r = armed({0: 0})
    r.open({})
    assert r.local == {0}
    r.reset(2)
    assert r.local == set() and r.needs_arming(2)
    assert not r.arm(1, {0: 0}), "ends read under the previous assignment"
    assert not r.needs_arming(1)


def test_disabled_routing_never_arms():
    r = LocalRouting(enabled=False)
    r.reset(1)
    assert not r.needs_arming(1)
    assert not r.arm(1, {0: 0})
    assert r.open({}) == set() and r.local == set()
