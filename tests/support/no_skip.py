"""In CI no test may skip: the hooks here turn every skip into a failure where CI is set.

A skip in CI means a precondition that .ci/run or bin/test should have installed is missing
(a package, a tool, the systemd harness), and a green run would hide that the test never ran.
Outside CI a skip stays a skip, with its reason. Expected failures (xfail) are not skips.
tests/conftest.py imports both hooks.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

TRUE = ("1", "true", "yes")


def skips_forbidden() -> bool:
    return os.environ.get("CI", "").strip().lower() in TRUE


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not skips_forbidden():
        return
    where, reason = "", str(report.longrepr)
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        path, lineno, reason = report.longrepr
        where = f"{path}:{lineno}: "
    report.outcome = "failed"
    report.longrepr = (f"{where}{reason}\nCI is set and no test may skip there: "
                       "install what it needs in .ci/run or bin/test")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    _as_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """A module (or conftest) that skips at import time, e.g. for a missing browser."""
    outcome = yield
    _as_failure(outcome.get_result())
