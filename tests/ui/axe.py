"""axe-core (the npm package, vendored in tests/ui/vendor/) run inside the page under test.

The pages' Content-Security-Policy allows no inline script, so axe is not added as a
<script> element: Playwright's page.evaluate hands its source to the DevTools protocol
(Runtime.evaluate), which the page's policy does not govern, as it does for the CSP
listener in conftest.py. The page keeps its policy and the test context keeps every check,
so a violation that axe or anything else caused would still fail the test. axe needs no eval.

`audit` runs every rule axe has (WCAG 2.x A and AA and its best practices) in the light
colour scheme, and the contrast rule again in the dark one (the stylesheet has both).
A finding of impact "serious" or "critical" fails the test; the others are printed
(pytest shows them with -rP, or for a failing test).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

AXE_VERSION = "4.14.1"
AXE_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"
AXE_FILE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
FAILING = ("serious", "critical")
SCHEMES = (("light", None), ("dark", ["color-contrast"]))  # (colour scheme, rules: None = all)

RUN = """async (rules) => {
  const options = {resultTypes: ["violations"]};
  if (rules) { options.runOnly = {type: "rule", values: rules}; }
  const result = await axe.run(document, options);
  const pick = (v) => ({rule: v.id, impact: v.impact || "", help: v.help, url: v.helpUrl,
    nodes: v.nodes.map((n) => ({target: n.target.join(" "), summary: (n.failureSummary || "").replace(/\\s+/g, " ")}))});
  return {version: axe.version, violations: result.violations.map(pick), incomplete: result.incomplete.map(pick)};
}"""


@dataclass(frozen=True)
class Finding:
    scheme: str
    rule: str
    impact: str
    help: str
    url: str
    nodes: tuple[tuple[str, str], ...]  # (CSS selector, what axe says is wrong there)
    review: bool = False  # axe could not decide ("incomplete"): a person should look

    def describe(self, limit: int = 6) -> str:
        kind = "to review" if self.review else self.impact
        lines = [f"  [{kind}] {self.rule} ({self.scheme}): {self.help} <{self.url}>"]
        lines += [f"      {target}: {summary}" for target, summary in self.nodes[:limit]]
        if len(self.nodes) > limit:
            lines.append(f"      … and {len(self.nodes) - limit} more")
        return "\n".join(lines)


@lru_cache(maxsize=1)
def axe_source() -> str:
    data = AXE_FILE.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != AXE_SHA256:
        raise AssertionError(f"{AXE_FILE} is not axe-core {AXE_VERSION} (sha256 {digest}); see tests/ui/vendor/README.md")
    return data.decode()


def run(page: Any, scheme: str, rules: list[str] | None = None) -> list[Finding]:
    """axe on the page as it is now; injects axe first when this document lacks it."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source())
    answer = page.evaluate(RUN, rules)
    assert answer["version"] == AXE_VERSION, answer["version"]

    def findings(items: list[dict[str, Any]], review: bool) -> list[Finding]:
        return [Finding(scheme, v["rule"], v["impact"], v["help"], v["url"],
                        tuple((n["target"], n["summary"]) for n in v["nodes"]), review) for v in items]

    return findings(answer["violations"], False) + findings(answer["incomplete"], True)


def audit(page: Any, label: str) -> list[Finding]:
    """Every scheme's findings; fails on any serious or critical violation."""
    found: list[Finding] = []
    for scheme, rules in SCHEMES:
        page.emulate_media(color_scheme=scheme)
        try:
            found += run(page, scheme, rules)
        finally:
            page.emulate_media(color_scheme="light")  # the test contexts' own scheme
    failing = [f for f in found if not f.review and f.impact in FAILING]
    others = [f for f in found if f not in failing]
    where = f"{label} ({page.url})"
    if others:
        print(f"axe {where}: {len(others)} finding(s) below serious:\n" + "\n".join(f.describe() for f in others))
    assert not failing, f"axe {where}: serious or critical findings:\n" + "\n".join(f.describe() for f in failing)
    return found
