"""The parts of cnetd.ml.versions that need no agent: the sticky split, the outcome
windows, the content-addressed artifact store."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cnetd.ml.versions.artifacts import ArtifactStore, sidecars_of
from cnetd.ml.versions.pointers import Canary, Pointer, bucket, pick
from cnetd.ml.versions.stats import MAX_SAMPLES, Outcomes, Window


def canary(percent: float) -> Canary:
    return Canary(model_id="new", version=2, percent=percent, started_at="t", ends_at=0.0, duration=60,
                  max_error_rate=0.01, max_p99_ratio=1.5, min_requests=0)


def test_the_split_is_sticky_and_close_to_its_share() -> None:
    pointer = Pointer("m", default_id="old", canary=canary(10))
    picks = [pick(pointer, f"key-{i}") for i in range(20_000)]
    share = picks.count("new") / len(picks)
    assert 0.09 < share < 0.11, share
    assert all(pick(pointer, f"key-{i}") == picks[i] for i in range(0, 20_000, 97))  # the same key, the same version
    assert {pick(Pointer("m", default_id="old", canary=canary(100)), f"k{i}") for i in range(100)} == {"new"}
    assert {pick(Pointer("m", default_id="old"), f"k{i}") for i in range(100)} == {"old"}
    assert 0 <= bucket("\udcff odd \x00 key") < 10_000  # any text hashes


def test_pointer_round_trips_through_its_row() -> None:
    pointer = Pointer("m", default_id="b", previous_id="a", previous_until=1234.5, canary=canary(12.5))
    assert Pointer.from_row(pointer.to_row()) == pointer


def test_windows_count_errors_and_p99_and_stay_bounded() -> None:
    window = Window()
    for i in range(1, 101):
        window.add(i / 1000, error=i % 10 == 0)
    assert window.requests == 100 and window.errors == 10 and window.error_rate == 0.1
    assert window.p99() == 0.099
    for _ in range(MAX_SAMPLES + 10):
        window.add(0.001, False)
    assert len(window.latencies) == MAX_SAMPLES
    outcomes = Outcomes()
    outcomes.started("a")
    outcomes.ended("a", None, False)  # the caller went away: not an outcome
    assert outcomes.in_flight["a"] == 0 and outcomes.window("a").requests == 0


def test_store_keeps_a_read_only_copy_with_sidecars_by_content(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    model = models / "m.h5"
    model.write_bytes(b"weights-1")
    (models / "m.h5.meta.json").write_text("{}")
    (models / "m_scaler.pkl").write_bytes(b"scaler")
    (models / "other.h5").write_bytes(b"unrelated")
    (models / "m.h5.link").symlink_to(models / "other.h5")  # a symlink beside it is not taken
    assert [p.name for p in sidecars_of(model)] == ["m.h5.meta.json", "m_scaler.pkl"]
    store = ArtifactStore(tmp_path / "state")
    first = store.store(model)
    assert first.file.read_bytes() == b"weights-1" and first.size == 9
    assert first.file.parent.name == first.sha256 and sorted(first.sidecars) == ["m.h5.meta.json", "m_scaler.pkl"]
    assert stat.S_IMODE(first.file.stat().st_mode) == 0o444
    assert first.file.stat().st_ino != model.stat().st_ino  # a copy, never a hard link
    with open(model, "r+b") as f:  # a retrain in place changes the model file, not the copy
        f.write(b"WEIGHTS")
    assert first.file.read_bytes() == b"weights-1"
    again = store.store(models / "other.h5")
    assert again.sha256 != first.sha256
    model.write_bytes(b"weights-1")
    same = store.store(model)  # the same bytes: the same directory, nothing new
    assert same.file == first.file
    assert not [e for e in store.root.iterdir() if e.name.startswith(".")]  # no staging left
    store.recorded(first)
    store.recorded(again)
    assert store.remove_unused({str(first.file)}) == [again.sha256]
    assert first.file.is_file() and not again.file.exists()


def test_store_refuses_a_symlinked_model_file(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("secret")
    link = tmp_path / "m.json"
    link.symlink_to(target)
    store = ArtifactStore(tmp_path / "state")
    try:
        store.store(link)
    except OSError:
        pass
    else:
        raise AssertionError("a symlink was copied")
    assert not [e for e in store.root.iterdir()], os.listdir(store.root)
