"""What this node is called and where it listens: built once at start, read by /api/node,
/api/nodes, the heartbeat to a parent and the UI's dashboard alike."""

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

    def brief(self) -> dict[str, Any]:
        """The fields every listing of nodes shows (this node's and its children's rows)."""
        return {
            "node_id": self.node_id, "node_name": self.node_name, "region": self.region,
            "datacenter": self.datacenter, "version": self.version,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id, "node_name": self.node_name, "hostname": self.hostname, "region": self.region,
            "datacenter": self.datacenter, "address": self.address, "port": self.port, "version": self.version,
        }
