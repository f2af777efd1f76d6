"""cnetd.cluster.etcd against real etcd members (tests/support/etcd.py): keys, txns, leases,
watches, endpoint rotation, auth and TLS. Nothing here is mocked; the one fake is a
loopback HTTP server that is not etcd, standing in for a wrong or hostile endpoint."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from cnetd.cluster.etcd import (
    Compare,
    Delete,
    EtcdAuthError,
    EtcdClient,
    EtcdOptions,
    EtcdOutcomeUnknown,
    EtcdUnavailable,
    Get,
    LeaseLost,
    Put,
    PutResult,
    RangeResult,
    Watch,
    WatchCompacted,
    WatchEvent,
    prefix_range_end,
)
from tests.support.etcd import EtcdCluster, EtcdMember, TlsFiles, eventually, make_tls_files

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 2.0  # the client's per-call timeout in these tests


def client_for(endpoints: tuple[str, ...] | list[str], **options: object) -> EtcdClient:
    return EtcdClient(EtcdOptions(endpoints=tuple(endpoints), timeout=TIMEOUT, **options))  # type: ignore[arg-type]


@pytest.fixture
async def etcd(etcd_shared: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with client_for(etcd_shared.endpoints) as client:
        yield client


@pytest.fixture
def prefix() -> bytes:
    """A prefix of its own for each test on the shared member."""
    return f"/t/{uuid.uuid4().hex}/".encode()


async def next_events(watch: Watch, count: int, timeout: float = 5.0) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    async with asyncio.timeout(timeout):
        async for batch in watch:
            events.extend(batch.events)
            if len(events) >= count:
                return events
    raise AssertionError(f"the watch ended after {len(events)} of {count} events")


def followers_first(cluster: EtcdCluster) -> list[EtcdMember]:
    leader = cluster.leader()
    return [m for m in cluster.members if m is not leader] + [leader]


# --- wire format, without etcd -------------------------------------------------------------


def test_prefix_range_end_increments_the_last_byte_below_0xff() -> None:
    assert prefix_range_end(b"/cnet/") == b"/cnet0"
    assert prefix_range_end(b"a\xff\xff") == b"b"
    assert prefix_range_end(b"\xff") == b"\x00"  # no end: every key from the prefix on
    assert prefix_range_end(b"") == b"\x00"


@pytest.mark.parametrize("options, problem", [
    ({"endpoints": ("127.0.0.1:2379",)}, "expected http(s)://host:port"),
    ({"endpoints": ("http://127.0.0.1:2379/v3",)}, "expected http(s)://host:port"),
    ({"endpoints": ("http://user:pw@127.0.0.1:2379",)}, "expected http(s)://host:port"),
    ({"endpoints": "http://127.0.0.1:2379"}, "expected a list"),
    ({"endpoints": ()}, "expected a list"),
    ({"endpoints": ("http://127.0.0.1:2379",), "username": "root"}, "both username and password"),
    ({"endpoints": ("http://127.0.0.1:2379",), "cert_file": "c.pem"}, "both cert_file and key_file"),
    ({"endpoints": ("http://127.0.0.1:2379",), "timeout": 0}, "positive number of seconds"),
])
def test_bad_options_say_what_is_wrong(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        EtcdOptions(**options)  # type: ignore[arg-type]


# --- keys ----------------------------------------------------------------------------------


async def test_put_get_range_delete_are_binary_safe(etcd: EtcdClient, prefix: bytes) -> None:
    odd_key = prefix + b"\x00\xff/\n\"k"
    odd_value = bytes(range(256))
    await etcd.put(odd_key, odd_value)
    await etcd.put(prefix + b"empty", b"")
    await etcd.put(prefix[:-1] + b"0", b"just past the prefix")  # what a sloppy range end would include
    try:
        found = await etcd.get(odd_key)
        assert found is not None and found.key == odd_key and found.value == odd_value
        assert found.version == 1 and found.create_revision == found.mod_revision > 0 and found.lease == 0
        empty = await etcd.get(prefix + b"empty")
        assert empty is not None and empty.value == b""  # proto3 leaves the empty value out
        assert await etcd.get(prefix + b"missing") is None

        listed = await etcd.range(prefix, prefix=True)
        assert [kv.key for kv in listed.kvs] == sorted([odd_key, prefix + b"empty"])
        assert listed.count == 2 and not listed.more and listed.revision >= found.mod_revision

        none = await etcd.range(prefix + b"nothing/", prefix=True)
        assert none == RangeResult(revision=none.revision, kvs=(), count=0, more=False)

        limited = await etcd.range(prefix, prefix=True, limit=1, keys_only=True)
        assert len(limited.kvs) == 1 and limited.more and limited.count == 2 and limited.kvs[0].value == b""
        assert (await etcd.range(prefix, prefix=True, count_only=True)).count == 2

        second = await etcd.put(odd_key, b"v2", prev_kv=True)
        assert second.prev_kv is not None and second.prev_kv.value == odd_value
        old = await etcd.range(odd_key, revision=found.mod_revision)
        assert old.kvs[0].value == odd_value  # a read at an older revision

        deleted = await etcd.delete(prefix, prefix=True, prev_kv=True)
        assert deleted.deleted == 2 and {kv.key for kv in deleted.prev_kvs} == {odd_key, prefix + b"empty"}
        assert (await etcd.delete(odd_key)).deleted == 0  # proto3 leaves deleted: 0 out
        assert await etcd.get(prefix[:-1] + b"0") is not None
    finally:
        await etcd.delete(prefix[:-1] + b"0")


async def test_the_client_counts_the_requests_it_sends_by_path(etcd_shared: EtcdCluster, prefix: bytes) -> None:
    async with client_for(etcd_shared.endpoints) as etcd:
        await etcd.put(prefix + b"k", b"v")
        await etcd.get(prefix + b"k")
        await etcd.txn([Compare.absent(prefix + b"k")], [Put(prefix + b"k", b"w")])
        async with etcd.watch(prefix, prefix=True):
            pass
        assert dict(etcd.requests) == {"/v3/kv/put": 1, "/v3/kv/range": 1, "/v3/kv/txn": 1, "/v3/watch": 1}
        await etcd.delete(prefix + b"k")


async def test_a_prefix_of_0xff_bytes_ranges_to_the_end_of_the_keyspace(etcd: EtcdClient, prefix: bytes) -> None:
    key = b"\xff\xff" + prefix
    await etcd.put(key, b"x")
    try:
        assert [kv.key for kv in (await etcd.range(b"\xff\xff", prefix=True)).kvs] == [key]
    finally:
        await etcd.delete(key)


# --- txn -----------------------------------------------------------------------------------


async def test_txn_create_if_absent_takes_the_key_once(etcd: EtcdClient, prefix: bytes) -> None:
    key = prefix + b"leader"
    first = await etcd.txn([Compare.absent(key)], [Put(key, b"node-a")], [Get(key)])
    assert first.succeeded and isinstance(first.responses[0], PutResult)
    second = await etcd.txn([Compare.absent(key)], [Put(key, b"node-b")], [Get(key)])
    assert not second.succeeded  # proto3 leaves "succeeded": false out
    held = second.responses[0]
    assert isinstance(held, RangeResult) and held.kvs[0].value == b"node-a"
    assert held.kvs[0].create_revision == first.revision


async def test_txn_compare_and_swap(etcd: EtcdClient, prefix: bytes) -> None:
    key = prefix + b"k"
    put = await etcd.put(key, b"one")
    stale = put.revision - 1
    lost = await etcd.txn([Compare.mod_revision(key, "==", stale)], [Put(key, b"two")])
    assert not lost.succeeded and lost.responses == ()
    assert (await etcd.get(key)).value == b"one"  # type: ignore[union-attr]

    swapped = await etcd.txn(
        [Compare.mod_revision(key, "==", put.revision), Compare.value(key, "==", b"one"),
         Compare.version(key, "==", 1), Compare.create_revision(key, ">", 0), Compare.lease(key, "==", 0)],
        [Put(key, b"two"), Get(key)],
    )
    assert swapped.succeeded
    after = swapped.responses[1]
    assert isinstance(after, RangeResult) and after.kvs[0].value == b"two" and after.kvs[0].version == 2

    removed = await etcd.txn([Compare.value(key, "!=", b"one")], [Delete(key, prev_kv=True)], [Get(key)])
    assert removed.succeeded and removed.responses[0].deleted == 1  # type: ignore[union-attr]
    assert await etcd.get(key) is None


def test_compares_refuse_operands_of_the_wrong_kind() -> None:
    with pytest.raises(ValueError, match="VALUE compare needs bytes"):
        Compare("k", "VALUE", "==", 3).to_json()
    with pytest.raises(ValueError, match="MOD compare needs an int"):
        Compare("k", "MOD", "==", b"3").to_json()
    with pytest.raises(ValueError, match="compare op"):
        Compare("k", "MOD", "=~", 3).to_json()  # type: ignore[arg-type]


# --- leases --------------------------------------------------------------------------------


async def test_lease_grant_keepalive_time_to_live_revoke(etcd: EtcdClient, prefix: bytes) -> None:
    lease = await etcd.grant(30)
    assert lease.id > 0 and lease.ttl == 30
    await etcd.put(prefix + b"mine", b"x", lease=lease.id)
    assert (await etcd.get(prefix + b"mine")).lease == lease.id  # type: ignore[union-attr]
    refreshed = await etcd.keepalive(lease.id)
    assert refreshed.id == lease.id and refreshed.ttl == 30
    info = await etcd.time_to_live(lease.id, keys=True)
    assert 0 < info.ttl <= 30 and info.granted_ttl == 30 and info.keys == (prefix + b"mine",)

    assert await etcd.revoke(lease.id) is True
    assert await etcd.get(prefix + b"mine") is None  # its keys went with it
    with pytest.raises(LeaseLost) as lost:
        await etcd.keepalive(lease.id)  # the gateway answers 200, with no TTL
    assert lost.value.lease_id == lease.id
    with pytest.raises(LeaseLost):
        await etcd.time_to_live(lease.id)  # etcd says TTL -1
    assert await etcd.revoke(lease.id) is False  # already gone: not an error


async def test_an_expired_lease_is_lost_and_its_keys_vanish(etcd: EtcdClient, prefix: bytes) -> None:
    lease = await etcd.grant(2)  # etcd's minimum with default timing
    await etcd.put(prefix + b"node", b"alive", lease=lease.id)
    assert (await etcd.keepalive(lease.id)).ttl == lease.ttl

    async def gone() -> bool:
        return await etcd.get(prefix + b"node") is None
    await eventually(gone, lease.ttl + 3, "the key on the expired lease to vanish", interval=0.2)
    with pytest.raises(LeaseLost):
        await etcd.keepalive(lease.id)


async def test_a_lease_id_of_our_choosing_and_a_ttl_below_one_is_refused(etcd: EtcdClient) -> None:
    chosen = int(uuid.uuid4().int % (2 ** 62)) + 1
    lease = await etcd.grant(5, lease_id=chosen)
    assert lease.id == chosen
    await etcd.revoke(lease.id)
    with pytest.raises(ValueError, match="at least 1 second"):
        await etcd.grant(0)


# --- watch ---------------------------------------------------------------------------------


async def test_watch_from_a_revision_sees_puts_and_deletes_in_order(etcd: EtcdClient, prefix: bytes) -> None:
    first = await etcd.put(prefix + b"a", b"1")
    await etcd.put(prefix + b"b", b"2")
    await etcd.delete(prefix + b"a")
    await etcd.put(b"/elsewhere/" + prefix, b"not watched")
    async with etcd.watch(prefix, prefix=True, start_revision=first.revision, prev_kv=True) as watch:
        history = await next_events(watch, 3)
        assert [(e.type, e.kv.key, e.kv.value) for e in history] == [
            ("PUT", prefix + b"a", b"1"), ("PUT", prefix + b"b", b"2"), ("DELETE", prefix + b"a", b"")]
        assert history[2].prev_kv is not None and history[2].prev_kv.value == b"1"
        assert history[0].kv.mod_revision < history[1].kv.mod_revision < history[2].kv.mod_revision

        await etcd.put(prefix + b"b", b"3")
        live = await next_events(watch, 1)
        assert (live[0].type, live[0].kv.value, live[0].kv.version) == ("PUT", b"3", 2)
        assert live[0].prev_kv is not None and live[0].prev_kv.value == b"2"
    await etcd.delete(b"/elsewhere/" + prefix)


async def test_a_watch_without_a_revision_starts_now(etcd: EtcdClient, prefix: bytes) -> None:
    await etcd.put(prefix + b"before", b"old")
    async with etcd.watch(prefix + b"before") as watch:
        put = await etcd.put(prefix + b"before", b"new")
        assert watch.next_revision <= put.revision
        events = await next_events(watch, 1)
        assert [(e.kv.value, e.prev_kv) for e in events] == [(b"new", None)]  # no prev_kv unless asked
        assert watch.next_revision == put.revision + 1


async def test_a_watch_from_a_compacted_revision_says_list_again(etcd_one: EtcdCluster) -> None:
    async with client_for(etcd_one.endpoints) as etcd:
        first = await etcd.put("/k", "1")
        last = await etcd.put("/k", "2")
        etcd_one.compact(last.revision)
        with pytest.raises(WatchCompacted) as compacted:
            async with etcd.watch("/k", start_revision=first.revision) as watch:
                await next_events(watch, 1)
        assert compacted.value.compact_revision == last.revision
        async with etcd.watch("/k", start_revision=last.revision) as watch:  # what the caller does next
            assert (await next_events(watch, 1))[0].kv.value == b"2"


async def test_a_watch_resumes_on_another_member_without_losing_or_repeating(etcd_three: EtcdCluster) -> None:
    members = followers_first(etcd_three)
    async with client_for([m.client_url for m in members]) as etcd, etcd.watch("/w/", prefix=True) as watch:
        assert watch.endpoint == members[0].client_url
        await etcd.put("/w/1", "one")
        assert [e.kv.value for e in await next_events(watch, 1)] == [b"one"]
        members[0].kill()
        for n in (2, 3, 4):
            await etcd.put(f"/w/{n}", str(n))  # while the watch's member is dead
        events = await next_events(watch, 3)
        assert [e.kv.value for e in events] == [b"2", b"3", b"4"]
        assert watch.endpoint != members[0].client_url


async def test_a_watch_on_a_member_that_loses_its_leader_does_not_hang(etcd_three: EtcdCluster) -> None:
    """Without the gateway's hasleader metadata the stream stays open and silent forever."""
    members = followers_first(etcd_three)
    async with client_for([members[0].client_url]) as etcd, etcd.watch("/q") as watch:
        members[1].kill()
        members[2].kill()
        with pytest.raises(EtcdUnavailable, match="no leader"):
            await next_events(watch, 1, timeout=15)


# --- endpoints -----------------------------------------------------------------------------


async def test_killing_the_member_in_use_moves_the_next_call_on(etcd_three: EtcdCluster) -> None:
    members = followers_first(etcd_three)
    async with client_for([m.client_url for m in members]) as etcd:
        await etcd.put("/k", "before")
        assert etcd.endpoint == members[0].client_url
        members[0].kill()
        started = time.monotonic()
        assert (await etcd.get("/k")).value == b"before"  # type: ignore[union-attr]
        assert time.monotonic() - started < TIMEOUT
        assert etcd.endpoint == members[1].client_url
        await etcd.put("/k", "after")  # and writes go on too


async def test_a_hung_member_costs_one_slice_of_the_call(etcd_three: EtcdCluster) -> None:
    members = followers_first(etcd_three)
    async with client_for([m.client_url for m in members]) as etcd:
        await etcd.put("/k", "v")
        members[0].pause()
        try:
            started = time.monotonic()
            assert (await etcd.get("/k")).value == b"v"  # type: ignore[union-attr]
            took = time.monotonic() - started
            slice_ = etcd.options.attempt_timeout()
            # One slice spent on the hung member, and the answer from the next within the call's
            # budget (a client that waited the whole budget there would have failed the call).
            assert slice_ <= took < TIMEOUT, took
            assert etcd.endpoint == members[1].client_url
        finally:
            members[0].resume()


async def test_a_txn_that_may_have_been_applied_is_not_sent_again(etcd_three: EtcdCluster) -> None:
    members = followers_first(etcd_three)
    async with client_for([m.client_url for m in members]) as etcd:
        await etcd.get("/k")
        members[0].pause()
        try:
            with pytest.raises(EtcdOutcomeUnknown) as unknown:
                await etcd.txn([Compare.absent("/k")], [Put("/k", "mine")])
            assert unknown.value.endpoints == (members[0].client_url,)
            assert "read back" in str(unknown.value)
            await etcd.put("/other", "x")  # a put is retried elsewhere; the rotation moved on anyway
            assert etcd.endpoint == members[1].client_url
        finally:
            members[0].resume()


async def test_after_the_leader_dies_calls_succeed_again_within_an_election(etcd_three: EtcdCluster) -> None:
    leader = etcd_three.leader()
    async with client_for([leader.client_url] + [m.client_url for m in etcd_three.members if m is not leader]) as etcd:
        await etcd.put("/k", "1")
        leader.kill()

        async def put() -> bool:
            return (await etcd.put("/k", "2")).revision > 0
        await eventually(put, 10, "a put after the leader died")
        assert etcd.endpoint != leader.client_url


async def test_all_members_down_is_one_clear_error_and_calls_resume_when_they_return(etcd_three: EtcdCluster) -> None:
    async with client_for(etcd_three.endpoints) as etcd:
        await etcd.put("/k", "kept")
        for member in etcd_three.members:
            member.kill()
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable) as down:
            await etcd.get("/k")
        assert time.monotonic() - started < TIMEOUT + 0.5
        message = str(down.value)
        assert message.startswith("etcd unavailable: ")
        assert set(down.value.endpoints) == set(etcd_three.endpoints)
        # The member in use may show as a kept-alive connection that closed; the others refuse.
        for endpoint in etcd_three.endpoints:
            assert f"{endpoint}: cannot connect: Connection refused" in message \
                or f"{endpoint}: the connection closed before an answer" in message

        etcd_three.restart(*etcd_three.members)

        async def read() -> bool:
            found = await etcd.get("/k")
            return found is not None and found.value == b"kept"
        await eventually(read, 10, "a read once etcd is back")


@pytest.fixture
async def not_etcd() -> AsyncIterator[list[str]]:
    """Two loopback HTTP servers that are not etcd (an HTML page, a bare 404), as a
    mistyped or hostile endpoint would be."""
    async def html(_request: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async def not_found(_request: web.Request) -> web.Response:
        return web.Response(status=404, text="404 page not found")

    runners: list[web.AppRunner] = []
    for handler in (html, not_found):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
    yield [f"http://127.0.0.1:{runner.addresses[0][1]}" for runner in runners]
    for runner in runners:
        await runner.cleanup()


async def test_an_endpoint_that_is_not_etcd_is_skipped_and_named(etcd_shared: EtcdCluster, not_etcd: list[str],
                                                                 prefix: bytes) -> None:
    async with client_for(not_etcd) as fooled:
        with pytest.raises(EtcdUnavailable) as wrong:
            await fooled.put(prefix, "x")
        assert f"{not_etcd[0]}: HTTP 200, not an etcd v3 JSON gateway answer: '<html>hello</html>'" in str(wrong.value)
        assert f"{not_etcd[1]}: HTTP 404, not an etcd v3 JSON gateway answer" in str(wrong.value)
        with pytest.raises(EtcdUnavailable, match=r"etcd watch unavailable: .*<html>hello</html>"):
            async with fooled.watch(prefix):
                pass
    async with client_for([*not_etcd, *etcd_shared.endpoints]) as etcd:
        await etcd.put(prefix, "x")
        assert etcd.endpoint == etcd_shared.endpoints[0]
        async with etcd.watch(prefix) as watch:
            await etcd.delete(prefix)
            assert [e.type for e in await next_events(watch, 1)] == ["DELETE"]


@pytest.fixture
async def flapping_watch() -> AsyncIterator[str]:
    """An endpoint whose watches are created and then dropped at once, every time."""
    async def watch(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"result":{"header":{"revision":"7"},"created":true}}\n')
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v3/watch", watch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_a_watch_that_every_endpoint_drops_at_once_gives_up(flapping_watch: str) -> None:
    async with client_for([flapping_watch]) as etcd, etcd.watch("/k") as watch:
        assert watch.next_revision == 8  # after the store's revision when it was created
        with pytest.raises(EtcdUnavailable, match=r"dropped it as soon as it opened.*the stream ended"):
            await next_events(watch, 1)
        with pytest.raises(StopAsyncIteration):
            await anext(watch)


# --- auth and TLS --------------------------------------------------------------------------


async def test_auth_logs_in_and_refuses_a_bad_password(etcd_one: EtcdCluster) -> None:
    etcd_one.enable_auth("root", "s3cret")
    async with client_for(etcd_one.endpoints) as anonymous:
        with pytest.raises(EtcdAuthError, match="user name is empty"):
            await anonymous.get("/k")
    async with client_for(etcd_one.endpoints, username="root", password="guess-42") as intruder:
        with pytest.raises(EtcdAuthError, match=r"authentication failed.*as user 'root'") as refused:
            await intruder.put("/k", "mine")
        assert "guess-42" not in str(refused.value) and "guess-42" not in repr(intruder.options)
        with pytest.raises(EtcdAuthError, match="authentication failed"):
            async with intruder.watch("/k"):
                pass
    async with client_for(etcd_one.endpoints, username="root", password="s3cret") as etcd:
        lease = await etcd.grant(30)
        await etcd.put("/k", "v1", lease=lease.id)
        assert (await etcd.get("/k")).value == b"v1"  # type: ignore[union-attr]
        assert (await etcd.keepalive(lease.id)).ttl == 30
        async with etcd.watch("/k") as watch:
            await etcd.put("/k", "v2")
            assert [e.kv.value for e in await next_events(watch, 1)] == [b"v2"]


async def test_a_stale_token_means_logging_in_again(etcd_one: EtcdCluster) -> None:
    etcd_one.enable_auth("root", "s3cret")
    member = etcd_one.members[0]
    async with client_for(etcd_one.endpoints, username="root", password="s3cret") as etcd, \
            client_for(etcd_one.endpoints, username="root", password="s3cret") as writer:
        await etcd.put("/k", "v1")
        async with etcd.watch("/k") as watch:
            old_token = member.request("/v3/auth/authenticate", {"name": "root", "password": "s3cret"})["token"]
            etcd_one.invalidate_tokens("root", "s3cret")
            with pytest.raises(AssertionError, match="invalid auth token"):
                member.request("/v3/kv/range", {"key": "L2s="}, token=old_token)
            assert (await etcd.get("/k")).value == b"v1"  # type: ignore[union-attr]

            etcd_one.invalidate_tokens("root", "s3cret")
            etcd_one.restart(member)  # the watch's stream breaks; it opens again with a stale token
            await writer.put("/k", "v2")  # through another client, so only the watch logs `etcd` in
            assert [e.kv.value for e in await next_events(watch, 1)] == [b"v2"]


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make certificates")
    return make_tls_files(tmp_path_factory.mktemp("etcd-tls"))


async def test_tls_with_a_client_certificate(tls_files: TlsFiles, tmp_path: Path) -> None:
    with EtcdCluster(tmp_path / "etcd", tls=tls_files) as cluster:
        endpoint = cluster.endpoints[0]
        assert endpoint.startswith("https://")
        async with client_for(cluster.endpoints, ca_file=str(tls_files.ca), cert_file=str(tls_files.client_cert),
                              key_file=str(tls_files.client_key)) as etcd:
            await etcd.put("/tls", "ok")
            assert (await etcd.get("/tls")).value == b"ok"  # type: ignore[union-attr]
            async with etcd.watch("/tls") as watch:
                await etcd.put("/tls", "watched")
                assert [e.kv.value for e in await next_events(watch, 1)] == [b"watched"]
        async with client_for(cluster.endpoints) as untrusting:
            with pytest.raises(EtcdUnavailable, match=f"{endpoint}: TLS: .*certificate verify failed"):
                await untrusting.get("/tls")
        async with client_for(cluster.endpoints, ca_file=str(tls_files.ca)) as no_certificate:
            with pytest.raises(EtcdUnavailable, match=f"{endpoint}: TLS: .*bad certificate"):
                await no_certificate.get("/tls")
            with pytest.raises(EtcdUnavailable, match="bad certificate"):  # not "outcome unknown"
                await no_certificate.txn([Compare.absent("/tls")], [Put("/tls", "x")])
