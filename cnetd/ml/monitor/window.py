"""The `window` of GET /api/ml/models/{name}/metrics: how far back to look, as `30m`, `1h`,
`7d` (a whole number and one unit of s, m, h, d), from one minute to 31 days."""

from __future__ import annotations

import re

from cnetd.errors import Invalid

WINDOW = re.compile(r"([1-9][0-9]{0,6})([smhd])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_WINDOW = 60
MAX_WINDOW = 31 * 86400
DEFAULT_WINDOW = "1h"


def parse_window(raw: str | None) -> tuple[str, int]:
    """(the window as given, its seconds); a 400 naming `window` for anything else."""
    if raw is None or raw == "":
        raw = DEFAULT_WINDOW
    match = WINDOW.fullmatch(raw) if len(raw) <= 16 else None
    if match is None:
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise Invalid("window", f"must be a whole number and a unit (s, m, h or d), e.g. 15m, 1h or 7d; got {shown!r}")
    seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2)]
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        raise Invalid("window", f"must be from 1m to 31d, got {raw}")
    return raw, seconds
