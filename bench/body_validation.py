"""What checking a request body costs: the typed declarations (msgspec) against the
hand-written checks they replaced (bench/hand_checks_8526a92.py), in the same run.

    .venv/bin/python bench/body_validation.py [-n 20000] [--repeat 5]

Each row parses one body n times from its decoded JSON value (json.loads is the same for
both and left out), as the agent does before it touches the file system: the seed guide's
deploy body, the README's process task, and a refused body (an env value that is not a
string: the error path, where the declarations re-check one entry to name it). Times are
the best of --repeat runs, in microseconds per body; ratio = new / old (lower is cheaper).
"""

from __future__ import annotations

import argparse
import copy
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from hand_checks_8526a92 import parse_deployment_task
from hand_checks_8526a92 import parse_new_task as old_parse_new_task

from cnetd.bodies.decode import decode_body
from cnetd.errors import Invalid
from cnetd.limits import ResourceLimits
from cnetd.ml.bodies import DeploymentBody
from cnetd.tasks.request import parse_new_task

DEFAULTS = ResourceLimits(1.0, 536870912, 1073741824, 0)
SEED_DEPLOY = {  # the guide's linear regression body, verbatim
    "name": "linear-regression-model",
    "model_type": "linear_regression",
    "model_path": "models/linear_regression_model.joblib",
    "script_path": "examples/ml_models/simple_linear_regression.py",
    "command": "python3",
    "args": ["examples/ml_models/simple_linear_regression.py", "train", "models/linear_regression_model.joblib", "1000"],
    "working_dir": ".",
    "env": {"PYTHONPATH": "examples/ml_models"},
    "resources": {"cpu_limit": 1.0, "memory_limit": 512000000, "disk_limit": 1000000000},
}
TASK = {"name": "hello", "type": "process", "command": "python3", "args": ["-c", "print('hello')"],
        "resources": {"cpu_limit": 0.5, "memory_limit": "256MiB"}, "timeout": "30s"}
REFUSED = {**TASK, "env": {"A": "1", "B": "2", "C": 3}}


def new_deploy(body: Any) -> Any:
    return decode_body(body, DeploymentBody).to_deployment(DEFAULTS).task


def old_deploy(body: Any) -> Any:
    return parse_deployment_task(body, DEFAULTS)


def refusing(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(body: Any) -> Any:
        try:
            parse(body)
        except Invalid as exc:
            return exc.field
        raise AssertionError("the body was accepted")
    return run


ROWS: list[tuple[str, dict[str, Any], Callable[[Any], Any], Callable[[Any], Any]]] = [
    ("seed deploy body", SEED_DEPLOY, old_deploy, new_deploy),
    ("process task body", TASK, old_parse_new_task, parse_new_task),
    ("refused: env.C not a string", REFUSED, refusing(old_parse_new_task), refusing(parse_new_task)),
]


def per_body_us(parse: Callable[[Any], Any], body: dict[str, Any], n: int, repeat: int) -> float:
    bodies = [copy.deepcopy(body) for _ in range(n)]  # the old checks may not be handed one dict twice

    def run() -> None:
        for item in bodies:
            parse(item)

    return min(timeit.repeat(run, number=1, repeat=repeat)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20_000, help="bodies per timed run")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for _, body, old, new in ROWS:  # both must say the same before they are timed
        same = old(copy.deepcopy(body)), new(copy.deepcopy(body))
        assert same[0] == same[1], same
    print(f"{'body':30s} {'old us':>8s} {'new us':>8s} {'ratio':>6s}   (n={args.n}, best of {args.repeat})")
    for name, body, old, new in ROWS:
        old_us = per_body_us(old, body, args.n, args.repeat)
        new_us = per_body_us(new, body, args.n, args.repeat)
        print(f"{name:30s} {old_us:8.2f} {new_us:8.2f} {new_us / old_us:6.2f}")


if __name__ == "__main__":
    main()
