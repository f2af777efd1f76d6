"""Deploy-form presets: the two example models, with the seed document's bodies verbatim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    body: dict[str, Any]


PRESETS: tuple[Preset, ...] = (
    Preset("linear_regression", "Linear regression", {
        "name": "linear-regression-model",
        "model_type": "linear_regression",
        "model_path": "models/linear_regression_model.joblib",
        "script_path": "examples/ml_models/simple_linear_regression.py",
        "command": "python3",
        "args": ["examples/ml_models/simple_linear_regression.py", "train", "models/linear_regression_model.joblib", "1000"],
        "working_dir": ".",
        "env": {"PYTHONPATH": "examples/ml_models"},
        "resources": {"cpu_limit": 1.0, "memory_limit": 512000000, "disk_limit": 1000000000},
    }),
    Preset("neural_network", "Neural network", {
        "name": "neural-network-model",
        "model_type": "neural_network",
        "model_path": "models/neural_network_model.h5",
        "script_path": "examples/ml_models/neural_network.py",
        "command": "python3",
        "args": ["examples/ml_models/neural_network.py", "train", "models/neural_network_model.h5", "1000", "50"],
        "working_dir": ".",
        "env": {"PYTHONPATH": "examples/ml_models"},
        "resources": {"cpu_limit": 2.0, "memory_limit": 1024000000, "disk_limit": 2000000000},
    }),
)


def preset(key: str | None) -> Preset | None:
    return next((p for p in PRESETS if p.key == key), None)
