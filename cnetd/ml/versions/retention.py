"""Retention of model versions (serving.keep_versions): which ready versions of a name are
retired. Pure: the version service gives it the rows and what is in use, retires what it
picks and removes the artifact copies no kept version uses any more."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from cnetd.store.versions import VersionRow

PROTECTED_WHAT = "the default, the previous default, the canary, a served version or the newest ready one"


def to_retire(rows: Sequence[VersionRow], keep: int | None, protected: Collection[str]) -> list[VersionRow]:
    """The ready versions of one name to retire, oldest first: as many as it has ready beyond
    `keep`, taken oldest first among those that are not protected (model ids: the default,
    the previous default, the canary, served versions, one being promoted) and never the
    newest ready version (what was just made, promoted or not). keep None or < 1: none.
    A name whose protected versions alone pass `keep` keeps them all."""
    if keep is None or keep < 1:
        return []
    ready = sorted((r for r in rows if r.state == "ready"), key=lambda r: r.version)
    excess = len(ready) - keep
    if excess <= 0:
        return []
    newest = ready[-1].model_id
    chosen: list[VersionRow] = []
    for row in ready:
        if len(chosen) >= excess:
            break
        if row.model_id in protected or row.model_id == newest:
            continue
        chosen.append(row)
    return chosen


def reason(keep: int, ready: int) -> str:
    """Why a version was retired by retention (its event and its row's reason)."""
    return (f"retention: serving.keep_versions is {keep} and the model had {ready} ready versions; "
            f"it was the oldest that is not {PROTECTED_WHAT}")
