"""What this node is called and where it listens: built once at start, read by /api/node,
its record in the cluster and the UI's dashboard alike."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from cnetd import __version__
from cnetd.config import Config


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    node_name: str
    hostname: str
    region: str
    datacenter: str
    address: str
    port: int
    version: str

    @classmethod
    def of(cls, config: Config, node_id: str) -> NodeIdentity:
        agent = config.agent
        return cls(
            node_id=node_id, node_name=agent.node_name, hostname=socket.gethostname(), region=agent.region,
            datacenter=agent.datacenter, address=agent.address, port=agent.port, version=__version__,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id, "node_name": self.node_name, "hostname": self.hostname, "region": self.region,
            "datacenter": self.datacenter, "address": self.address, "port": self.port, "version": self.version,
        }


def advertised_url(config: Config) -> str:
    """How other agents reach this one: agent.advertise_url, else http(s)://<address>:<port>."""
    if config.agent.advertise_url:
        return config.agent.advertise_url
    host = config.agent.address
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.agent.tls.enabled else "http"
    return f"{scheme}://{host}:{config.agent.port}"


def node_labels(config: Config) -> dict[str, str]:
    """The labels this node carries in the cluster: region, datacenter and agent.labels."""
    return {"region": config.agent.region, "datacenter": config.agent.datacenter, **config.agent.labels}
