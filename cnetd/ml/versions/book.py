"""VersionBook: what the serving path asks of versions without touching the database:
a deploy's version number and the copy of its artifact. Filled from the store at start and
kept current by the version service and the deploy path."""

from __future__ import annotations

from pathlib import Path

from cnetd.store.versions import VersionRow


class VersionBook:
    def __init__(self) -> None:
        self._number: dict[str, int] = {}
        self._name: dict[str, str] = {}
        self._artifact: dict[str, Path] = {}
        self._rows: dict[str, VersionRow] = {}

    def note(self, row: VersionRow) -> None:
        self._rows[row.model_id] = row
        self._number[row.model_id] = row.version
        self._name[row.model_id] = row.name
        if row.artifact:
            self._artifact[row.model_id] = Path(row.artifact)
        else:
            self._artifact.pop(row.model_id, None)

    def note_new(self, model_id: str, name: str, number: int) -> None:
        self._number[model_id] = number
        self._name[model_id] = name

    def version_of(self, model_id: str) -> int | None:
        """The version number of a deploy (None: not a versioned deploy)."""
        return self._number.get(model_id)

    def name_of(self, model_id: str) -> str | None:
        return self._name.get(model_id)

    def artifact_of(self, model_id: str) -> Path | None:
        return self._artifact.get(model_id)

    def row(self, model_id: str) -> VersionRow | None:
        return self._rows.get(model_id)

    def id_of(self, name: str, number: int) -> str | None:
        for model_id, n in self._number.items():
            if n == number and self._name.get(model_id) == name:
                return model_id
        return None
