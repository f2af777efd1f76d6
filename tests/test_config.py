"""cnetd.config: real files in tmp_path, every error kind, env overrides, docs kept honest."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import socket
from pathlib import Path

import pytest
import yaml

from cnetd.config import COMPATIBILITY_ONLY as COMPATIBILITY_ONLY_IN_CONFIG
from cnetd.config import (
    AgentSection,
    ClusterSection,
    Config,
    ConfigError,
    PortRange,
    TasksSection,
    default_config,
    load_config,
    parse_duration,
    parse_size,
)
from cnetd.config.model import plain_data
from cnetd.limits import ResourceLimits

ORIGINAL = """\
agent: {address: "0.0.0.0", port: 8080, node_id: "discovery-server", node_name: "Discovery Server", region: "default", datacenter: "dc1", heartbeat: "30s"}
logging: {level: "info", format: "json"}
discovery: {enabled: true, servers: [], timeout: "5s", retry: 3}
resources: {cpu: true, memory: true, disk: true, network: true, interval: "10s"}
tasks: {max_concurrent: 10, timeout: "5m", cleanup: true}
ml:
  enabled: true
  engines: ["python", "tensorflow", "pytorch"]
  default_engine: "python"
  model_path: "./models"
  script_path: "./examples/ml_models"
  port_range: {start: 9000, end: 9100}
  resource_limits: {cpu_limit: 1.0, memory_limit: 536870912, disk_limit: 1073741824, gpu_limit: 0}
  timeout: "30s"
"""  # noqa: E501  (the original agent's config.yaml, verbatim)

NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ=NO_ENV if environ is None else environ)


def error_of(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- defaults


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    assert cfg.warnings == ()
    assert cfg.source == tmp_path / "config.yaml"
    assert cfg.agent == AgentSection(
        address="127.0.0.1",
        port=8080,
        node_id="",
        node_name=socket.gethostname(),
        region="default",
        datacenter="dc1",
        heartbeat=30.0,
        state_dir=tmp_path / "state",
    )
    assert (cfg.logging.level, cfg.logging.format) == ("info", "text")
    assert (cfg.discovery.enabled, cfg.discovery.servers, cfg.discovery.timeout, cfg.discovery.retry) == (
        False,
        (),
        5.0,
        3,
    )
    assert cfg.resources.interval == 10.0 and cfg.resources.cpu and cfg.resources.network
    assert cfg.tasks == TasksSection(10, 300.0, True, "auto", 10.0, False)
    assert cfg.ml.engines == ("python",) and cfg.ml.default_engine == "python"
    assert cfg.ml.model_path == tmp_path / "state" / "models"
    assert cfg.ml.script_path == tmp_path / "examples" / "ml_models"
    assert cfg.ml.port_range == PortRange(9000, 9100)
    assert cfg.ml.resource_limits == ResourceLimits(1.0, 536870912, 1073741824, 0)
    assert cfg.ml.timeout == 30.0
    assert cfg.serving.max_request_bytes == 64 * 1024 * 1024
    assert load_text(tmp_path, "serving: {max_request_bytes: 8MiB}\n").serving.max_request_bytes == 8 * 1024 * 1024
    assert cfg.serving.busy_poll_us == 1000
    assert load_text(tmp_path, "serving: {busy_poll_us: 0}\n").serving.busy_poll_us == 0


def test_comment_only_file_and_empty_sections_are_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "# nothing here\nagent:\ntasks: {}\n")
    assert cfg == dataclasses.replace(default_config(tmp_path), source=tmp_path / "config.yaml")


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = default_config(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.agent.port = 1  # type: ignore[misc]


def test_default_config_overrides(tmp_path: Path) -> None:
    cfg = default_config(tmp_path, state_dir=tmp_path / "s", tasks={"timeout": "5m", "sandbox": "none"})
    assert cfg.agent.state_dir == tmp_path / "s"
    assert cfg.ml.model_path == tmp_path / "s" / "models"
    assert cfg.tasks.timeout == 300.0 and cfg.tasks.sandbox == "none"
    agent = AgentSection(port=1234, state_dir=tmp_path / "a")
    cfg = default_config(tmp_path, agent=agent)
    assert cfg.agent.port == 1234 and cfg.ml.model_path == tmp_path / "a" / "models"
    with pytest.raises(ConfigError, match=re.escape("unknown key 'tasks.sandbx'; did you mean 'sandbox'")):
        default_config(tmp_path, tasks={"sandbx": "none"})
    with pytest.raises(TypeError):
        default_config(tmp_path, taks={})


# --------------------------------------------------------------------------- the original file


def test_original_config_parses_with_only_the_compatibility_warnings(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, ORIGINAL)
    assert all(w.endswith(": accepted for compatibility, has no effect") or ": replaced by cluster." in w
               for w in cfg.warnings), cfg.warnings
    assert cfg.cluster is None
    assert cfg.agent.address == "0.0.0.0"
    assert cfg.agent.node_id == "discovery-server"
    assert cfg.agent.node_name == "Discovery Server"
    assert cfg.agent.heartbeat == 30.0
    assert cfg.logging.format == "json"
    assert cfg.discovery.enabled is True and cfg.discovery.timeout == 5.0
    assert cfg.resources.interval == 10.0
    assert cfg.tasks.timeout == 300.0 and cfg.tasks.max_concurrent == 10
    assert cfg.ml.engines == ("python", "tensorflow", "pytorch")
    assert cfg.ml.model_path == tmp_path / "models"
    assert cfg.ml.script_path == tmp_path / "examples" / "ml_models"
    assert cfg.ml.resource_limits == ResourceLimits(1.0, 536870912, 1073741824, 0)
    assert cfg.ml.timeout == 30.0


def test_our_keys(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        "agent: {state_dir: /var/lib/cnet}\n"
        "tasks: {sandbox: systemd, stop_grace: 2s, stop_on_exit: true, timeout: 0}\n"
        "logging: {level: WARNING}\n"
        "ml: {resource_limits: {memory_limit: 256MiB, disk_limit: 2GB, cpu_limit: 2}}\n",
    )
    assert cfg.warnings == ()
    assert cfg.agent.state_dir == Path("/var/lib/cnet")
    assert cfg.ml.model_path == Path("/var/lib/cnet/models")
    assert (cfg.tasks.sandbox, cfg.tasks.stop_grace, cfg.tasks.stop_on_exit) == ("systemd", 2.0, True)
    assert cfg.tasks.timeout is None
    assert cfg.logging.level == "warn"
    assert cfg.tasks.run_as is None  # the default: nobody when the agent runs as root
    assert load_text(tmp_path, "tasks: {run_as: 65534}\n").tasks.run_as == "65534"
    assert load_text(tmp_path, "tasks: {run_as: 'cnet-task:cnet'}\n").tasks.run_as == "cnet-task:cnet"
    # a partial resource_limits keeps the defaults of the keys it leaves out
    assert cfg.ml.resource_limits == ResourceLimits(2.0, 256 * 2**20, 2 * 10**9, 0)


def test_retention_and_log_bounds(tmp_path: Path) -> None:
    defaults = load_text(tmp_path, "")
    assert (defaults.tasks.retention.max_age, defaults.tasks.retention.max_tasks) == (14 * 86400.0, 10_000)
    assert (defaults.logs.max_lines_per_task, defaults.logs.max_bytes_per_task) == (200_000, 32 * 2**20)
    cfg = load_text(tmp_path, "tasks: {retention: {max_age: 36h, max_tasks: 500, interval: 1m}}\n"
                              "logs: {max_lines_per_task: 1000, max_bytes_per_task: 10MB}\n")
    assert (cfg.tasks.retention.max_age, cfg.tasks.retention.max_tasks, cfg.tasks.retention.interval) == (129600.0, 500, 60.0)
    assert (cfg.logs.max_lines_per_task, cfg.logs.max_bytes_per_task) == (1000, 10**7)
    assert cfg.tasks.max_concurrent == 10  # the rest of the section keeps its defaults
    # 0 or null: no bound
    off = load_text(tmp_path, "tasks: {retention: {max_age: 0, max_tasks: null}}\n"
                              "logs: {max_lines_per_task: 0, max_bytes_per_task: null}\n")
    assert (off.tasks.retention.max_age, off.tasks.retention.max_tasks) == (None, None)
    assert (off.logs.max_lines_per_task, off.logs.max_bytes_per_task) == (None, None)


def test_null_timeout_and_null_limit(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "tasks: {timeout: null}\nml: {resource_limits: {memory_limit: null}}\n")
    assert cfg.tasks.timeout is None
    assert cfg.ml.resource_limits.memory_limit is None


def test_relative_paths_resolve_against_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc" / "cnet"
    conf_dir.mkdir(parents=True)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(conf_dir, "agent: {state_dir: ../var}\nml: {script_path: scripts}\n")
    cfg = load_config(Path("..") / "etc" / "cnet" / "config.yaml", environ=NO_ENV)
    assert cfg.agent.state_dir == tmp_path / "etc" / "var"
    assert cfg.ml.model_path == tmp_path / "etc" / "var" / "models"
    assert cfg.ml.script_path == conf_dir / "scripts"
    assert cfg.source == path
    assert all(Path(p).is_absolute() for p in (cfg.agent.state_dir, cfg.ml.model_path, cfg.ml.script_path))


def test_explicit_model_path_is_not_tied_to_state_dir(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "agent: {state_dir: st}\nml: {model_path: /srv/models}\n")
    assert cfg.agent.state_dir == tmp_path / "st"
    assert cfg.ml.model_path == Path("/srv/models")


# --------------------------------------------------------------------------- environment


def test_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "CNET_NODE_ID": "n-1",
        "CNET_PORT": "9999",
        "CNET_REGION": "eu",
        "CNET_DATACENTER": "fra1",
        "CNET_LOG_LEVEL": "DEBUG",
        "CNET_ADDRESS": "0.0.0.0",
        "CNET_STATE_DIR": "envstate",
        "CNET_SANDBOX": "none",
    }
    cfg = load_text(tmp_path, "agent: {port: 8081, region: us}\n", env)
    a = cfg.agent
    assert (a.node_id, a.port, a.region, a.datacenter, a.address) == ("n-1", 9999, "eu", "fra1", "0.0.0.0")
    assert a.state_dir == tmp_path / "envstate"
    assert cfg.ml.model_path == tmp_path / "envstate" / "models"
    assert cfg.logging.level == "debug"
    assert cfg.tasks.sandbox == "none"


def test_empty_env_value_is_unset(tmp_path: Path) -> None:
    assert load_text(tmp_path, "agent: {port: 8081}\n", {"CNET_PORT": ""}).agent.port == 8081


def test_os_environ_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNET_REGION", "from-os")
    assert load_config(write(tmp_path, "")).agent.region == "from-os"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("CNET_PORT", "abc", "environment: CNET_PORT: must be an integer in 1..65535, got 'abc'"),
        ("CNET_PORT", "70000", "environment: CNET_PORT: must be an integer in 1..65535, got 70000"),
        ("CNET_LOG_LEVEL", "loud", "environment: CNET_LOG_LEVEL: must be one of 'debug', 'info', 'warn', 'error', got 'loud'"),
        ("CNET_SANDBOX", "docker", "environment: CNET_SANDBOX: must be one of 'auto', 'systemd', 'cgroup', 'none', got 'docker'"),
        ("CNET_EVENT_LOOP", "trio", "environment: CNET_EVENT_LOOP: must be one of 'auto', 'uvloop', 'asyncio', got 'trio'"),
    ],
)
def test_bad_env_value_names_the_variable(tmp_path: Path, var: str, value: str, message: str) -> None:
    assert error_of(tmp_path, "", {var: value}) == message


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config("config.yaml", environ=NO_ENV)
    assert str(info.value) == "config.yaml: cannot read: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r": cannot read: Is a directory$"):
        load_config(tmp_path, environ=NO_ENV)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("agent:\n  port: [8080\n", r"line \d+, column \d+: invalid YAML: expected ',' or ']'"),
        ("agent: {port: 1}\n  bad: indent\n", r"line 2, column \d+: invalid YAML: "),
        ("agent:\n\tport: 1\n", r"line 2, column 1: invalid YAML: found character '\\t'"),
        ("agent:\n  port: 1\n  port: 2\n", r"line 3, column 3: invalid YAML: duplicate key 'port'"),
    ],
)
def test_bad_yaml_has_line_and_column(tmp_path: Path, text: str, pattern: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(str(tmp_path / "config.yaml") + ": line ")
    assert re.search(pattern, message), message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "top level must be a mapping of sections, got a list"),
        ("just a string\n", "top level must be a mapping of sections, got 'just a string'"),
        ("agent: 5\n", "agent: must be a mapping, got 5"),
        ("ml: {port_range: [9000, 9100]}\n", "ml.port_range: must be a mapping, got a list"),
        ("tasks: {max_concurrent: ten}\n", "tasks.max_concurrent: must be an integer >= 1, got 'ten'"),
        ("tasks: {max_concurrent: 0}\n", "tasks.max_concurrent: must be an integer >= 1, got 0"),
        ("agent: {port: true}\n", "agent.port: must be an integer in 1..65535, got true"),
        ("agent: {port: '8080'}\n", "agent.port: must be an integer in 1..65535, got '8080'"),
        ("agent: {port: 65536}\n", "agent.port: must be an integer in 1..65535, got 65536"),
        ("agent: {port: 80.5}\n", "agent.port: must be an integer in 1..65535, got 80.5"),
        ("agent: {address: ''}\n", "agent.address: must be a non-empty string, got ''"),
        ("agent: {node_id: 42}\n", "agent.node_id: must be a string, got 42"),
        ("agent: {heartbeat: 0}\n", "agent.heartbeat: must be a duration > 0, got 0"),
        ("discovery: {enabled: 'true'}\n", "discovery.enabled: must be true or false, got 'true'"),
        ("discovery: {retry: -1}\n", "discovery.retry: must be an integer >= 0, got -1"),
        ("discovery: {servers: a:1}\n", "discovery.servers: must be a list of strings, got 'a:1'"),
        ("discovery: {servers: [ok, 3]}\n", "discovery.servers[1]: must be a non-empty string, got 3"),
        ("discovery: {timeout: 5 parsecs}\n",
         "discovery.timeout: must be a duration like '30s', '5m', '1h30m' or a number of seconds, got '5 parsecs'"),
        ("resources: {interval: -1}\n", "resources.interval: must be a duration >= 0, got -1"),
        ("logging: {level: verbose}\n", "logging.level: must be one of 'debug', 'info', 'warn', 'error', got 'verbose'"),
        ("logging: {level: [debug]}\n", "logging.level: must be one of 'debug', 'info', 'warn', 'error', got a list"),
        ("logging: {format: xml}\n", "logging.format: must be one of 'json', 'text', got 'xml'"),
        ("tasks: {sandbox: docker}\n", "tasks.sandbox: must be one of 'auto', 'systemd', 'cgroup', 'none', got 'docker'"),
        ("tasks: {stop_grace: -2}\n", "tasks.stop_grace: must be a duration >= 0, got -2"),
        ("ml: {port_range: {start: 9100, end: 9000}}\n", "ml.port_range: start (9100) must be <= end (9000)"),
        ("ml: {port_range: {start: 0}}\n", "ml.port_range.start: must be an integer in 1..65535, got 0"),
        ("ml: {default_engine: pytorch}\n", "ml.default_engine: must be one of ml.engines ('python'), got 'pytorch'"),
        ("ml: {resource_limits: {cpu_limit: 0}}\n", "ml.resource_limits.cpu_limit: must be a number > 0, got 0"),
        ("ml: {resource_limits: {memory_limit: lots}}\n",
         "ml.resource_limits.memory_limit: must be a size in bytes or like '512MB', '512MiB', '1.5G', got 'lots'"),
        ("ml: {resource_limits: {disk_limit: 0}}\n", "ml.resource_limits.disk_limit: must be a size > 0, got 0"),
        ("serving: {max_request_bytes: 0}\n", "serving.max_request_bytes: must be a size > 0, got 0"),
        ("serving: {busy_poll_us: -1}\n", "serving.busy_poll_us: must be an integer in 0..100000, got -1"),
        ("serving: {busy_poll_us: 1ms}\n", "serving.busy_poll_us: must be an integer in 0..100000, got '1ms'"),
        ("serving: {max_request_bytes: huge}\n",
         "serving.max_request_bytes: must be a size in bytes or like '512MB', '512MiB', '1.5G', got 'huge'"),
        ("ml: {resource_limits: {gpu_limit: -1}}\n", "ml.resource_limits.gpu_limit: must be an integer >= 0, got -1"),
        ("ml: {model_path: ''}\n", "ml.model_path: must be a path, got ''"),
        ("discovery: {servers: ['ftp://p']}\n", "discovery.servers[0]: must be a URL like http://host:8080, got 'ftp://p'"),
        ("agent: {advertise_url: 'http://h:1/x'}\n", "agent.advertise_url: must be a URL like http://host:8080, got 'http://h:1/x'"),
        ("tasks: {run_as: 'a b'}\n", "tasks.run_as: must be a user name or uid, optionally with :group, got 'a b'"),
        ("tasks: {run_as: -1}\n", "tasks.run_as: must be a user name or uid, optionally with :group, got -1"),
        ("tasks: {retention: {max_age: soon}}\n",
         "tasks.retention.max_age: must be a duration like '30s', '5m', '1h30m' or a number of seconds, got 'soon'"),
        ("tasks: {retention: {max_age: -1}}\n", "tasks.retention.max_age: must be a duration >= 0, got -1"),
        ("tasks: {retention: {max_tasks: ten}}\n", "tasks.retention.max_tasks: must be an integer >= 0, got 'ten'"),
        ("tasks: {retention: {max_tasks: 1.5}}\n", "tasks.retention.max_tasks: must be an integer >= 0, got 1.5"),
        ("tasks: {retention: {interval: 0}}\n", "tasks.retention.interval: must be a duration > 0, got 0"),
        ("tasks: {retention: 14d}\n", "tasks.retention: must be a mapping, got '14d'"),
        ("logs: {max_lines_per_task: -1}\n", "logs.max_lines_per_task: must be an integer >= 0, got -1"),
        ("logs: {max_bytes_per_task: lots}\n",
         "logs.max_bytes_per_task: must be a size in bytes or like '512MB', '512MiB', '1.5G', got 'lots'"),
        ("tasks: {max_pids: 0}\n", "tasks.max_pids: must be an integer in 1..4194304, got 0"),
        ("ml: {resource_limits: {max_pids: 5000}}\n",
         "ml.resource_limits.max_pids: must be at most tasks.max_pids (4096), got 5000"),
    ],
)
def test_each_error_is_one_line_naming_file_key_problem(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text) == f"{tmp_path / 'config.yaml'}: {expected}"


# --------------------------------------------------------------------------- unknown keys


def test_unknown_keys_warn_with_suggestion(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        "tasks: {max_concurent: 3}\ntaks: {}\nfrobnicate: 1\nml: {resource_limits: {cpu: 2}}\nagent: {zzz: 1}\n",
    )
    f = tmp_path / "config.yaml"
    assert cfg.warnings == (
        f"{f}: unknown key 'tasks.max_concurent' (ignored); did you mean 'max_concurrent'?",
        f"{f}: unknown key 'taks' (ignored); did you mean 'tasks'?",
        f"{f}: unknown key 'frobnicate' (ignored)",
        f"{f}: unknown key 'ml.resource_limits.cpu' (ignored); did you mean 'cpu_limit'?",
        f"{f}: unknown key 'agent.zzz' (ignored)",
    )
    assert cfg.tasks.max_concurrent == 10  # the misspelt key really was ignored


# --------------------------------------------------------------------------- scalars


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("2d", 172800.0),
        ("250us", 0.00025),
        (" 10 s ", 10.0),
        ("45", 45.0),
        ("0", 0.0),
        (30, 30.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value, "f: k") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["5 parsecs", "abc", "", "-1s", "1x", "s", "5m-", True, None, [1], -1, float("inf")])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "f.yaml: a.b")
    assert str(info.value).startswith("f.yaml: a.b: must be a duration")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (536870912, 536870912),
        (1024.0, 1024),
        ("512", 512),
        ("512B", 512),
        ("1KB", 1000),
        ("1K", 1024),
        ("1KiB", 1024),
        ("512MB", 512 * 10**6),
        ("1GB", 10**9),
        ("512MiB", 512 * 2**20),
        ("1GiB", 2**30),
        ("100M", 100 * 2**20),
        ("1.5G", 3 * 2**29),
        ("2 gb", 2 * 10**9),
        ("1TiB", 2**40),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value, "f: k") == size


@pytest.mark.parametrize("value", ["abc", "", "-1", "10 parsecs", "1.5.5G", "MB", True, None, -1, 1.5, [1]])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(value, "f.yaml: a.b")
    assert str(info.value).startswith("f.yaml: a.b: must be a ")


# --------------------------------------------------------------------------- to_dict


def test_to_dict_is_json_and_round_trips(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, ORIGINAL)
    data = cfg.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["tasks"]["timeout"] == 300.0
    assert data["agent"]["heartbeat"] == 30.0
    assert data["ml"]["model_path"] == str(tmp_path / "models")
    assert data["ml"]["engines"] == ["python", "tensorflow", "pytorch"]
    assert set(data) == {"agent", "logging", "discovery", "resources", "tasks", "logs", "ml", "auth", "serving", "gpus",
                         "cluster"}
    assert data["cluster"] is None  # no cluster section: a single node
    # the dict written back out (JSON is YAML) loads to the same configuration
    again = load_config(write(tmp_path, json.dumps(data), "again.yaml"), environ=NO_ENV)
    assert all(w.endswith(": accepted for compatibility, has no effect") or ": replaced by cluster." in w
               for w in again.warnings), again.warnings
    assert again.to_dict() == data


def test_to_dict_round_trips_no_timeout(tmp_path: Path) -> None:
    data = default_config(tmp_path, tasks={"timeout": None}).to_dict()
    assert data["tasks"]["timeout"] is None
    assert load_config(write(tmp_path, yaml.safe_dump(data)), environ=NO_ENV).to_dict() == data


# --------------------------------------------------------------------------- docs


REFERENCE = Path(__file__).parent.parent / "docs" / "config-reference.md"
CNETD = Path(__file__).parent.parent / "cnetd"
# Keys of the original agent's file that are accepted but read nowhere (config.COMPATIBILITY_ONLY).
COMPATIBILITY_ONLY = {"ml.engines", "ml.default_engine", "ml.port_range.start", "ml.port_range.end"}
# The parent/child tree's keys, which etcd replaced (config.REPLACED_BY_CLUSTER): parsed, unused.
REPLACED_BY_CLUSTER = {"agent.heartbeat", "discovery.enabled", "discovery.servers", "discovery.timeout",
                       "discovery.retry", "discovery.token"}
# Where the agent hands a section to a part that keeps it under another name, the names
# that part reads it by (ResourceSampler(config.resources) reads self.settings.interval).
HELD_AS = {
    "resources": {"settings"},
    "cluster": {"settings"},
    "logs": {"limits"},
    "tasks.retention": {"settings"},
    "ml.environments": {"settings"},
    "gpus": {"settings"},
}
# Read as a whole: each leaf is the default of the deploy's resources field of that name.
READ_WHOLE = {"ml.resource_limits"}


def documented_keys() -> set[str]:
    return set(re.findall(r"^\|\s*`([a-z_.]+)`\s*\|", REFERENCE.read_text(), re.MULTILINE))


def config_keys() -> set[str]:
    def keys(prefix: str, value: object) -> set[str]:
        if isinstance(value, dict):
            return set().union(*(keys(f"{prefix}.{k}" if prefix else k, v) for k, v in value.items()))
        return {prefix}

    data = default_config(Path("/x")).to_dict()
    data["cluster"] = plain_data(ClusterSection())  # the section's keys, as a file with one has them
    del data["cluster"]["token"], data["cluster"]["etcd"]["password"]  # read from files, not keys
    return keys("", data)


def attribute_reads() -> set[tuple[str, str]]:
    """(holder, attribute) for every `holder.attribute` in cnetd/ outside cnetd/config/: for
    `config.ml.script_path` that is ("config", "ml") and ("ml", "script_path")."""
    reads = set()
    for path in CNETD.rglob("*.py"):
        if path.parent == CNETD / "config":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute):
                holder = node.value
                name = holder.attr if isinstance(holder, ast.Attribute) else getattr(holder, "id", None)
                if name is not None:
                    reads.add((name.lstrip("_"), node.attr))
    return reads


def is_read(key: str, reads: set[tuple[str, str]]) -> bool:
    parent, _, leaf = key.rpartition(".")
    holders = {parent.rpartition(".")[2], *HELD_AS.get(parent, ())}
    if any((holder, leaf) in reads for holder in holders):
        return True
    return parent in READ_WHOLE and is_read(parent, reads)


def test_every_key_is_documented() -> None:
    doc = REFERENCE.read_text()
    assert config_keys() <= documented_keys()
    env_vars = {"CNET_NODE_ID", "CNET_PORT", "CNET_REGION", "CNET_DATACENTER", "CNET_LOG_LEVEL", "CNET_ADDRESS"}
    assert all(v in doc for v in env_vars | {"CNET_STATE_DIR", "CNET_SANDBOX", "CNET_EVENT_LOOP"})


def test_every_documented_key_is_read_by_the_agent() -> None:
    """The other way round: a documented key that no code reads is a setting that does
    nothing. Each must be read as an attribute somewhere in cnetd/ outside cnetd/config/, or be
    one of the keys accepted for compatibility, which say so in the reference."""
    reads = attribute_reads()
    unread = {key for key in documented_keys() if not is_read(key, reads)}
    expected = COMPATIBILITY_ONLY | REPLACED_BY_CLUSTER
    assert unread == expected, f"documented but read nowhere: {sorted(unread - expected)}; " \
                               f"read now, so no longer compatibility-only: {sorted(expected - unread)}"
    rows = {row.split("|")[1].strip(" `"): row for row in REFERENCE.read_text().splitlines() if row.startswith("| `")}
    for key in COMPATIBILITY_ONLY:
        assert "Accepted for compatibility, has no effect" in rows[key], key
    assert {k.removesuffix(".start").removesuffix(".end") for k in COMPATIBILITY_ONLY} == set(COMPATIBILITY_ONLY_IN_CONFIG)


def test_compatibility_keys_warn_once_each_when_a_file_sets_them(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, ORIGINAL)
    label = str(tmp_path / "config.yaml")
    replaced = "ignored (see the cluster section of docs/config-reference.md)"
    assert cfg.warnings == (
        *(f"{label}: {key}: accepted for compatibility, has no effect"
          for key in ("ml.engines", "ml.default_engine", "ml.port_range")),
        f"{label}: discovery.enabled, discovery.servers, discovery.timeout, discovery.retry: "
        f"replaced by cluster.etcd, {replaced}",
        f"{label}: agent.heartbeat: replaced by cluster.lease_ttl, {replaced}",
    )
    assert load_text(tmp_path, "ml: {enabled: true}\n").warnings == ()


def test_auth_tokens_from_file_and_env_are_redacted_in_to_dict(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("# ops team\nfile-token-0123456789abcdef\n\n")
    path = tmp_path / "config.yaml"
    path.write_text("auth:\n  tokens: [inline-token-0123456789ab]\n  token_file: tokens\n")
    config = load_config(path, environ={})
    assert config.auth.tokens == ("inline-token-0123456789ab", "file-token-0123456789abcdef")
    assert config.to_dict()["auth"]["tokens"] == ["<redacted>", "<redacted>"]
    assert "0123456789" not in repr(config.auth)
    from_env = load_config(path, environ={"CNET_AUTH_TOKEN": "env-token-0123456789abcdef"})
    assert "env-token-0123456789abcdef" in from_env.auth.tokens


def test_grpc_port_is_off_unless_set_and_checked_like_a_port(tmp_path: Path) -> None:
    assert load_text(tmp_path, "").serving.grpc_port is None
    assert load_text(tmp_path, "serving:\n  grpc_port: 8081\n").serving.grpc_port == 8081
    label = str(tmp_path / "config.yaml")
    for value in ("0", "70000", "ten", "true"):
        assert error_of(tmp_path, f"serving:\n  grpc_port: {value}\n").startswith(f"{label}: serving.grpc_port: must be"), value
    assert error_of(tmp_path, "agent:\n  port: 9000\nserving:\n  grpc_port: 9000\n") == (
        f"{label}: serving.grpc_port: must differ from agent.port (9000): gRPC and HTTP each need a port of their own")


def test_short_tokens_and_missing_token_files_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("auth:\n  tokens: [short]\n")
    with pytest.raises(ConfigError, match=re.escape("auth.tokens: each token must be at least 16 characters")):
        load_config(path, environ={})
    path.write_text("auth:\n  token_file: /no/such/file\n")
    with pytest.raises(ConfigError, match=re.escape("auth.token_file: cannot read")):
        load_config(path, environ={})


def test_a_size_too_large_for_a_float_is_a_config_error() -> None:
    from cnetd.config import ConfigError, parse_size

    with pytest.raises(ConfigError, match="too large"):
        parse_size("9" * 400 + "MB", "tasks.x")


# --------------------------------------------------------------------------- cluster


TOKEN = "cluster-token-0123456789abcdef"


def cluster_file(tmp_path: Path, cluster: str, token: str = TOKEN, mode: int = 0o600) -> Path:
    token_file = tmp_path / "cluster.token"
    token_file.write_text(f"# shared by every agent\n{token}\n")
    token_file.chmod(mode)
    return write(tmp_path, "cluster:\n" + "".join(f"  {line}\n" for line in cluster.splitlines()))


def test_no_cluster_section_is_a_single_node(tmp_path: Path) -> None:
    assert load_text(tmp_path, "agent: {port: 8080}\n").cluster is None
    assert load_text(tmp_path, "cluster:\n").cluster is None  # an empty section, e.g. all commented out
    assert default_config(tmp_path).cluster is None


def test_a_cluster_section_is_read_with_its_token_and_defaults(tmp_path: Path) -> None:
    path = cluster_file(tmp_path, "etcd: {endpoints: ['http://10.0.0.1:2379', 'https://etcd-2.example:2379']}\n"
                                  "token_file: cluster.token\n")
    cluster = load_config(path, environ=NO_ENV).cluster
    assert cluster is not None
    assert cluster.etcd.endpoints == ("http://10.0.0.1:2379", "https://etcd-2.example:2379")
    assert (cluster.lease_ttl, cluster.prefix, cluster.scheduler) == (15, "/cnet", "spread")
    assert cluster.token_file == tmp_path / "cluster.token" and cluster.token == TOKEN
    assert TOKEN not in repr(cluster)
    data = load_config(path, environ=NO_ENV).to_dict()
    assert "token" not in data["cluster"] and TOKEN not in json.dumps(data)
    # written back out, it loads to the same section
    assert load_config(write(tmp_path, json.dumps(data), "again.yaml"), environ=NO_ENV).cluster == cluster


def test_etcd_auth_and_tls_files_are_resolved_and_read(tmp_path: Path) -> None:
    (tmp_path / "etcd.password").write_text("s3cret-password\n")
    (tmp_path / "etcd.password").chmod(0o640)
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("PEM")
    path = cluster_file(tmp_path, "etcd:\n  endpoints: ['https://127.0.0.1:2379']\n  username: cnet\n"
                                  "  password_file: etcd.password\n  ca_file: ca.pem\n  cert_file: client.pem\n"
                                  "  key_file: client.key\ntoken_file: cluster.token\nlease_ttl: 3s\n"
                                  "prefix: /cnet/prod\nscheduler: binpack\n")
    cluster = load_config(path, environ=NO_ENV).cluster
    assert cluster is not None
    assert cluster.etcd.username == "cnet" and cluster.etcd.password == "s3cret-password"
    assert cluster.etcd.ca_file == tmp_path / "ca.pem" and cluster.etcd.key_file == tmp_path / "client.key"
    assert (cluster.lease_ttl, cluster.prefix, cluster.scheduler) == (3, "/cnet/prod", "binpack")
    assert "s3cret" not in repr(cluster) and "s3cret" not in json.dumps(load_config(path, environ=NO_ENV).to_dict())


@pytest.mark.parametrize("cluster, message", [
    ("etcd: {endpoints: [http://127.0.0.1:2379]}\ntoken_file: cluster.token\nlease_ttl: 1s\n",
     "cluster.lease_ttl: must be at least 2s (etcd raises a shorter lease to 2s), got '1s'"),
    ("etcd: {endpoints: [http://127.0.0.1:2379]}\ntoken_file: cluster.token\nlease_ttl: 2.5s\n",
     "cluster.lease_ttl: must be a whole number of seconds (etcd leases count whole seconds), got '2.5s'"),
    ("token_file: cluster.token\n",
     "cluster.etcd.endpoints: is required when the cluster section is set (a list of http(s)://host:port)"),
    ("etcd: {endpoints: []}\ntoken_file: cluster.token\n",
     "cluster.etcd.endpoints: must name at least one etcd member (http(s)://host:port), got none"),
    ("etcd: {endpoints: ['127.0.0.1:2379']}\ntoken_file: cluster.token\n",
     "cluster.etcd.endpoints[0]: must be an etcd URL like http://10.0.0.1:2379, got '127.0.0.1:2379'"),
    ("etcd: {endpoints: ['http://127.0.0.1:2379/v3']}\ntoken_file: cluster.token\n",
     "cluster.etcd.endpoints[0]: must be an etcd URL like http://10.0.0.1:2379, got 'http://127.0.0.1:2379/v3'"),
    ("etcd: {endpoints: [http://127.0.0.1:2379]}\ntoken_file: cluster.token\nprefix: cnet\n",
     "cluster.prefix: must be an etcd key prefix starting with '/', like /cnet, got 'cnet'"),
    ("etcd: {endpoints: [http://127.0.0.1:2379]}\ntoken_file: cluster.token\nprefix: /cnet/\n",
     "cluster.prefix: must be a prefix without a trailing '/', like /cnet, got '/cnet/'"),
    ("etcd: {endpoints: [http://127.0.0.1:2379]}\ntoken_file: cluster.token\nprefix: /cnet//x\n",
     "cluster.prefix: must be a prefix like /cnet or /cnet/prod: '/'-separated letters, digits and _ . -, got '/cnet//x'"),
    ("etcd: {endpoints: [http://127.0.0.1:2379]}\n",
     "cluster.token_file: is required when the cluster section is set"),
    ("etcd: {endpoints: [http://127.0.0.1:2379]}\ntoken_file: no-such.token\n",
     "cluster.token_file: cannot read {tmp}/no-such.token: No such file or directory"),
    ("etcd: {endpoints: [http://127.0.0.1:2379], username: cnet}\ntoken_file: cluster.token\n",
     "cluster.etcd.password_file: must be set too when cluster.etcd.username is (both or neither)"),
    ("etcd: {endpoints: [http://127.0.0.1:2379], key_file: k.pem}\ntoken_file: cluster.token\n",
     "cluster.etcd.cert_file: must be set too when cluster.etcd.key_file is (both or neither)"),
    ("etcd: {endpoints: [http://127.0.0.1:2379], ca_file: nope.pem}\ntoken_file: cluster.token\n",
     "cluster.etcd.ca_file: cannot read {tmp}/nope.pem: No such file or directory"),
    ("etcd: {endpoints: [http://127.0.0.1:2379]}\ntoken_file: cluster.token\nscheduler: random\n",
     "cluster.scheduler: must be one of 'spread', 'binpack', got 'random'"),
])
def test_cluster_mistakes_are_one_line_naming_file_and_key(tmp_path: Path, cluster: str, message: str) -> None:
    path = cluster_file(tmp_path, cluster)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=NO_ENV)
    assert str(info.value).startswith(f"{path}: {message.format(tmp=tmp_path)}"), str(info.value)
    assert "\n" not in str(info.value)


def test_a_cluster_token_file_others_can_read_short_or_empty_is_refused(tmp_path: Path) -> None:
    cluster = "etcd: {endpoints: [http://127.0.0.1:2379]}\ntoken_file: cluster.token\n"
    path = cluster_file(tmp_path, cluster, mode=0o644)
    with pytest.raises(ConfigError, match=r"cluster.token_file: .*cluster.token is open to other users "
                                          r"\(mode -rw-r--r--\): chmod 600 it"):
        load_config(path, environ=NO_ENV)
    path = cluster_file(tmp_path, cluster, mode=0o620)
    with pytest.raises(ConfigError, match="is open to other users"):
        load_config(path, environ=NO_ENV)
    path = cluster_file(tmp_path, cluster, token="short")
    with pytest.raises(ConfigError, match=r"cluster\.token_file: the token in .* must be at least 16 characters"):
        load_config(path, environ=NO_ENV)
    (tmp_path / "cluster.token").write_text("# nothing but a comment\n\n")
    with pytest.raises(ConfigError, match=r"cluster\.token_file: .* holds no secret"):
        load_config(path, environ=NO_ENV)
    (tmp_path / "cluster.token").unlink()
    (tmp_path / "cluster.token").mkdir()
    with pytest.raises(ConfigError, match=r"cluster\.token_file: cannot read .*cluster\.token: Is a directory"):
        load_config(path, environ=NO_ENV)


def test_agent_labels(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "agent:\n  labels: {gpu: a100, example.com/rack: '12'}\n")
    assert cfg.agent.labels == {"gpu": "a100", "example.com/rack": "12"}
    assert load_text(tmp_path, "agent: {port: 8080}\n").agent.labels == {}
    assert error_of(tmp_path, "agent: {labels: {rack: 12}}\n").endswith(
        "agent.labels.rack: must be a string of at most 128 printable characters (quote numbers), got 12")
    assert error_of(tmp_path, "agent: {labels: {region: eu}}\n").endswith(
        "agent.labels.region: set agent.region instead (it is always a label)")
    assert "agent.labels: label name 'a b': must be 1-63 letters" in error_of(tmp_path, "agent: {labels: {'a b': x}}\n")
    assert error_of(tmp_path, "agent: {labels: [gpu]}\n").endswith(
        "agent.labels: must be a mapping of label names to strings, got a list")
