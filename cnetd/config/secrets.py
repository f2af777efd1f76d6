"""The cluster section's checks that reach the file system: paths resolved, the shared token
and the etcd password read from their files (which other users must not be able to read),
and the TLS files there to be read. Each problem is one ConfigError line naming file and key."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from pathlib import Path

from cnetd.cluster.records import NODE_ID_PATTERN, NODE_ID_RULE
from cnetd.config.model import ClusterSection, ConfigError

MIN_TOKEN_LENGTH = 16
# Others may neither read nor write a secret; its group may read it (root:cnet 0640), not write it.
FORBIDDEN_MODE_BITS = stat.S_IRWXO | stat.S_IWGRP


def read_secret(path: Path, where: str) -> str:
    """The first line of a secret's file that is neither empty nor a # comment."""
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{where}: {path} is not a regular file")
    if mode & FORBIDDEN_MODE_BITS:
        raise ConfigError(f"{where}: {path} is open to other users (mode {stat.filemode(mode)}): "
                          f"chmod 600 it (or 640 for a group that may read it)")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise ConfigError(f"{where}: {path} holds no secret (only empty or # lines)")


def _readable(path: Path, where: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None


def assemble_cluster(cluster: ClusterSection, node_id: str, resolve: Callable[[Path], Path], label: str) -> ClusterSection:
    etcd = cluster.etcd
    if node_id and not NODE_ID_PATTERN.match(node_id):
        raise ConfigError(f"{label}: agent.node_id: in a cluster it must be {NODE_ID_RULE}, got {node_id!r}")
    if not etcd.endpoints:
        raise ConfigError(f"{label}: cluster.etcd.endpoints: is required when the cluster section is set "
                          "(a list of http(s)://host:port)")
    if cluster.token_file is None:
        raise ConfigError(f"{label}: cluster.token_file: is required when the cluster section is set "
                          "(a file holding the secret every agent of the cluster shares)")
    if (etcd.username is None) != (etcd.password_file is None):
        given, missing = ("username", "password_file") if etcd.password_file is None else ("password_file", "username")
        raise ConfigError(f"{label}: cluster.etcd.{missing}: must be set too when cluster.etcd.{given} is (both or neither)")
    if (etcd.cert_file is None) != (etcd.key_file is None):
        given, missing = ("cert_file", "key_file") if etcd.key_file is None else ("key_file", "cert_file")
        raise ConfigError(f"{label}: cluster.etcd.{missing}: must be set too when cluster.etcd.{given} is (both or neither)")
    def resolved(path: Path | None) -> Path | None:
        return None if path is None else resolve(path)

    etcd = dataclasses.replace(etcd, password_file=resolved(etcd.password_file), ca_file=resolved(etcd.ca_file),
                               cert_file=resolved(etcd.cert_file), key_file=resolved(etcd.key_file))
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(etcd, name)
        if path is not None:
            _readable(path, f"{label}: cluster.etcd.{name}")
    password = None if etcd.password_file is None else \
        read_secret(etcd.password_file, f"{label}: cluster.etcd.password_file")
    token_file = resolve(cluster.token_file)
    token = read_secret(token_file, f"{label}: cluster.token_file")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{label}: cluster.token_file: the token in {token_file} must be at least "
                          f"{MIN_TOKEN_LENGTH} characters (a short token is guessable)")
    etcd = dataclasses.replace(etcd, password=password)
    return dataclasses.replace(cluster, etcd=etcd, token_file=token_file, token=token)
