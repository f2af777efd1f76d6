"""The configuration's typed form: one frozen dataclass per section, and :class:`Config`."""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cnetd.limits import ResourceLimits

LogLevel = Literal["debug", "info", "warn", "error"]
LogFormat = Literal["json", "text"]
SandboxKind = Literal["auto", "systemd", "cgroup", "none"]
SchedulerStrategy = Literal["spread", "binpack"]
EventLoopKind = Literal["auto", "uvloop", "asyncio"]


class ConfigError(Exception):
    """A configuration problem; ``str(e)`` is one line: ``"<file>: <dotted.key>: <problem>"``."""


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class TlsSection:
    """HTTPS for the API and UI: both files or neither (checked when the agent starts)."""

    cert_file: Path | None = None  # PEM certificate chain, the server's certificate first
    key_file: Path | None = None  # PEM private key of that certificate

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True)
class AgentSection:
    address: str = "127.0.0.1"
    port: int = 8080
    node_id: str = ""  # empty: the app generates one and persists it in state_dir
    node_name: str = field(default_factory=socket.gethostname)
    region: str = "default"
    datacenter: str = "dc1"
    heartbeat: float = 30.0  # seconds; the parent/child tree's, replaced by cluster.lease_ttl (read nowhere)
    state_dir: Path = Path("state")  # resolved to <config dir>/state by the loaders
    advertise_url: str = ""  # how other agents reach this node; empty: http(s)://<address>:<port>
    allowed_hosts: tuple[str, ...] = ()  # more names the Host header may carry (security.hosts)
    tls: TlsSection = TlsSection()
    labels: dict[str, str] = field(default_factory=dict)  # node labels besides region and datacenter
    event_loop: EventLoopKind = "auto"  # auto: uvloop when it imports, else asyncio's own (cnetd/loop.py)


@dataclass(frozen=True)
class LoggingSection:
    level: LogLevel = "info"
    format: LogFormat = "text"


@dataclass(frozen=True)
class DiscoverySection:
    """The original agent's parent/child tree, replaced by the cluster section: still read
    from a file (with a warning), acted on nowhere."""

    enabled: bool = False
    servers: tuple[str, ...] = ()  # parent agents' URLs (http://host:port), tried in order
    timeout: float = 5.0
    retry: int = 3
    token: str | None = None  # presented to the parent; the parent uses it to call back


@dataclass(frozen=True)
class EtcdSection:
    """How to reach etcd. The password is read from password_file when the config is loaded."""

    endpoints: tuple[str, ...] = ()  # http(s)://host:port of each member
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None  # trust these CAs for https endpoints (default: the system's)
    cert_file: Path | None = None  # client certificate, for etcd's --client-cert-auth
    key_file: Path | None = None
    password: str | None = field(default=None, repr=False, compare=False)  # from password_file; not a key


@dataclass(frozen=True)
class ClusterSection:
    """Several agents as one CNET, coordinated through etcd. Config.cluster is None without it."""

    etcd: EtcdSection = EtcdSection()
    lease_ttl: int = 15  # seconds; etcd raises anything under 2 s to 2 s
    prefix: str = "/cnet"  # every key the agents write lies under it
    token_file: Path | None = None  # the shared secret agents present to each other
    scheduler: SchedulerStrategy = "spread"
    token: str = field(default="", repr=False, compare=False)  # from token_file; not a key


# Fields read from another key's file when the config is loaded: never written back out.
DERIVED_SECRETS = {"cluster": ("token",), "cluster.etcd": ("password",)}


@dataclass(frozen=True)
class ResourcesSection:
    cpu: bool = True
    memory: bool = True
    disk: bool = True
    network: bool = True
    interval: float = 10.0


@dataclass(frozen=True)
class UidRange:
    """The uids (and equal gids) handed to tasks one per model or process task. The default
    is a block systemd leaves unused (above its container range, below 2^31), so it meets
    no DynamicUser service, nspawn container or subuid range of a stock system."""

    start: int = 1879048192  # 0x70000000
    end: int = 1879113727  # start + 65535


@dataclass(frozen=True)
class RetentionSection:
    """How long ended tasks (with their events, log lines and files) are kept."""

    max_age: float | None = 14 * 86400.0  # seconds since the task ended; None: no age bound
    max_tasks: int | None = 10_000  # ended tasks kept at most; None: no count bound
    interval: float = 600.0  # seconds between retention passes (the first runs at start)


@dataclass(frozen=True)
class TasksSection:
    max_concurrent: int = 10
    timeout: float | None = 300.0  # None: no timeout
    cleanup: bool = True
    sandbox: SandboxKind = "auto"
    stop_grace: float = 10.0
    stop_on_exit: bool = False
    allowed_commands: tuple[str, ...] = ()  # empty: any command
    cgroup_group: str = "cnet"  # the cgroup backend's group under the agent's own cgroup
    slice: str = "cnet.slice"  # the systemd slice that holds every task's scope
    run_as: str | None = None  # "dynamic", user[:group] or "root"; None: dynamic when the agent is root
    uid_range: UidRange = UidRange()  # where dynamic task uids come from
    retention: RetentionSection = RetentionSection()
    max_pids: int = 4096  # processes and threads of one task at once; the most a task may ask for


@dataclass(frozen=True)
class LogsSection:
    """Bounds on what one task's log keeps; None: no bound."""

    max_lines_per_task: int | None = 200_000
    max_bytes_per_task: int | None = 32 << 20  # 32 MiB


@dataclass(frozen=True)
class PortRange:
    start: int = 9000
    end: int = 9100


InstallerKind = Literal["auto", "uv", "pip"]


@dataclass(frozen=True)
class EnvironmentsSection:
    """Per-model Python environments (cnetd.ml.envs)."""

    max_idle: float | None = 14 * 86400.0  # seconds unused before retention removes one; None: kept
    installer: InstallerKind = "auto"  # auto: uv when the agent has it, else pip
    build_timeout: float = 1800.0
    build_memory_limit: int | None = 4 << 30


@dataclass(frozen=True)
class MLSection:
    enabled: bool = True
    engines: tuple[str, ...] = ("python",)  # accepted for compatibility, no effect (COMPATIBILITY_ONLY)
    default_engine: str = "python"  # accepted for compatibility, no effect
    model_path: Path = Path("state/models")  # a model root; resolved to <state_dir>/models by the loaders
    script_path: Path = Path("examples/ml_models")  # where a relative script_path is looked up last
    port_range: PortRange = PortRange()  # accepted for compatibility, no effect
    resource_limits: ResourceLimits = ResourceLimits(1.0, 536870912, 1073741824, 0)
    timeout: float = 30.0
    allowed_roots: tuple[Path, ...] = ()  # empty: the agent's working directory
    model_roots: tuple[Path, ...] = ()  # empty: <working directory>/models and model_path
    environments: EnvironmentsSection = EnvironmentsSection()


@dataclass(frozen=True)
class ServingSection:
    # The largest V2 infer or predict request body, in bytes: 64 MiB holds a batch of 64
    # 224x224x3 FP32 images as binary tensors, and keeps one request's memory (its body, plus
    # a copy while it is joined) well within an agent's share of a node.
    max_request_bytes: int = 64 << 20
    grpc_port: int | None = None  # the V2 gRPC service's port on agent.address; None: no gRPC
    rollup_interval: float = 60.0  # seconds between per-version roll-ups of served models' requests
    rollup_retention: float | None = 7 * 86400.0  # seconds roll-ups are kept; None: kept for ever
    # Bytes the replicas of every served model here may hold together (their memory_limit
    # each); None: only the node's free memory bounds them. Idle models are unloaded, least
    # recently used first, to stay within it.
    memory_budget: int | None = None
    # How long a model's previous default version stays warm after a switch, so that a
    # rollback is a pointer switch (cnetd.ml.versions); after it, a rollback reloads it.
    rollback_window: float = 600.0
    # Serve each version from the agent's own copy of its artifact (immutable); False: from
    # the model file itself, reloaded when it changes (a retrain changes what is served).
    version_copies: bool = True
    # Ready versions kept per model name (cnetd.ml.versions.retention): beyond them the oldest
    # that are not the default, previous default, canary, served or newest are retired and
    # their artifact copies removed. None: all are kept.
    keep_versions: int | None = 5
    # Microseconds a worker polls for the next request after an answer, and the agent polls
    # for a lone request's answer, before either sleeps (docs/serving.md, "Busy polling");
    # 0: both always sleep. Each polls only while requests (answers) come within it.
    busy_poll_us: int = 1000


@dataclass(frozen=True)
class GpusSection:
    """NVIDIA GPUs: discovery with NVML, assignment to tasks, device isolation."""

    enabled: bool = True  # False: NVML is never touched and the node has 0 GPUs
    refresh: float = 5.0  # seconds between NVML readings (memory, utilisation, per-process use)
    device_dir: Path = Path("/dev")  # where nvidia<N>, nvidiactl and nvidia-uvm are
    simulate_file: Path | None = None  # tests only: a JSON description of GPUs read instead of NVML


@dataclass(frozen=True)
class AuthSection:
    tokens: tuple[str, ...] = field(default=(), repr=False)
    token_file: Path | None = None
    metrics_public: bool = False  # /metrics without a token


SECTION_CLASSES: dict[str, type] = {
    "agent": AgentSection,
    "logging": LoggingSection,
    "discovery": DiscoverySection,
    "resources": ResourcesSection,
    "tasks": TasksSection,
    "logs": LogsSection,
    "ml": MLSection,
    "auth": AuthSection,
    "serving": ServingSection,
    "gpus": GpusSection,
    "cluster": ClusterSection,
}


def plain_data(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [plain_data(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Config:
    agent: AgentSection
    logging: LoggingSection
    discovery: DiscoverySection
    resources: ResourcesSection
    tasks: TasksSection
    ml: MLSection
    auth: AuthSection = AuthSection()
    logs: LogsSection = LogsSection()
    serving: ServingSection = ServingSection()
    gpus: GpusSection = GpusSection()
    cluster: ClusterSection | None = None  # None: a single node, nothing about etcd touched
    source: Path | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain JSON-able data, shaped like the YAML file.

        Paths are strings and durations are seconds; ``source`` and ``warnings`` are left
        out, so writing this dict back out gives a file that loads to the same sections.
        """
        data = {name: plain_data(getattr(self, name)) for name in SECTION_CLASSES}
        if data["cluster"] is not None:
            for dotted, names in DERIVED_SECRETS.items():
                section = data
                for part in dotted.split("."):
                    section = section[part]
                for name in names:
                    del section[name]
        data["auth"]["tokens"] = ["<redacted>" for _ in self.auth.tokens]
        if self.discovery.token is not None:
            data["discovery"]["token"] = "<redacted>"
        return data


# --------------------------------------------------------------------------- scalars
