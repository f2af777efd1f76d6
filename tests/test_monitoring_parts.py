"""The monitoring parts on their own: the window parameter, input_stats parsing, Welford
statistics against numpy, percentiles of the latency sample, the default version labels,
and the roll-up queries on a real SQLite store (retention included)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnetd.errors import Invalid
from cnetd.metrics.welford import RunningStats
from cnetd.metrics.window import CAPACITY, LatencyWindow, percentile
from cnetd.ml.monitor.drift import InputDrift, parse_input_stats
from cnetd.ml.monitor.versions import DeployOrder, from_numbers
from cnetd.ml.monitor.window import parse_window
from cnetd.store import rollups as rq
from cnetd.store.db import Database
from cnetd.store.rollups import Rollup


@pytest.mark.parametrize(("raw", "seconds"), [(None, 3600), ("", 3600), ("1m", 60), ("90s", 90), ("6h", 21600),
                                              ("31d", 31 * 86400)])
def test_good_windows(raw: str | None, seconds: int) -> None:
    assert parse_window(raw)[1] == seconds


@pytest.mark.parametrize("raw", ["59s", "32d", "0m", "01h", "1H", "1 h", "1h\n", "x" * 10_000, "1e3s", "\u0661h"])
def test_bad_windows(raw: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_window(raw)
    assert caught.value.field == "window" and len(caught.value.message) < 200


def test_input_stats_shapes() -> None:
    listed = parse_input_stats({"features": ["a", "b"], "mean": [1, 2.5], "std": [0.5, 0]})
    assert listed is not None and listed.features == ("a", "b") and listed.std == (0.5, 0.0)
    unnamed = parse_input_stats({"mean": [1, 2], "std": [1, 1]})
    assert unnamed is not None and unnamed.features == ("x0", "x1")
    scalar = parse_input_stats({"mean": 3, "std": 1})
    assert scalar is not None and scalar.mean == (3.0,)
    per_feature = parse_input_stats({"a": {"mean": 1, "std": 2}})
    assert per_feature is not None and per_feature.features == ("a",)
    for bad in (None, [], {}, {"mean": [1], "std": [1, 2]}, {"mean": ["x"], "std": [1]}, {"mean": [1], "std": [-1]},
                {"a": 3}, {"mean": [math.inf], "std": [1]}, {"mean": [True], "std": [1]},
                {"mean": [0.0] * 5000, "std": [1.0] * 5000}):
        assert parse_input_stats(bad) is None, bad


def test_welford_matches_numpy_batch_by_batch() -> None:
    rng = np.random.default_rng(7)
    data = rng.normal([3.0, -1.0, 100.0], [1.0, 0.1, 20.0], size=(1000, 3))
    stats = RunningStats(3)
    for start in range(0, 1000, 37):
        stats.add(data[start:start + 37])
    assert stats.count == 1000
    assert np.allclose(stats.mean, data.mean(axis=0)) and np.allclose(stats.std(), data.std(axis=0, ddof=1))
    stats.add(np.array([[np.nan, 1.0, 1.0]]))  # non-finite rows are left out
    assert stats.count == 1000


def test_drift_scores_and_shapes() -> None:
    baseline = parse_input_stats({"features": ["a", "b"], "mean": [0, 10], "std": [1, 0]})
    assert baseline is not None
    drift = InputDrift(baseline)
    assert drift.features()[0]["score"] is None  # nothing served yet
    drift.observe([[2.0, 10.0], [4.0, 10.0]])
    drift.observe(np.array([[3.0, 10.0]], dtype=np.float32))
    drift.observe([[1.0, 2.0, 3.0]])  # another width
    drift.observe([["x", "y"]])  # not numbers
    drift.observe({"a": 1})
    a, b = drift.features()
    assert a["score"] == pytest.approx(3.0) and b["score"] is None  # b's training std is 0
    assert drift.to_json()["observed"] == 3 and drift.skipped == 3 and drift.to_json()["skipped"] == 3
    one = parse_input_stats({"mean": [5.0], "std": [2.0]})
    assert one is not None
    single = InputDrift(one)
    single.observe([9.0, 9.0])  # a one-feature model may be sent plain numbers
    assert single.features()[0]["score"] == pytest.approx(2.0)


def test_latency_window_and_percentiles() -> None:
    window = LatencyWindow()
    for i in range(CAPACITY * 3):
        window.add(i / 1000, failed=i % 100 == 0)
    assert window.count == CAPACITY * 3 and window.errors == CAPACITY * 3 // 100 + 1
    assert len(window.samples) == CAPACITY
    assert percentile([], 0.5) is None and percentile([2.0], 0.99) == 2.0
    values = sorted(float(v) for v in range(101))
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.99) == 99.0 and percentile(values, 0.95) == 95.0


def test_default_labels_rank_deploys_per_name() -> None:
    order = DeployOrder()
    order.refresh([("c", "iris", "2026-01-03T00:00:00.000Z"), ("a", "iris", "2026-01-01T00:00:00.000Z"),
                   ("b", "other", "2026-01-02T00:00:00.000Z"), ("d", "iris", "2026-01-02T00:00:00.000Z")])
    assert [order(m) for m in "adcb"] == ["1", "2", "3", "1"] and order("unknown") == ""
    numbers = {"a": 4}
    resolve = from_numbers(numbers.get)
    assert resolve("a") == "4" and resolve("z") == ""


async def test_rollup_queries_and_retention(db: Database) -> None:
    def row(model_id: str, name: str, at: str, count: int) -> Rollup:
        return Rollup(model_id, name, "1", at, 60.0, count, 0, 0.001, 0.002, 0.003)

    rows = [row("m1", "iris", f"2026-01-01T00:{m:02d}:00.000Z", m) for m in range(10)]
    rows.append(row("m2", "other", "2026-01-01T00:05:00.000Z", 1))
    await db.write(lambda c: rq.insert_rollups(c, rows))
    found = await db.read(lambda c: rq.rollups_since(c, ["iris"], "2026-01-01T00:04:00.000Z", 100))
    assert [r.count for r in found] == [5, 6, 7, 8, 9]
    newest = await db.read(lambda c: rq.rollups_since(c, ["iris"], "2000", 2))
    assert [r.count for r in newest] == [8, 9]  # the limit keeps the newest, oldest first
    assert await db.read(lambda c: rq.rollups_since(c, [], "2000", 2)) == []
    deleted = await db.write(lambda c: rq.delete_rollups_before(c, "2026-01-01T00:03:00.000Z", 2))
    assert deleted == 2  # in batches
    deleted = await db.write(lambda c: rq.delete_rollups_before(c, "2026-01-01T00:03:00.000Z", 100))
    assert deleted == 1
    left = await db.read(lambda c: rq.rollups_since(c, ["iris", "other"], "2000", 100))
    assert len(left) == 8 and min(r.at for r in left) == "2026-01-01T00:03:00.000Z"


async def test_long_windows_merge_rollups_into_buckets(db: Database) -> None:
    rows = [Rollup("m1", "iris", "1", f"2026-01-01T{h:02d}:{m:02d}:00.000Z", 60.0, 10, m % 2, 0.001 * (m + 1),
                   0.01, 0.01 * (1 + m % 7)) for h in range(3) for m in range(60)]
    rows.append(Rollup("m1", "iris", "1", "2026-01-01T03:00:00.000Z", 60.0, 0, 0, None, None, None))
    await db.write(lambda c: rq.insert_rollups(c, rows))
    buckets = await db.read(lambda c: rq.rollup_buckets(c, ["iris"], "2025-12-31T23:59:59.000Z", 3600.0))
    assert len(buckets) == 4  # three hours and the idle minute after them
    first = buckets[0]
    assert first.count == 600 and first.errors == 30 and first.seconds == 3600.0
    assert first.p99 == pytest.approx(0.07) and first.p50 == pytest.approx(0.0305)
    assert first.at == "2026-01-01T00:59:00.000Z"
    assert buckets[-1].count == 0 and buckets[-1].p50 is None
