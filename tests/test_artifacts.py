"""Model artifacts copied between nodes, tried as an attacker would.

The receiver (ArtifactPuller + ModelFileWriter) pulls from a hostile stand-in node: a small
aiohttp server whose record is put into a real etcd where the puller's PeerCaller finds it,
as it finds any node. It announces another sha256, sends other bytes than it announced,
breaks off half-way, streams without a length, answers an error: each time nothing is
moved into place, no temporary file is left, and a model file already there is untouched.
A model id or node id with a path in it never leaves the puller; the writer never follows
a symlink, as root, out of the model roots.

The sender is a real agent of a (one-node) cluster: GET /api/cluster/artifacts/{id} gives
the trained file with its sha256 to a peer only (401 without or with a wrong cluster
token), refuses an id that is a path, and refuses a model whose file was swapped for a
symlink to /etc/shadow without sending a byte of it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cnetd.cluster import records
from cnetd.cluster.artifacts import SHA256_HEADER, SIZE_HEADER, Artifact, ArtifactPuller, ArtifactRefused
from cnetd.cluster.directory import NodeDirectory
from cnetd.cluster.etcd import EtcdClient, EtcdOptions
from cnetd.cluster.peers import PeerCaller
from cnetd.cluster.records import NodeRecord
from cnetd.security.cluster_token import HEADER, ClusterToken
from cnetd.security.modeldirs import ModelDirError, ModelFileWriter, open_model_file
from tests.support.agent import AgentProcess
from tests.support.cluster import CLUSTER_TOKEN, cluster_agent, new_prefix
from tests.support.etcd import EtcdCluster, etcd_shared  # noqa: F401  (fixture)
from tests.test_ml_api import deploy_and_train

PURE_MODEL = Path(__file__).with_name("support") / "pure_model.py"
BYTES = os.urandom(300_000)
SHA = hashlib.sha256(BYTES).hexdigest()
MODEL_UID = 4242
SEEN = web.AppKey("seen", list[str])


async def hostile(request: web.Request) -> web.StreamResponse:
    """The stand-in node: how it answers depends on the model id asked for."""
    request.app[SEEN].append(request.path)
    how = request.path.rsplit("/", 1)[-1]
    headers = {"Content-Type": "application/octet-stream", SHA256_HEADER: SHA, SIZE_HEADER: str(len(BYTES))}
    if how == "good":
        return web.Response(body=BYTES, headers=headers)
    if how == "other-version":
        return web.Response(body=BYTES, headers={**headers, SHA256_HEADER: "0" * 64})
    if how == "other-bytes":  # announces the wanted file, sends another of the same size
        return web.Response(body=bytes(reversed(BYTES)), headers=headers)
    if how in ("truncated", "no-length"):
        response = web.StreamResponse(headers=headers)
        if how == "truncated":
            response.content_length = len(BYTES)
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(BYTES[: len(BYTES) // 2])
        if how == "truncated":
            assert request.transport is not None
            request.transport.close()  # half the bytes, then the connection goes
            return response
        await response.write(BYTES * 2)
        await response.write_eof()
        return response
    if how == "refused":
        return web.json_response({"error": "model x has no model file"}, status=409)
    return web.json_response({"error": "unknown"}, status=404)


@pytest.fixture
async def stand_in() -> AsyncIterator[tuple[str, list[str]]]:
    app = web.Application()
    seen: list[str] = []
    app[SEEN] = seen
    app.router.add_get("/api/cluster/artifacts/{how}", hostile)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


@pytest.fixture
async def puller(etcd_shared: EtcdCluster, stand_in: tuple[str, list[str]]) -> AsyncIterator[ArtifactPuller]:  # noqa: F811
    """A puller whose cluster has one other node, "evil": the stand-in."""
    prefix = new_prefix("artifacts")
    async with EtcdClient(EtcdOptions(etcd_shared.endpoints, timeout=1.0)) as etcd:
        record = NodeRecord(node_id="evil", name="evil", advertise_url=stand_in[0])
        await etcd.put(records.node_key(prefix, "evil"), records.encode(record))
        peers = PeerCaller("me", NodeDirectory(etcd, prefix), ClusterToken(CLUSTER_TOKEN), 5.0)
        await peers.start()
        try:
            yield ArtifactPuller(peers)
        finally:
            await peers.stop()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir(mode=0o1733)
    return models


def writer(root: Path, name: str = "model.joblib", directory: str = "m", size: int = len(BYTES)) -> ModelFileWriter:
    return ModelFileWriter(root / directory, name, [root], MODEL_UID, MODEL_UID, size)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part"))


async def test_a_pulled_file_is_moved_into_place_whole_and_owned_by_the_models_user(
    puller: ArtifactPuller, root: Path,
) -> None:
    path = await puller.pull("evil", "good", Artifact(SHA, len(BYTES)), writer(root))
    assert path == root / "m" / "model.joblib" and path.read_bytes() == BYTES
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (MODEL_UID, MODEL_UID, 0o640)
    assert path.parent.stat().st_uid == MODEL_UID and leftovers(path.parent) == []


@pytest.mark.parametrize(("how", "why"), [
    ("other-version", "has another version of model other-version: sha256 " + "0" * 64),
    ("other-bytes", f"have sha256 {hashlib.sha256(bytes(reversed(BYTES))).hexdigest()}, not {SHA}"),
    ("truncated", "broke off after"),
    ("no-length", "(Content-Length None), wanted 300000"),
    ("refused", "answered 409: {\"error\": \"model x has no model file\"}"),
])
async def test_a_hostile_sender_never_gets_a_file_into_place(
    puller: ArtifactPuller, root: Path, how: str, why: str,
) -> None:
    directory = root / "m"
    directory.mkdir(mode=0o750)
    os.chown(directory, MODEL_UID, MODEL_UID)
    (directory / "model.joblib").write_bytes(b"the file that was there")
    with pytest.raises(ArtifactRefused) as refused:
        await puller.pull("evil", how, Artifact(SHA, len(BYTES)), writer(root))
    assert why in str(refused.value)
    assert (directory / "model.joblib").read_bytes() == b"the file that was there"
    assert leftovers(directory) == []


async def test_ids_with_paths_and_oversize_files_are_refused_before_any_request(
    puller: ArtifactPuller, root: Path, stand_in: tuple[str, list[str]],
) -> None:
    for node_id, model_id in (("evil", "../../etc/passwd"), ("evil", "a/b"), ("../evil", "good"), ("evil", "")):
        with pytest.raises(ArtifactRefused, match=r"is not a (node|model) id"):
            await puller.pull(node_id, model_id, Artifact(SHA, len(BYTES)), writer(root))
    small = ArtifactPuller(puller.peers, max_bytes=1000)
    with pytest.raises(ArtifactRefused, match="more than the 1000 bytes copied"):
        await small.pull("evil", "good", Artifact(SHA, len(BYTES)), writer(root))
    with pytest.raises(ArtifactRefused, match="64 lower-case hex digits"):
        await puller.pull("evil", "good", Artifact("../" + SHA[3:], len(BYTES)), writer(root))
    assert stand_in[1] == []  # not one of them reached the node
    assert not (root / "m").exists()


async def test_the_writer_never_follows_a_symlink_out_of_the_roots(
    puller: ArtifactPuller, root: Path, tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # The model's directory swapped for a symlink: refused, nothing written out there.
    (root / "m").symlink_to(outside)
    with pytest.raises(ArtifactRefused, match="is a symlink or not a directory"):
        await puller.pull("evil", "good", Artifact(SHA, len(BYTES)), writer(root))
    assert list(outside.iterdir()) == []
    # The model file itself a symlink: the rename replaces the link, never its target.
    (root / "m").unlink()
    (root / "m").mkdir(mode=0o750)
    os.chown(root / "m", MODEL_UID, MODEL_UID)
    target = outside / "precious"
    target.write_bytes(b"keep me")
    (root / "m" / "model.joblib").symlink_to(target)
    path = await puller.pull("evil", "good", Artifact(SHA, len(BYTES)), writer(root))
    assert not path.is_symlink() and path.read_bytes() == BYTES and target.read_bytes() == b"keep me"
    # A directory another model's user owns is not written into.
    (root / "other").mkdir(mode=0o750)
    os.chown(root / "other", MODEL_UID + 1, MODEL_UID + 1)
    with pytest.raises(ArtifactRefused, match="belongs to another model's user"):
        await puller.pull("evil", "good", Artifact(SHA, len(BYTES)), writer(root, directory="other"))
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(ModelDirError, match="is not a file name"):
            writer(root, name=bad)


def test_the_sender_reads_a_model_file_only_through_real_directories(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    (root / "m" / "f").write_bytes(b"model")
    fd = open_model_file(root / "m" / "f", [root])
    os.close(fd)
    (root / "link").symlink_to(root / "m")
    (root / "m" / "shadow").symlink_to("/etc/shadow")
    os.mkfifo(root / "m" / "fifo")
    for path, why in ((root / "link" / "f", "symlink or not a directory"), (root / "m" / "shadow", "symlink"),
                      (root / "m" / "fifo", "not a regular file"), (tmp_path / "elsewhere", "outside the model roots")):
        with pytest.raises(ModelDirError, match=why):
            open_model_file(path, [root])
    with pytest.raises(FileNotFoundError):
        open_model_file(root / "m" / "missing", [root])


# --- the sender: a real agent -------------------------------------------------------------------


def pure_body(name: str = "pure") -> dict[str, Any]:
    return {"name": name, "model_path": "models/pure/p.json", "script_path": "scripts/pure_model.py",
            "command": "python3", "args": ["scripts/pure_model.py", "train", "models/pure/p.json"]}


def with_pure_script(agent: AgentProcess) -> AgentProcess:
    (agent.workdir / "scripts").mkdir(exist_ok=True)
    shutil.copy(PURE_MODEL, agent.workdir / "scripts" / "pure_model.py")
    return agent


async def fetch(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        return answer.status, dict(answer.headers), await answer.read()


async def test_an_agent_sends_a_trained_model_file_to_peers_only(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess], tmp_path: Path,  # noqa: F811
) -> None:
    prefix = new_prefix("artifacts")
    c = with_pure_script(cluster_agent(agent_factory, etcd_shared.endpoints, "c", prefix=prefix))
    c.start()
    model = deploy_and_train(c, pure_body())
    url = f"{c.url}/api/cluster/artifacts/{model['id']}"
    peer = {HEADER: CLUSTER_TOKEN}
    file = c.workdir / "models" / "pure" / "p.json"

    status, headers, body = await fetch(url, peer)
    assert status == 200 and body == file.read_bytes()
    assert headers[SHA256_HEADER] == hashlib.sha256(body).hexdigest() and headers[SIZE_HEADER] == str(len(body))
    assert headers["Content-Type"] == "application/octet-stream"

    # Not a peer: 401, with the API token too (the API token is no cluster token), or a wrong one.
    for headers_sent in ({}, {"Authorization": f"Bearer {c.api.token}"}, {HEADER: "not-the-token"}):
        status, _, body = await fetch(url, headers_sent)
        assert status == 401 and file.read_bytes() not in body
    # A path for an id: never a file.
    for bad in ("..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "no-such-model"):
        status, _, body = await fetch(f"{c.url}/api/cluster/artifacts/{bad}", peer)
        assert status in (400, 404) and b"root:" not in body, (bad, status, body)

    # The real puller takes it from the real agent.
    async with EtcdClient(EtcdOptions(etcd_shared.endpoints, timeout=1.0)) as etcd:
        peers = PeerCaller("me", NodeDirectory(etcd, prefix), ClusterToken(CLUSTER_TOKEN), 5.0)
        await peers.start()
        try:
            root = tmp_path / "receiver"
            root.mkdir(mode=0o1733)
            wanted = Artifact(hashlib.sha256(file.read_bytes()).hexdigest(), file.stat().st_size)
            pulled = await ArtifactPuller(peers).pull(
                "c", model["id"], wanted, ModelFileWriter(root / "pure", "p.json", [root], MODEL_UID, MODEL_UID,
                                                          wanted.size))
            assert pulled.read_bytes() == file.read_bytes()
        finally:
            await peers.stop()

    # The model's user swaps its file for a symlink to a secret of root's: what is sent is the
    # version's own copy of its artifact, kept by the agent when training completed
    # (cnetd/ml/versions), never what the link names. (With serving.version_copies off the
    # model file itself is sent, and the link is refused: the test below.)
    original = file.read_bytes()
    file.unlink()
    file.symlink_to("/etc/shadow")
    status, _, body = await fetch(url, peer)
    assert status == 200 and body == original, body[:200]
    shadow = Path("/etc/shadow").read_bytes()
    assert not shadow or shadow[:20] not in body


async def test_with_version_copies_off_a_model_file_swapped_for_a_symlink_is_not_sent(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],  # noqa: F811
) -> None:
    prefix = new_prefix("artifacts")
    c = with_pure_script(cluster_agent(agent_factory, etcd_shared.endpoints, "c", prefix=prefix,
                                       extra={"serving": {"version_copies": False}}))
    c.start()
    model = deploy_and_train(c, pure_body())
    file = c.workdir / "models" / "pure" / "p.json"
    file.unlink()
    file.symlink_to("/etc/shadow")
    status, _, body = await fetch(f"{c.url}/api/cluster/artifacts/{model['id']}", {HEADER: CLUSTER_TOKEN})
    assert status == 409 and b"is a symlink" in body, body
    shadow = Path("/etc/shadow").read_bytes()
    assert not shadow or shadow[:20] not in body
