"""The Host check against a real agent: a request that names another host (the shape of a
DNS-rebinding attack) gets 421 and changes nothing; the agent's own names pass."""

from __future__ import annotations

import socket

import pytest

from cnetd.config import default_config
from cnetd.security.hosts import AllowedHosts, host_of, interface_addresses
from tests.support.agent import AgentProcess
from tests.support.http import Client

TOKEN = "host-check-token-0123456789"
PROCESS = {"name": "rebound", "type": "process", "command": "true"}


def assert_misdirected(reply, host: str) -> None:  # type: ignore[no-untyped-def]
    assert reply.status == 421, (reply.status, reply.text)
    assert set(reply.body) == {"error", "status", "timestamp", "details"}
    assert reply.body["status"] == 421
    assert f"Host '{host}'" in reply.body["error"] and "agent.allowed_hosts" in reply.body["error"]
    assert reply.body["details"] == {"host": host, "config_key": "agent.allowed_hosts"}


def test_a_dns_rebinding_post_is_refused_and_creates_nothing(agent: AgentProcess) -> None:
    """The attack: evil.example's page, after its name was re-pointed at 127.0.0.1, posts a
    task to the agent from the browser. The browser sends the page's own Host and Origin."""
    rebound = {"Host": "evil.example", "Origin": "http://evil.example"}
    reply = agent.api.post("/api/tasks", PROCESS, headers=rebound)
    assert_misdirected(reply, "evil.example")
    with_port = agent.api.post("/api/tasks", PROCESS, headers={**rebound, "Host": f"evil.example:{agent.port}"})
    assert_misdirected(with_port, f"evil.example:{agent.port}")
    assert agent.api.get("/api/tasks").body == []

    same = agent.api.post("/api/tasks", PROCESS, headers={"Host": f"127.0.0.1:{agent.port}"})
    assert same.status == 201, same.text
    assert [t["id"] for t in agent.api.get("/api/tasks").body] == [same.body["id"]]


@pytest.mark.parametrize("path", ["/", "/tasks", "/static/app.css", "/login", "/api/health", "/api/openapi.json",
                                  "/v2", "/v2/health/live", "/metrics", "/no/such/page"])
def test_every_path_checks_the_host(agent: AgentProcess, path: str) -> None:
    assert_misdirected(agent.api.get(path, headers={"Host": "rebind.attacker.test"}), "rebind.attacker.test")
    assert agent.api.get(path, headers={"Host": f"127.0.0.1:{agent.port}"}).status != 421


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost", "LocalHost:{port}", "localhost.",
                                  "[::1]", "[::1]:{port}", "127.0.0.2:{port}", "{hostname}", "{hostname}:{port}"])
def test_the_agents_own_names_pass(agent: AgentProcess, host: str) -> None:
    header = host.format(port=agent.port, hostname=socket.gethostname().upper())
    assert agent.api.get("/api/tasks", headers={"Host": header}).status == 200


@pytest.mark.parametrize("host", ["", "evil.example:80x", "[::1", "[::1]junk", "127.0.0.1.evil.example",
                                  "localhost.evil.example", "192.0.2.10", "[2001:db8::1]:{port}", "user@127.0.0.1"])
def test_other_hosts_and_malformed_headers_are_refused(agent: AgentProcess, host: str) -> None:
    header = host.format(port=agent.port)
    assert_misdirected(agent.api.get("/api/tasks", headers={"Host": header}), header)


def test_configured_names_pass(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory({"agent": {
        "node_name": "gpu-box-7", "advertise_url": "http://adv.example.net:8080",
        "allowed_hosts": ["cnet.example.org", "[2001:db8::7]", "198.51.100.7"],
    }}).start()
    for host in ("gpu-box-7", "GPU-BOX-7:8080", "adv.example.net", "cnet.example.org:443", "[2001:db8::7]:80",
                 "198.51.100.7"):
        assert agent.api.get("/api/tasks", headers={"Host": host}).status == 200, host
    assert_misdirected(agent.api.get("/api/tasks", headers={"Host": "example.org"}), "example.org")


def test_a_wildcard_bind_accepts_every_interface_address(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory({"agent": {"address": "0.0.0.0"}, "auth": {"tokens": [TOKEN]}}).start()
    client = Client(agent.url, TOKEN)
    addresses = interface_addresses()
    assert addresses, "psutil found no interface address"
    for address in addresses:
        shown = f"[{address}]" if ":" in address else address
        assert client.get("/api/tasks", headers={"Host": f"{shown}:{agent.port}"}).status == 200, address
    assert_misdirected(client.get("/api/tasks", headers={"Host": "192.0.2.10"}), "192.0.2.10")


def test_a_specific_bind_address_is_a_name_and_other_interfaces_are_not(tmp_path) -> None:  # type: ignore[no-untyped-def]
    hosts = AllowedHosts(default_config(tmp_path, agent={"address": "10.1.2.3"}), interfaces=lambda: {"10.9.9.9"})
    assert hosts.allows("10.1.2.3") and not hosts.allows("10.9.9.9")
    wildcard = AllowedHosts(default_config(tmp_path, agent={"address": "::"}), interfaces=lambda: {"10.9.9.9"})
    assert wildcard.allows("10.9.9.9") and not wildcard.allows("10.1.2.3")


def test_host_of() -> None:
    assert host_of("Example.COM.:8080") == "example.com"
    assert host_of("[::FFFF:127.0.0.1]:1") == "127.0.0.1"
    assert host_of("[fe80::1%25eth0]") == "fe80::1"
    assert host_of("::1") == "::1"
    assert host_of("a:b:c") is None and host_of("[::1]x") is None and host_of("host:") is None
