"""Version labels of served models. A resolver maps a model (deploy) id to its version label;
until model versions exist as records, the default ranks the deploys of a name by when they
were made: the first deploy of "iris" is version 1, the next one 2, and so on."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from cnetd.ml.versions.pointers import Pointer

VersionResolver = Callable[[str], str]  # model (deploy) id -> version label
RoleResolver = Callable[[str, str], str | None]  # (name, model id) -> default | previous | canary | None


class DeployOrder:
    """The default resolver: refresh() with every model's (id, name, created_at), then call it."""

    def __init__(self) -> None:
        self._labels: dict[str, str] = {}

    def refresh(self, models: Iterable[tuple[str, str, str]]) -> None:
        by_name: dict[str, list[tuple[str, str]]] = {}
        for model_id, name, created_at in models:
            by_name.setdefault(name, []).append((created_at, model_id))
        labels: dict[str, str] = {}
        for deploys in by_name.values():
            for rank, (_, model_id) in enumerate(sorted(deploys), start=1):
                labels[model_id] = str(rank)
        self._labels = labels

    def __call__(self, model_id: str) -> str:
        return self._labels.get(model_id, "")


def from_numbers(version_of: Callable[[str], int | None]) -> VersionResolver:
    """A resolver from a sync `version_of(model_id) -> int | None` (model version records)."""
    def resolve(model_id: str) -> str:
        number = version_of(model_id)
        return "" if number is None else str(number)
    return resolve


def roles_from(pointers: Mapping[str, Pointer]) -> RoleResolver:
    """A role resolver reading a name's pointers (VersionService.pointers) as they are now."""
    def role(name: str, model_id: str) -> str | None:
        pointer = pointers.get(name)
        if pointer is None:
            return None
        if pointer.canary is not None and pointer.canary.model_id == model_id:
            return "canary"
        if pointer.default_id == model_id:
            return "default"
        if pointer.previous_id == model_id:
            return "previous"
        return None
    return role
