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
    assert r.tracks(0) and not r.tracks(3)  # 3 is not ours: its packs need no following
    r.sent(0)
    r.sent(0)
    assert r.open({0: 10}) == set(), "two packs in flight"
    r.acked(1, 0, 10)
    r.acked(1, 0, 11)
    assert r.open({0: 11}) == set(), "the pack at offset 11 is not processed yet"
    assert r.open({0: 12}) == {0}


def test_an_acknowledgement_from_an_earlier_assignment_is_ignored():
    r = armed({0: 5}, generation=1)
    r.sent(0)
    r.reset(2)
    assert r.arm(2, {0: 9})  # armed after a flush: every earlier forward is below 9
    r.acked(1, 0, 8)  # the old pack's acknowledgement arrives late
    assert r.inflight == {} and r.forwarded == {}
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
