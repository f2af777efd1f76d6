"""What the JSON nesting-depth check (cnetd.api.jsonbody.nesting_depth) costs before a body
is decoded, against json.loads of the same body in the same run.

    .venv/bin/python bench/json_depth.py [--repeat 5]

Rows: realistic bodies (a list of task-like objects, a V2 tensor) and hostile ones of about
1 MiB (the body cap): deep nesting, escaped quotes, unterminated strings, bare quotes. The
check runs only when a body has more than 64 brackets; for hostile bodies json.loads itself
fails (or recurses) and the column says so. Ratio = check / json.loads (lower is cheaper).
"""

from __future__ import annotations

import argparse
import json
import timeit
from functools import partial

from cnetd.api.jsonbody import nesting_depth

MIB = 1024 * 1024


def bodies() -> dict[str, bytes]:
    task = {"name": "t", "command": "python3", "args": ["-c", "print(\"hi\")"], "env": {"A": "b\\\"c"},
            "resources": {"cpu_limit": 1.0, "memory_limit": 512000000}}
    return {
        "tasks list (4000 objects)": json.dumps([task] * 4000).encode(),
        "V2 tensor [50000, 2]": json.dumps({"inputs": [{"name": "x", "shape": [50000, 2], "datatype": "FP64",
                                                               "data": [[1.25, 2.5]] * 50000}]}).encode(),
        "hostile: 500k deep": b"[" * (MIB // 2) + b"]" * (MIB // 2),
        "hostile: escaped quotes": b"[" * 70 + b'"' + b'\\"' * (MIB // 2 - 40),
        "hostile: quote-backslash": b"[" * 70 + b'"\\' * (MIB // 2 - 40),
        "hostile: bare quotes": b"[" * 70 + b'"' * (MIB - 70),
    }


def seconds(fn: object, repeat: int) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))  # type: ignore[arg-type]


def loads_or_reason(raw: bytes) -> tuple[float | None, str]:
    try:
        json.loads(raw)
    except RecursionError:
        return None, "RecursionError"
    except ValueError as exc:
        return None, type(exc).__name__
    return 0.0, "ok"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'body':32s} {'KiB':>6s} {'depth':>7s} {'check ms':>9s} {'loads ms':>9s} {'ratio':>6s}")
    for name, raw in bodies().items():
        check = seconds(partial(nesting_depth, raw), args.repeat)
        _, outcome = loads_or_reason(raw)
        if outcome == "ok":
            loads = seconds(partial(json.loads, raw), args.repeat)
            loads_text, ratio = f"{loads * 1000:9.1f}", f"{check / loads:6.2f}"
        else:
            loads_text, ratio = f"{outcome[:9]:>9s}", f"{'-':>6s}"
        print(f"{name:32s} {len(raw) // 1024:6d} {nesting_depth(raw):7d} {check * 1000:9.1f} {loads_text} {ratio}")


if __name__ == "__main__":
    main()
