"""The autoscaler's decision (cnetd.ml.serving.autoscale), pure: samples in, replicas out.
Stable scale-up and scale-down after their delays, within the bounds; a burst panics and
scales up at once and holds while in panic; requests that queued during a cold start are not
load; min_replicas 0 unloads after idle_unload_after and a request scales it to one."""

from __future__ import annotations

from cnetd.ml.serving.autoscale import Autoscaler, Decision, Policy, Sample
from cnetd.ml.serving.spec import ServingSpec, parse_spec

POLICY = Policy(min_replicas=1, max_replicas=4, target_in_flight=2, stable_window=10, panic_window=2,
                scale_up_delay=3, scale_down_delay=5, idle_unload_after=20)


def feed(scaler: Autoscaler, start: int, end: int, in_flight: int, **extra: int) -> list[Decision]:
    return [scaler.observe(Sample(at=float(t), in_flight=in_flight, **extra)) for t in range(start, end)]


def test_steady_load_scales_up_after_the_delay_within_the_bound() -> None:
    scaler = Autoscaler(POLICY, replicas=1, now=0)
    # 3 in flight: 2 replicas wanted (ceil 3/2) but below the panic level (4 for 1 replica)
    decisions = feed(scaler, 1, 4, 3)
    assert [d.replicas for d in decisions] == [1, 1, 1]
    (up,) = feed(scaler, 4, 5, 3)
    assert up.changed and up.replicas == 2 and "wanted for 3s" in up.reason and not up.panic
    # 20 in flight: 10 wanted, 4 allowed (the panic level for 2 replicas is 8)
    decisions = feed(scaler, 5, 12, 20)
    assert max(d.replicas for d in decisions) == 4 and decisions[-1].replicas == 4


def test_load_that_stops_falls_back_to_min_after_the_delay() -> None:
    scaler = Autoscaler(POLICY, replicas=4, now=0)
    feed(scaler, 1, 11, 8)  # 8 in flight = 4 replicas' target
    assert scaler.replicas == 4
    decisions = feed(scaler, 11, 40, 0)
    changes = [d for d in decisions if d.changed]
    assert changes and changes[-1].replicas == 1 and "fewer wanted for 5s" in changes[-1].reason
    first = changes[0]
    assert first.at >= 11 + POLICY.scale_down_delay  # never before the delay
    assert scaler.replicas == 1  # min_replicas 1: it never goes to zero


def test_a_burst_panics_scales_up_at_once_and_never_down_while_in_panic() -> None:
    scaler = Autoscaler(POLICY, replicas=1, now=0)
    feed(scaler, 1, 10, 1)
    (burst,) = feed(scaler, 10, 11, 12)  # panic window average (1+12)/2 = 6.5 >= 2 x 2 x 1
    assert burst.panic and burst.replicas == 4 and burst.reason.startswith("panic")
    decisions = feed(scaler, 11, 20, 0)
    assert all(d.replicas == 4 for d in decisions)  # in panic for a stable window after the burst
    later = feed(scaler, 20, 40, 0)
    assert later[-1].replicas == 1 and not later[-1].panic


def test_requests_that_queued_during_a_cold_start_are_not_load() -> None:
    scaler = Autoscaler(POLICY, replicas=1, now=0)
    decisions = feed(scaler, 1, 12, 30, cold=30)
    assert all(d.replicas == 1 for d in decisions)
    assert all(not d.panic for d in decisions)
    # the same number, warm, is load
    warm = Autoscaler(POLICY, replicas=1, now=0)
    assert feed(warm, 1, 2, 30)[0].replicas == 4


def test_min_zero_unloads_when_idle_and_a_request_starts_one() -> None:
    policy = Policy(min_replicas=0, max_replicas=2, stable_window=10, panic_window=2, scale_up_delay=3,
                    scale_down_delay=5, idle_unload_after=8)
    scaler = Autoscaler(policy, replicas=1, now=0)
    decisions = feed(scaler, 1, 12, 0)
    unload = [d for d in decisions if d.changed]
    assert [d.replicas for d in unload] == [0] and unload[0].at == 8 and "idle" in unload[0].reason
    assert feed(scaler, 12, 14, 0)[-1].replicas == 0
    (cold,) = feed(scaler, 14, 15, 3, cold=3, arrivals=3)
    assert cold.replicas == 1 and cold.reason.startswith("cold start")
    # the cold requests do not scale it further
    assert all(d.replicas == 1 for d in feed(scaler, 15, 20, 3, cold=3))
    # a request now and then keeps it loaded
    for t in range(20, 40, 5):
        scaler.observe(Sample(at=float(t), in_flight=0, arrivals=1))
    assert scaler.replicas == 1


def test_policy_from_a_spec_and_replicas_meaning_a_fixed_count() -> None:
    fixed = parse_spec({"replicas": 3})
    assert (fixed.min_replicas, fixed.max_replicas, fixed.replicas, fixed.autoscaled) == (3, 3, 3, False)
    ranged = parse_spec({"min_replicas": 0, "max_replicas": 5, "scale_up_delay": 1}, base=fixed)
    assert (ranged.min_replicas, ranged.max_replicas, ranged.replicas, ranged.autoscaled) == (0, 5, 1, True)
    policy = Policy.of(ranged)
    assert policy.floor == 1 and policy.bounded(9) == 5 and policy.scale_up_delay == 1
    defaults = ServingSpec()
    assert (defaults.target_in_flight, defaults.scale_up_delay, defaults.scale_down_delay) == (2, 30, 600)
    assert (defaults.stable_window, defaults.panic_window) == (60, 6)
    assert ServingSpec.from_json({"replicas": 2}) == parse_spec({"replicas": 2})


def test_settings_that_do_not_go_together_are_refused_naming_the_field() -> None:
    import pytest

    from cnetd.errors import Invalid

    cases = [
        ({"min_replicas": 3, "max_replicas": 2}, "serving.min_replicas", "must not be more than max_replicas (2)"),
        ({"replicas": 2, "max_replicas": 4}, "serving.max_replicas", "either replicas"),
        ({"panic_window": 30, "stable_window": 10}, "serving.panic_window", "must not be longer"),
        ({"min_replicas": -1}, "serving.min_replicas", "between 0 and 64"),
        ({"max_replicas": 0}, "serving.max_replicas", "between 1 and 64"),
        ({"target_in_flight": 0}, "serving.target_in_flight", ""),
        ({"cold_start_timeout": 10**9}, "serving.cold_start_timeout", ""),
    ]
    for body, field, words in cases:
        with pytest.raises(Invalid) as caught:
            parse_spec(body, prefix="serving.")
        assert caught.value.field == field and words in caught.value.message, (body, caught.value.message)
    # only min given above the current max: say to give max too
    with pytest.raises(Invalid) as caught:
        parse_spec({"min_replicas": 4}, prefix="serving.", base=parse_spec({"replicas": 1}))
    assert caught.value.field == "serving.min_replicas"
