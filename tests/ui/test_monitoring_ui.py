"""The model page's monitoring card in Chromium: per-version SVG charts (latency, throughput,
errors) with a title and a description each, the input drift table, no serious axe finding
on a laptop or a phone, and the card's poll keeping the page clean."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import expect

from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until
from tests.test_monitoring import DRIFT_SCRIPT, deploy, send
from tests.ui.conftest import Browse


def test_model_page_charts_per_version(agent_factory: Callable[..., AgentProcess],
                                       browse: Callable[..., Browse]) -> None:
    agent = agent_factory({"serving": {"rollup_interval": "0.5s"}})
    (agent.workdir / "drift_model.py").write_text(DRIFT_SCRIPT)
    agent.start()
    v1, v2 = deploy(agent), deploy(agent)
    for rounds in range(1, 4):  # three roll-ups with requests: lines, not dots
        for i in range(10):
            assert send(agent, [[0.1 * i, 10.0]], version=v1) == 200
            assert send(agent, [[4.0, 10.0]], version=v2) == 200

        def rolled(n: int = 10 * rounds) -> bool:
            body = agent.api.get(f"/api/ml/models/{v2}/metrics").body
            return all(v["totals"]["count"] >= n for v in body["versions"])

        wait_until(rolled, 20, f"round {rounds} of both versions' roll-ups")
    assert send(agent, [[-5000.0, 10.0]], version=v1) == 400
    for viewport in ("laptop", "phone"):
        b = browse(agent, viewport)
        b.goto(f"/models/{v2}")
        card = b.page.locator("#monitoring")
        expect(card.get_by_role("heading", name="Monitoring")).to_be_visible()
        expect(card.locator(".legend li")).to_have_count(2)
        expect(card.locator(".legend")).to_contain_text("version 2 (this deploy)")
        charts = card.locator("svg[role=img]")
        expect(charts).to_have_count(3)
        for i in range(3):
            svg = charts.nth(i)
            assert svg.locator("title").text_content(), "a chart without a title"
            assert "version 1" in (svg.locator("desc").text_content() or "")
        expect(card.get_by_role("img", name="Latency (ms), last 1h")).to_be_visible()
        expect(card.locator("polyline.line.v1.dash")).to_have_count(1)  # version 2's p99
        drift = card.locator("table.drift")
        expect(drift).to_have_count(2)
        expect(drift.nth(1).locator("tbody tr").first).to_contain_text("drifted")  # a moved by 4 training stds
        b.shot("model-monitoring", full_page=True)
        b.check_a11y("model-monitoring")
        b.assert_clean()
