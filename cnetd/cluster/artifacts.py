"""Model artifacts between the nodes of a cluster: a trained model file, sent by a node that
has it and pulled by a node that is to serve it too.

The wire: `GET /api/cluster/artifacts/{model_id}` (peers only: the cluster token) answers
200 `application/octet-stream` with the file's bytes, `Content-Length` and
`X-CNET-Artifact-Size` its size and `X-CNET-Artifact-SHA256` its sha256 (hex). The sender
reads the file from the model's own record (never a path a request names), reached from its
model root without following a symlink (modeldirs.open_model_file), and hashes it first;
a file that changes while it is sent makes the receiver's check fail, never a half file.

The receiver trusts none of it: it knows what it wants (the sha256 and size the model's
desired serving state in etcd names), refuses an answer whose headers say otherwise or
that is larger than MAX_ARTIFACT_BYTES, counts the bytes as they come (more than announced:
cut at once), gives the whole transfer a deadline, and moves the file into place only once
size and sha256 match (modeldirs.ModelFileWriter: a temporary file renamed in one step).

    files = ArtifactFiles(model_roots)
    fd, artifact = await files.open(path)            # the sender's side
    await ArtifactPuller(peers).pull("c", model_id, Artifact(sha, size), writer)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cnetd.cluster.peers import PeerCaller
from cnetd.cluster.records import NODE_ID_PATTERN
from cnetd.errors import DomainError
from cnetd.security.modeldirs import ModelDirError, ModelFileWriter, open_model_file

SHA256_HEADER = "X-CNET-Artifact-SHA256"
SIZE_HEADER = "X-CNET-Artifact-Size"
CONTENT_TYPE = "application/octet-stream"
MAX_ARTIFACT_BYTES = 8 * 1024**3  # larger model files are not copied between nodes
CHUNK = 1024 * 1024
MIN_RATE = 1024 * 1024  # bytes/s a transfer may not fall below on average ...
MIN_SECONDS = 60.0  # ... after its first minute
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}\Z")
HASH_CACHE = 256


class ArtifactRefused(Exception):
    """A pull that did not give the file wanted; the message says why (nothing was moved
    into place)."""


class CannotWrite(ArtifactRefused):
    """This node cannot write the file where it goes (its model directory, its free space)."""


@dataclass(frozen=True)
class Artifact:
    sha256: str  # hex, lower case
    size: int

    def check(self) -> Artifact:
        """ValueError when this cannot describe a file we would take."""
        if not SHA256_PATTERN.match(self.sha256):
            raise ValueError(f"sha256 {self.sha256!r:.80} is not 64 lower-case hex digits")
        if not 0 <= self.size <= MAX_ARTIFACT_BYTES:
            raise ValueError(f"size {self.size} is not between 0 and {MAX_ARTIFACT_BYTES}")
        return self


def _hash_fd(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            raise OSError(f"the file shrank while it was read ({offset} of {size} bytes)")
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


class ArtifactFiles:
    """The sender's side: model files opened safely, hashed once per version of the file
    (a version: its inode, size and modification and change times)."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = list(roots)
        self._hashes: dict[tuple[int, int, int, int, int], str] = {}

    async def open(self, path: Path) -> tuple[int, Artifact]:
        """A read-only descriptor of the model file at path (the caller closes it) and what
        it holds. FileNotFoundError when there is none; ModelDirError when it is not a
        regular file reached through real directories inside the model roots."""
        fd = open_model_file(path, self.roots)
        try:
            st = os.fstat(fd)
            if st.st_size > MAX_ARTIFACT_BYTES:
                raise ModelDirError(f"{path} has {st.st_size} bytes, more than the {MAX_ARTIFACT_BYTES} copied between nodes")
            version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            sha = self._hashes.get(version)
            if sha is None:
                sha = await asyncio.to_thread(_hash_fd, fd, st.st_size)
                if len(self._hashes) >= HASH_CACHE:
                    self._hashes.clear()
                self._hashes[version] = sha
            return fd, Artifact(sha, st.st_size)
        except BaseException:
            os.close(fd)
            raise

    async def digest(self, path: Path) -> Artifact:
        """What the model file at path holds (sha256 and size)."""
        fd, artifact = await self.open(path)
        os.close(fd)
        return artifact


def read_chunk(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, min(CHUNK, size - offset), offset)


def deadline_for(size: int) -> float:
    return max(MIN_SECONDS, MIN_SECONDS + size / MIN_RATE)


class ArtifactPuller:
    """The receiver's side: fetch a model file from a node that has it, check it, and hand
    it to a ModelFileWriter, which moves it into place only when it is the file wanted."""

    def __init__(self, peers: PeerCaller, max_bytes: int = MAX_ARTIFACT_BYTES) -> None:
        self.peers = peers
        self.max_bytes = max_bytes

    async def pull(self, node_id: str, model_id: str, wanted: Artifact, writer: ModelFileWriter) -> Path:
        """The file's path once it is in place; ArtifactRefused saying why otherwise."""
        if not NODE_ID_PATTERN.match(node_id):
            raise ArtifactRefused(f"{node_id!r:.80} is not a node id")
        if not NODE_ID_PATTERN.match(model_id):
            raise ArtifactRefused(f"{model_id!r:.80} is not a model id")
        try:
            wanted.check()
        except ValueError as exc:
            raise ArtifactRefused(f"the wanted artifact: {exc}") from None
        if wanted.size > self.max_bytes:
            raise ArtifactRefused(f"model {model_id} has {wanted.size} bytes, "
                                  f"more than the {self.max_bytes} bytes copied between nodes")
        try:
            await asyncio.to_thread(writer.open)
        except (ModelDirError, OSError) as exc:
            raise CannotWrite(f"cannot write {writer.path}: {exc}") from None
        try:
            async with asyncio.timeout(deadline_for(wanted.size)):
                await self._receive(node_id, model_id, wanted, writer)
            return await asyncio.to_thread(writer.commit)
        except TimeoutError:
            await asyncio.to_thread(writer.abort)
            raise ArtifactRefused(f"node {node_id} did not send the {wanted.size} bytes of model {model_id} "
                                  f"within {deadline_for(wanted.size):.0f}s") from None
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise

    async def _receive(self, node_id: str, model_id: str, wanted: Artifact, writer: ModelFileWriter) -> None:
        try:
            answer = await self.peers.call(node_id, "GET", f"/api/cluster/artifacts/{model_id}", None, {})
        except DomainError as exc:
            raise ArtifactRefused(exc.message) from None
        async with answer:
            if answer.status != 200:
                text = (await answer.content.read(500)).decode(errors="replace")
                raise ArtifactRefused(f"node {node_id} answered {answer.status}: {' '.join(text.split())[:300]}")
            encoding = answer.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise ArtifactRefused(f"node {node_id} sent the file {encoding}-encoded")
            said_sha = answer.headers.get(SHA256_HEADER, "").strip().lower()
            said_size = answer.headers.get(SIZE_HEADER, "").strip()
            if said_sha != wanted.sha256:
                raise ArtifactRefused(f"node {node_id} has another version of model {model_id}: "
                                      f"sha256 {said_sha[:64] or 'not given'}, wanted {wanted.sha256}")
            if said_size != str(wanted.size) or answer.content_length != wanted.size:
                raise ArtifactRefused(f"node {node_id} announced {said_size[:20] or '?'} bytes "
                                      f"(Content-Length {answer.content_length}), wanted {wanted.size}")
            digest = hashlib.sha256()
            received = 0
            try:
                async for chunk in answer.content.iter_chunked(CHUNK):
                    received += len(chunk)
                    if received > wanted.size:
                        raise ArtifactRefused(f"node {node_id} sent more than the {wanted.size} bytes announced")
                    digest.update(chunk)
                    await asyncio.to_thread(writer.write, chunk)
            except ArtifactRefused:
                raise
            except Exception as exc:  # the connection broke: aiohttp's errors, a payload cut short
                raise ArtifactRefused(f"node {node_id} broke off after {received} of {wanted.size} bytes: "
                                      f"{type(exc).__name__}: {exc}") from None
            if received != wanted.size:
                raise ArtifactRefused(f"node {node_id} sent {received} of {wanted.size} bytes")
            if digest.hexdigest() != wanted.sha256:
                raise ArtifactRefused(f"the {received} bytes node {node_id} sent have sha256 {digest.hexdigest()}, "
                                      f"not {wanted.sha256}")
