"""Signal policy: rising edge, hysteresis, cooldown, deterministic ids, compact storage."""

from hypothesis import given
from hypothesis import strategies as st

from stream.logic.policy import PolicyRule, PolicyState, TaskPolicy, latent_changed, signal_id

RULE = PolicyRule(threshold=0.5, hysteresis=0.1, cooldown_ms=60_000)


def test_fires_once_on_crossing_and_rearms_only_below_hysteresis():
    p = TaskPolicy()
    assert RULE.step(p, 0.55, 0)
    assert not RULE.step(p, 0.9, 1_000)  # still on
    assert not RULE.step(p, 0.45, 2_000)  # inside the hysteresis band: stays on
    assert not RULE.step(p, 0.6, 3_000)
    assert not RULE.step(p, 0.39, 4_000)  # below 0.4: re-armed
    assert not RULE.step(p, 0.6, 5_000)  # re-armed but inside the cooldown
    assert RULE.step(p, 0.6, 70_000)


@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 10_000)), max_size=200))
def test_never_two_signals_within_the_cooldown(steps):
    p, emitted, ts = TaskPolicy(), [], 0
    for score, dt in steps:
        ts += dt
        if RULE.step(p, score, ts):
            emitted.append(ts)
    assert all(b - a >= RULE.cooldown_ms for a, b in zip(emitted, emitted[1:], strict=False))


def test_policy_state_round_trips():
    s = PolicyState(TaskPolicy(True, 123), TaskPolicy(False, -5), ("shoes", "bags", "é"), 99)
    assert PolicyState.from_bytes(s.to_bytes()) == s
    assert PolicyState.from_bytes(PolicyState().to_bytes()) == PolicyState()
    longest = PolicyState(latent=("😀" * 128, "é" * 128))  # ids up to 128 characters: 512 bytes of UTF-8
    assert PolicyState.from_bytes(longest.to_bytes()) == longest


def test_policy_state_version_1_still_reads():
    import struct

    v1 = PolicyState._HEAD.pack(1, True, 5, False, 7, 9, 2) + b"\x05shoes" + b"\x04bags"
    assert PolicyState.from_bytes(v1) == PolicyState(TaskPolicy(True, 5), TaskPolicy(False, 7), ("shoes", "bags"), 9)
    v2 = PolicyState._HEAD.pack(2, False, 5, True, 7, 9, 1) + b"\x05\x00shoes"
    assert PolicyState.from_bytes(v2) == PolicyState(TaskPolicy(False, 5), TaskPolicy(True, 7), ("shoes",), 9)
    assert struct.unpack_from("<B", PolicyState().to_bytes())[0] == 3


def test_policy_state_keeps_the_last_signal_id_of_each_task():
    ids = {"purchase_intent": signal_id("u", "purchase_intent", "e1"), "latent_needs": signal_id("u", "latent_needs", "e2")}
    s = PolicyState(latent=("shoes",), last_ids=ids)
    assert PolicyState.from_bytes(s.to_bytes()).last_ids == ids
    # 16 bytes per task that fired, and one byte of mask
    assert len(s.to_bytes()) - len(PolicyState(latent=("shoes",)).to_bytes()) == 32


def test_latent_change_is_about_the_leading_set():
    assert not latent_changed(("a", "b", "c", "d"), ("b", "a", "c", "e"))
    assert latent_changed(("a", "b", "c"), ("a", "b", "d"))


def test_signal_id_is_deterministic_and_distinct():
    assert signal_id("u", "purchase_intent", "e") == signal_id("u", "purchase_intent", "e")
    assert len({signal_id("u", t, e) for t in ("purchase_intent", "churn_risk") for e in ("e1", "e2")}) == 4
