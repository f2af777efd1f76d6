"""The model page's Versions card in a real browser: versions with their state, default
badge and sha; Promote, Roll back, Start canary and Abort, by keyboard too."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect

from tests.support.agent import AgentProcess
from tests.ui.conftest import Browse
from tests.ui.test_ui import LIVE, confirm

MODEL = Path(__file__).resolve().parent.parent / "support" / "versioned_model.py"


def test_versions_card_promote_rollback_canary_abort(agent_factory: Callable[..., AgentProcess],
                                                     browse: Callable[..., Browse]) -> None:
    agent = agent_factory()
    shutil.copy(MODEL, agent.workdir / "versioned_model.py")
    (agent.workdir / "models").mkdir()
    agent.start()
    ids = []
    for slope, promote in ((2, "auto"), (3, "manual")):
        body = {"name": "ui-ver", "model_path": "models/u.json", "script_path": "versioned_model.py",
                "command": "python3", "args": ["versioned_model.py", "train", "models/u.json", str(slope)],
                "promote": promote}
        if slope == 2:
            body["serving"] = {"replicas": 1}
        reply = agent.api.post("/api/ml/models", body)
        assert reply.status == 201, reply.text
        ids.append(reply.body["id"])
        agent.wait_status(ids[-1], {"completed"}, 90, path="/api/ml/models/")
    b = browse(agent)
    page = b.page
    b.goto(f"/models/{ids[0]}")
    card = page.locator("#versions")
    expect(card).to_contain_text("default v1", timeout=LIVE)
    expect(card.locator("tbody tr")).to_have_count(2)
    expect(card).to_contain_text("ready")
    expect(card.locator("code").first).to_have_text(__import__("re").compile(r"^[0-9a-f]{12}$"))

    # Promote v2 with the keyboard: focus the button, Enter, confirm.
    promote = card.get_by_role("button", name="Promote version 2")
    promote.focus()
    page.keyboard.press("Enter")
    confirm(b, "Make version 2 the default of ui-ver?")
    expect(card).to_contain_text("default v2", timeout=60_000)
    card.get_by_role("button", name="Roll back to v1").click()
    confirm(b, "Roll ui-ver back to version 1?")
    expect(card).to_contain_text("default v1", timeout=LIVE)

    # A canary of v2, then Abort.
    card.get_by_label("Duration").fill("10m")
    card.get_by_role("button", name="Start canary").click()
    expect(card).to_contain_text("Canary v2", timeout=60_000)
    b.shot("model-versions-canary")
    b.check_a11y("model-versions-canary")
    card.get_by_role("button", name="Abort").click()
    confirm(b, "Abort the rollout of version 2?")
    expect(card).not_to_contain_text("Canary v2", timeout=LIVE)
    expect(card).to_contain_text("default v1")

    # A bad entry is shown beside its field.
    card.get_by_label("Canary %").fill("250")
    card.get_by_role("button", name="Start canary").click()
    expect(card.locator("#rollout-canary_percent-error")).to_contain_text("at most 100", timeout=LIVE)
    b.assert_clean()
