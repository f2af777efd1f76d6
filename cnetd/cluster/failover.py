"""Failover of served models: what one agent of a cluster does so that no single node's
death loses a served model or stops its serving.

Built by the composition root when the config has a cluster section, held by ClusterNode
(`cluster.failover`) and started and stopped with it.

    failover.artifacts   # ArtifactFiles: this node's model files, for GET /api/cluster/artifacts/{id}
    failover.puller      # ArtifactPuller: fetch a model file from a node that has it
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cnetd.cluster.artifacts import ArtifactFiles, ArtifactPuller
from cnetd.cluster.peers import PeerCaller
from cnetd.ml.catalog import ModelCatalog


class ModelFailover:
    def __init__(self, peers: PeerCaller, catalog: ModelCatalog, model_roots: Sequence[Path]) -> None:
        self.catalog = catalog
        self.model_roots = list(model_roots)
        self.artifacts = ArtifactFiles(self.model_roots)
        self.puller = ArtifactPuller(peers)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
