"""The monitor: every `serving.rollup_interval` it rolls each served model version's requests
since the previous roll-up into one row (count, errors, p50/p95/p99 of end-to-end latency)
kept in SQLite for `serving.rollup_retention`, attaches input-drift tracking to versions whose
training result has `input_stats`, and answers per-version series for the API and the UI.

Version labels come from an injected resolver (model id -> label); the default ranks the
deploys of a name by creation (cnetd.ml.monitor.versions.DeployOrder)."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from cnetd.background import cancel_and_wait
from cnetd.clock import format_time
from cnetd.errors import NotFound
from cnetd.metrics.window import LatencyWindow, percentile
from cnetd.ml.monitor.drift import InputDrift, parse_input_stats
from cnetd.ml.monitor.versions import DeployOrder, RoleResolver, VersionResolver
from cnetd.ml.serving.batcher import ModelMetrics
from cnetd.ml.serving.manager import ServingManager
from cnetd.store import rollups as rq
from cnetd.store.db import Database
from cnetd.store.rollups import Rollup

log = logging.getLogger(__name__)

DELETE_BATCH = 5000  # roll-up rows deleted per transaction by retention
MAX_POINTS = 50_000  # roll-up rows one series answer reads at most (unmerged)
POINTS_PER_VERSION = 1440  # a longer window's roll-ups are merged into this many buckets


def version_sort_key(label: str) -> tuple[int, int, str]:
    return (0, int(label), "") if label.isdigit() else (1, 0, label)


class Monitor:
    def __init__(
        self, db: Database, serving: ServingManager, interval: float = 60.0, retention: float | None = 7 * 86400.0,
        resolver: VersionResolver | None = None, roles: RoleResolver | None = None,
    ) -> None:
        """roles: which version is the default, the previous default or the canary (shown
        beside the series; none without it)."""
        self.db = db
        self.serving = serving
        self.interval = interval
        self.retention = retention
        self._deploy_order: DeployOrder | None = None if resolver is not None else DeployOrder()
        self.resolver: VersionResolver = resolver if resolver is not None else self._deploy_order  # type: ignore[assignment]
        self.roles = roles
        self._drift_checked: set[str] = set()
        self._loop: asyncio.Task[None] | None = None
        self._last_tick = datetime.now(UTC)

    def use_resolver(self, resolver: VersionResolver) -> None:
        """Label versions with this resolver from now on (model version records, once they exist)."""
        self.resolver = resolver
        self._deploy_order = None

    def version(self, model_id: str) -> str:
        return self.resolver(model_id)

    # ---- start and stop --------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        self._last_tick = datetime.now(UTC)
        self._loop = asyncio.create_task(self._run(), name="model-monitor")

    async def stop(self) -> None:
        await cancel_and_wait(self._loop)
        self._loop = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)  # the roll-up period itself
            try:
                await self.tick()
            except Exception:  # one failed pass must not end the monitoring
                log.exception("model roll-up failed")

    # ---- what is known of the models ------------------------------------------------------

    async def refresh(self) -> None:
        """Read the models' names (for the default labels) and give each served version
        whose training result has input_stats its drift tracking."""
        if self._deploy_order is not None:
            self._deploy_order.refresh(await self.db.read(rq.model_names))
        for model_id, (_name, metrics) in list(self.serving.metrics.items()):
            if model_id in self._drift_checked:
                continue
            self._drift_checked.add(model_id)
            await self._attach_drift(model_id, metrics)

    async def _attach_drift(self, model_id: str, metrics: ModelMetrics) -> None:
        text = await self.db.read(lambda c: rq.training_result(c, model_id))
        try:
            result = json.loads(text) if text else None
        except ValueError:
            result = None
        baseline = parse_input_stats(result.get("input_stats")) if isinstance(result, dict) else None
        if baseline is not None and metrics.drift is None:
            metrics.drift = InputDrift(baseline)
            log.info("model %s: tracking input drift of %d feature(s)", model_id, len(baseline.features))

    def drift(self, model_id: str) -> InputDrift | None:
        entry = self.serving.metrics.get(model_id)
        return entry[1].drift if entry is not None else None

    # ---- roll-ups ---------------------------------------------------------------------------

    async def tick(self) -> list[Rollup]:
        """One roll-up: a row per version that is served or answered since the last one;
        then retention."""
        await self.refresh()
        now = datetime.now(UTC)
        seconds = max((now - self._last_tick).total_seconds(), 1e-3)
        self._last_tick = now
        at = format_time(now)
        rows: list[Rollup] = []
        for model_id, (name, metrics) in list(self.serving.metrics.items()):
            window, metrics.window = metrics.window, LatencyWindow()
            if window.count == 0 and self.serving.served(model_id) is None:
                continue
            ordered = sorted(window.samples)
            rows.append(Rollup(
                model_id=model_id, name=name, version=self.version(model_id), at=at, seconds=round(seconds, 3),
                count=window.count, errors=window.errors,
                p50=percentile(ordered, 0.5), p95=percentile(ordered, 0.95), p99=percentile(ordered, 0.99),
            ))
        if rows:
            await self.db.write(lambda c: rq.insert_rollups(c, rows))
        await self.expire(now)
        return rows

    async def expire(self, now: datetime) -> int:
        if self.retention is None:
            return 0
        before = format_time(now - timedelta(seconds=self.retention))
        total = 0
        while True:
            n = await self.db.write(lambda c: rq.delete_rollups_before(c, before, DELETE_BATCH))
            total += n
            if n < DELETE_BATCH:
                return total

    # ---- series ---------------------------------------------------------------------------

    async def series(self, name_or_id: str, window: str, window_seconds: int) -> dict[str, Any]:
        """Per version of the model (given by name or by a deploy id): its roll-ups of the
        last window_seconds, totals, and input drift. NotFound for an unknown model."""
        records = await self.serving.catalog.named(name_or_id)
        if not records:
            raise NotFound(f"unknown model: {name_or_id}", {"id": name_or_id})
        name = records[0].name
        if name != name_or_id:
            records = await self.serving.catalog.named(name)
        await self.refresh()
        now = datetime.now(UTC)
        since = format_time(now - timedelta(seconds=window_seconds))
        step = window_seconds / POINTS_PER_VERSION
        if step > self.interval:
            rows = await self.db.read(lambda c: rq.rollup_buckets(c, [name], since, step))
        else:
            rows = await self.db.read(lambda c: rq.rollups_since(c, [name], since, MAX_POINTS))
        by_id: dict[str, list[Rollup]] = {}
        for row in rows:
            by_id.setdefault(row.model_id, []).append(row)
        versions: list[dict[str, Any]] = []
        known = {r.id for r in records}
        for model_id in [*(r.id for r in records), *(m for m in by_id if m not in known)]:
            points = by_id.get(model_id, [])
            label = self.version(model_id) if model_id in known else (points[-1].version if points else "")
            drift = self.drift(model_id)
            versions.append({
                "version": label, "model_id": model_id, "serving": self.serving.served(model_id) is not None,
                "role": self.roles(name, model_id) if self.roles is not None else None,
                "totals": totals(points), "points": [point_json(p) for p in points],
                "drift": drift.to_json() if drift is not None else None,
            })
        versions.sort(key=lambda v: version_sort_key(v["version"]))
        return {
            "name": name, "window": window, "window_seconds": window_seconds, "interval_seconds": self.interval,
            "step_seconds": max(step, self.interval),
            "since": since, "until": format_time(now), "versions": versions,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def point_json(row: Rollup) -> dict[str, Any]:
    return {
        "at": row.at, "seconds": row.seconds, "count": row.count, "errors": row.errors,
        "throughput": round(row.count / row.seconds, 3) if row.seconds > 0 else None,
        "p50_ms": _ms(row.p50), "p95_ms": _ms(row.p95), "p99_ms": _ms(row.p99),
    }


def totals(points: list[Rollup]) -> dict[str, Any]:
    count = sum(p.count for p in points)
    errors = sum(p.errors for p in points)
    worst = [p.p99 for p in points if p.p99 is not None]
    return {
        "count": count, "errors": errors, "error_rate": round(errors / count, 6) if count else None,
        "max_p99_ms": _ms(max(worst)) if worst else None,
    }
