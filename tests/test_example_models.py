"""The example model scripts in examples/ml_models/, run directly as subprocesses.

No agent is involved: these tests pin the script contract the agent relies on (JSON on
stdout, the last JSON object is the result, progress lines, exit codes, the serve
protocol).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
LR_SCRIPT = REPO / "examples" / "ml_models" / "simple_linear_regression.py"
NN_SCRIPT = REPO / "examples" / "ml_models" / "neural_network.py"
TIMEOUT = 120.0

HAVE_TF = all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "keras"))
needs_tf = pytest.mark.skipif(
    not HAVE_TF, reason="tensorflow/keras is not installed in this Python (bin/setup-venv ml)"
)


# --------------------------------------------------------------------------- helpers


def run(script: Path, *args: str, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line that is a JSON object, in order."""
    objects = []
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            objects.append(value)
    return objects


def result_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The task result: the last JSON object printed on stdout."""
    objects = json_lines(proc.stdout)
    assert objects, f"no JSON on stdout\nstdout={proc.stdout!r}\nstderr={proc.stderr[-2000:]}"
    return objects[-1]


def progress_lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [obj for obj in json_lines(proc.stdout) if "progress" in obj]


def assert_success(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    result = result_of(proc)
    assert proc.returncode == 0, f"rc={proc.returncode} result={result} stderr={proc.stderr[-2000:]}"
    assert result["status"] == "success", result
    return result


def assert_error(proc: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    result = result_of(proc)
    assert proc.returncode == code, f"rc={proc.returncode} result={result}"
    assert result["status"] == "error", result
    assert isinstance(result["error"], str) and result["error"], result
    assert "Traceback" not in proc.stderr, proc.stderr
    return result


class Server:
    """A running ``serve`` process, talked to one line at a time with timeouts."""

    def __init__(self, script: Path, model_path: Path, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "serve", str(model_path)],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._buffer = b""

    def readline(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line from serve within {timeout}s"
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"serve closed stdout; exit code {self.proc.poll()}"
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        value = json.loads(line)
        assert isinstance(value, dict), line
        return value

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def request(self, payload: Any) -> dict[str, Any]:
        self.send(payload if isinstance(payload, str) else json.dumps(payload))
        return self.readline()

    def close(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()


# --------------------------------------------------------------------------- linear regression


@pytest.fixture(scope="module")
def lr_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lr")


@pytest.fixture(scope="module")
def lr_train(lr_workdir: Path) -> subprocess.CompletedProcess[str]:
    # Relative path in a directory that does not exist yet: the script creates it.
    return run(LR_SCRIPT, "train", "models/sub/linear_regression_model.joblib", "1000", cwd=lr_workdir)


@pytest.fixture(scope="module")
def lr_model(lr_workdir: Path, lr_train: subprocess.CompletedProcess[str]) -> Path:
    assert_success(lr_train)
    path = lr_workdir / "models" / "sub" / "linear_regression_model.joblib"
    assert path.is_file()
    return path


def test_lr_train_result(lr_train: subprocess.CompletedProcess[str], lr_model: Path) -> None:
    result = assert_success(lr_train)
    assert result["model_path"] == "models/sub/linear_regression_model.joblib"
    info = result["model_info"]
    assert info["coefficient"] == pytest.approx(2.0, abs=0.05)
    assert info["intercept"] == pytest.approx(3.0, abs=0.2)
    metrics = result["metrics"]
    assert metrics["n_samples"] == 1000
    assert metrics["r2"] > 0.99
    assert 0 < metrics["mse"] < 0.5
    stats = result["input_stats"]  # x uniform on X_RANGE: the agent's drift baseline
    assert stats["features"] == ["x0"] and len(stats["mean"]) == len(stats["std"]) == 1
    assert stats["std"][0] > 0


def test_lr_train_progress(lr_train: subprocess.CompletedProcess[str]) -> None:
    values = [line["progress"] for line in progress_lines(lr_train)]
    assert len(values) >= 2
    assert values == sorted(values)
    assert values[0] == 0.0 and values[-1] == 1.0
    assert all(0.0 <= v <= 1.0 for v in values)
    assert "progress" not in result_of(lr_train)


def test_lr_model_is_a_plain_sklearn_estimator(lr_model: Path) -> None:
    code = "import joblib, sys; m = joblib.load(sys.argv[1]); print(float(m.predict([[5.5]])[0]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(lr_model)],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )
    assert float(proc.stdout.strip()) == pytest.approx(14.0, abs=0.2)


def test_lr_predict_number(lr_model: Path, lr_workdir: Path) -> None:
    result = assert_success(run(LR_SCRIPT, "predict", str(lr_model), "5.5", cwd=lr_workdir))
    assert isinstance(result["prediction"], float)
    assert result["prediction"] == pytest.approx(14.0, abs=0.2)
    assert result["model_path"] == str(lr_model)
    assert {"coefficient", "intercept"} <= set(result["model_info"])


def test_lr_predict_comma_list(lr_model: Path, lr_workdir: Path) -> None:
    result = assert_success(run(LR_SCRIPT, "predict", str(lr_model), "1,2", cwd=lr_workdir))
    assert result["prediction"] == pytest.approx([5.0, 7.0], abs=0.2)


def test_lr_predict_json_batch(lr_model: Path, lr_workdir: Path) -> None:
    result = assert_success(run(LR_SCRIPT, "predict", str(lr_model), "[[1], [2], 3]", cwd=lr_workdir))
    assert result["prediction"] == pytest.approx([5.0, 7.0, 9.0], abs=0.2)


def test_lr_evaluate(lr_model: Path, lr_workdir: Path) -> None:
    result = assert_success(run(LR_SCRIPT, "evaluate", str(lr_model), cwd=lr_workdir))
    assert result["metrics"]["r2"] > 0.99
    assert result["metrics"]["mse"] < 0.5
    assert result["model_info"]["coefficient"] == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("bad_input", ["abc", "1,x", "", "[1, \"a\"]", "{\"a\": 1}", "NaN"])
def test_lr_predict_bad_input(lr_model: Path, lr_workdir: Path, bad_input: str) -> None:
    assert_error(run(LR_SCRIPT, "predict", str(lr_model), bad_input, cwd=lr_workdir), 2)


def test_lr_predict_missing_model(tmp_path: Path) -> None:
    result = assert_error(run(LR_SCRIPT, "predict", "models/none.joblib", "5.5", cwd=tmp_path), 1)
    assert "not found" in result["error"]


@pytest.mark.parametrize(
    "args",
    [[], ["train"], ["fly", "m.joblib"], ["train", "m.joblib", "many"], ["train", "m.joblib", "0"],
     ["predict", "m.joblib"], ["evaluate", "m.joblib", "extra"]],
)
def test_lr_usage_errors(tmp_path: Path, args: list[str]) -> None:
    assert_error(run(LR_SCRIPT, *args, cwd=tmp_path), 2)
    assert not (tmp_path / "m.joblib").exists()


def test_lr_serve(lr_model: Path, lr_workdir: Path) -> None:
    server = Server(LR_SCRIPT, lr_model, lr_workdir)
    try:
        ready = server.readline()
        assert ready == {"ready": True, "model_path": str(lr_model), "n_features": 1}
        first = server.request({"id": 1, "instances": [5.5, [1.0]]})
        assert first["id"] == 1
        assert first["predictions"] == pytest.approx([14.0, 5.0], abs=0.2)
        bad = server.request({"id": "two", "instances": ["x"]})
        assert bad["id"] == "two" and "error" in bad and "predictions" not in bad
        third = server.request({"id": [3], "instances": [0]})
        assert third["id"] == [3]
        assert third["predictions"] == pytest.approx([3.0], abs=0.2)
        assert all(isinstance(v, float) for v in first["predictions"])
        assert server.close() == 0
    finally:
        server.kill()


def test_lr_serve_bad_lines_keep_serving(lr_model: Path, lr_workdir: Path) -> None:
    requests = ["not json", "[1, 2]", "", json.dumps({"id": 9}), json.dumps({"id": 10, "instances": [1]})]
    proc = subprocess.run(
        [sys.executable, str(LR_SCRIPT), "serve", str(lr_model)],
        cwd=lr_workdir, input="\n".join(requests) + "\n",
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["ready"] is True
    responses = lines[1:]
    assert len(responses) == len(requests)
    assert all("error" in r for r in responses[:4])
    assert responses[3]["id"] == 9
    assert responses[4]["id"] == 10 and responses[4]["predictions"] == pytest.approx([5.0], abs=0.2)


def test_lr_serve_missing_model(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(LR_SCRIPT), "serve", "none.joblib"],
        cwd=tmp_path, input="", capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert_error(proc, 1)


# --------------------------------------------------------------------------- neural network

NN_SAMPLES, NN_EPOCHS = 200, 5


@pytest.fixture(scope="module")
def nn_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nn")


@pytest.fixture(scope="module")
def nn_train(nn_workdir: Path) -> subprocess.CompletedProcess[str]:
    if not HAVE_TF:
        pytest.skip("tensorflow/keras is not installed in this Python (bin/setup-venv ml)")
    return run(
        NN_SCRIPT, "train", "models/neural_network_model.h5", str(NN_SAMPLES), str(NN_EPOCHS),
        cwd=nn_workdir,
    )


@pytest.fixture(scope="module")
def nn_model(nn_workdir: Path, nn_train: subprocess.CompletedProcess[str]) -> Path:
    assert_success(nn_train)
    path = nn_workdir / "models" / "neural_network_model.h5"
    assert path.is_file()
    return path


@pytest.mark.slow
@needs_tf
def test_nn_train(nn_train: subprocess.CompletedProcess[str], nn_model: Path) -> None:
    result = assert_success(nn_train)
    assert result["model_path"] == "models/neural_network_model.h5"
    assert result["metrics"]["n_samples"] == NN_SAMPLES
    assert result["metrics"]["epochs"] == NN_EPOCHS
    assert result["model_info"]["n_features"] == 2
    meta = json.loads(nn_model.with_name(nn_model.name + ".meta.json").read_text())
    assert meta["normalization"]["applied_inside_model"] is True
    assert len(meta["normalization"]["mean"]) == 2
    stats = result["input_stats"]  # features uniform on 0..5: mean about 2.5, std about 1.44
    assert stats["features"] == ["x0", "x1"]
    assert stats["mean"] == pytest.approx([2.5, 2.5], abs=0.5) and stats["std"] == pytest.approx([1.44, 1.44], abs=0.3)


@pytest.mark.slow
@needs_tf
def test_nn_train_progress(nn_train: subprocess.CompletedProcess[str]) -> None:
    lines = progress_lines(nn_train)
    assert [line["epoch"] for line in lines] == list(range(1, NN_EPOCHS + 1))
    values = [line["progress"] for line in lines]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert values[-1] == 1.0 and all(0.0 < v <= 1.0 for v in values)
    assert all(line["epochs"] == NN_EPOCHS and isinstance(line["loss"], float) for line in lines)


@pytest.mark.slow
@needs_tf
def test_nn_predict_one_sample(nn_model: Path, nn_workdir: Path) -> None:
    result = assert_success(run(NN_SCRIPT, "predict", str(nn_model), "1.0,2.0", cwd=nn_workdir))
    assert isinstance(result["prediction"], float)


@pytest.mark.slow
@needs_tf
def test_nn_predict_batch(nn_model: Path, nn_workdir: Path) -> None:
    result = assert_success(run(NN_SCRIPT, "predict", str(nn_model), "[[1, 2], [3, 4]]", cwd=nn_workdir))
    assert isinstance(result["prediction"], list) and len(result["prediction"]) == 2
    assert all(isinstance(v, float) for v in result["prediction"])


@pytest.mark.slow
@needs_tf
@pytest.mark.parametrize("bad_input", ["5.5", "1,2,3", "a,b", "[[1, 2], [3]]"])
def test_nn_predict_bad_input(nn_model: Path, nn_workdir: Path, bad_input: str) -> None:
    assert_error(run(NN_SCRIPT, "predict", str(nn_model), bad_input, cwd=nn_workdir), 2)


@pytest.mark.slow
@needs_tf
def test_nn_serve(nn_model: Path, nn_workdir: Path) -> None:
    server = Server(NN_SCRIPT, nn_model, nn_workdir)
    try:
        assert server.readline() == {"ready": True, "model_path": str(nn_model), "n_features": 2}
        answer = server.request({"id": "a", "instances": [[1.0, 2.0], [3, 4]]})
        assert answer["id"] == "a" and len(answer["predictions"]) == 2
        assert all(isinstance(v, float) for v in answer["predictions"])
        bad = server.request({"id": "b", "instances": [[1.0]]})
        assert bad["id"] == "b" and "error" in bad
        assert server.close() == 0
    finally:
        server.kill()


@pytest.mark.slow
@needs_tf
def test_nn_keras_format_and_evaluate(tmp_path: Path) -> None:
    assert_success(run(NN_SCRIPT, "train", "out/model.keras", "50", "1", cwd=tmp_path))
    assert (tmp_path / "out" / "model.keras").is_file()
    result = assert_success(run(NN_SCRIPT, "evaluate", "out/model.keras", cwd=tmp_path))
    assert {"mse", "mae", "r2", "n_samples"} <= set(result["metrics"])
    # Without the metadata file the feature count is checked against the loaded model.
    (tmp_path / "out" / "model.keras.meta.json").unlink()
    assert_error(run(NN_SCRIPT, "predict", "out/model.keras", "1,2,3", cwd=tmp_path), 2)


def test_nn_usage_errors_need_no_tensorflow(tmp_path: Path) -> None:
    assert_error(run(NN_SCRIPT, "train", "model.bin", cwd=tmp_path), 2)
    assert_error(run(NN_SCRIPT, "train", "model.h5", "100", "zero", cwd=tmp_path), 2)
    assert_error(run(NN_SCRIPT, "predict", "model.h5", "a,b", cwd=tmp_path), 2)
    assert_error(run(NN_SCRIPT, "predict", "model.h5", "1,2", cwd=tmp_path), 1)
