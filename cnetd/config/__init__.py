"""Typed configuration: a YAML file -> frozen dataclasses, then ``CNET_*`` env overrides.

The parts: :mod:`.model` (the sections and :class:`Config`), :mod:`.conversions` (raw value
-> typed value, one converter per kind of key) and :mod:`.loading` (the field table, the
YAML reader and the assembly). Everything that can be wrong with a file is reported as a
one-line :class:`ConfigError` (``"<file>: <dotted.key>: <what is wrong>"``).

Build a :class:`Config` through :func:`load_config` (the daemon) or :func:`default_config`
(tests); the class-level path defaults are placeholders that only those two resolve.
"""

from cnetd.config.conversions import parse_agent_url, parse_duration, parse_size
from cnetd.config.loading import COMPATIBILITY_ONLY, default_config, load_config
from cnetd.config.model import (
    AgentSection,
    AuthSection,
    ClusterSection,
    Config,
    ConfigError,
    DiscoverySection,
    EtcdSection,
    GpusSection,
    LogFormat,
    LoggingSection,
    LogLevel,
    LogsSection,
    MLSection,
    PortRange,
    ResourcesSection,
    RetentionSection,
    SandboxKind,
    SchedulerStrategy,
    TasksSection,
    TlsSection,
    UidRange,
)
from cnetd.limits import PIDS_CEILING, ResourceLimits

__all__ = [
    "COMPATIBILITY_ONLY",
    "PIDS_CEILING",
    "AgentSection",
    "AuthSection",
    "ClusterSection",
    "Config",
    "ConfigError",
    "DiscoverySection",
    "EtcdSection",
    "GpusSection",
    "LogFormat",
    "LogLevel",
    "LoggingSection",
    "LogsSection",
    "MLSection",
    "PortRange",
    "ResourceLimits",
    "ResourcesSection",
    "RetentionSection",
    "SandboxKind",
    "SchedulerStrategy",
    "TasksSection",
    "TlsSection",
    "UidRange",
    "default_config",
    "load_config",
    "parse_agent_url",
    "parse_duration",
    "parse_size",
]
