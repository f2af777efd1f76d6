"""HTTPS: a real agent serving agent.tls's certificate (made here with the openssl CLI),
refusing plain HTTP on that port; clear config errors for unusable files; a warning when a
non-loopback bind has no TLS."""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from cnetd.config import default_config
from cnetd.security.tls import server_context
from tests.support.agent import AgentProcess
from tests.support.http import Client

TOKEN = "tls-test-token-0123456789ab"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is needed to make a certificate")


def self_signed(directory: Path, name: str = "agent") -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1 and localhost; the certificate is its own CA."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    proc = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cnet-test",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return cert, key


@needs_openssl
def test_an_agent_with_tls_serves_https_only(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    agent = agent_factory({"agent": {"tls": {"cert_file": str(cert), "key_file": str(key)}}}, ca_file=cert).start()
    assert agent.url.startswith("https://")
    health = agent.api.get("/api/health")
    assert health.status == 200 and health.body["tls"] is True
    assert agent.api.get("/api/node").body["url"] == f"https://127.0.0.1:{agent.port}"  # the advertised URL
    assert f"serving https://127.0.0.1:{agent.port}" in agent.log_text()

    plain = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    with pytest.raises((OSError, http.client.HTTPException)):
        plain.request("GET", "/api/health")
        plain.getresponse()
    plain.close()

    untrusting = Client(agent.url, ssl_context=ssl.create_default_context())  # the system's CAs only
    with pytest.raises(OSError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        untrusting.get("/api/health")


def test_health_says_when_tls_is_off(agent: AgentProcess) -> None:
    assert agent.api.get("/api/health").body["tls"] is False


def test_a_public_bind_without_tls_warns(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory({"agent": {"address": "0.0.0.0"}, "auth": {"tokens": [TOKEN]}}).start()
    assert "listening on 0.0.0.0 without TLS: API tokens and all data travel in clear text" in agent.log_text()
    loopback = agent_factory({}, name="loopback").start()
    assert "without TLS" not in loopback.log_text()


def check_config(tmp_path: Path, agent_section: dict[str, object]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"agent": agent_section}))
    return subprocess.run([sys.executable, "-m", "cnetd", "check-config", "-config", str(path)],
                          capture_output=True, text=True, timeout=60)


@needs_openssl
def test_unusable_tls_files_are_one_line_config_errors(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    _other_cert, other_key = self_signed(tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not pem\n")
    unreadable = tmp_path / "missing.key"
    cases = [
        ({"cert_file": str(cert)}, "agent.tls.key_file: must be set too when agent.tls.cert_file is"),
        ({"cert_file": str(cert), "key_file": str(unreadable)}, f"agent.tls.key_file: cannot read {unreadable}"),
        ({"cert_file": str(junk), "key_file": str(key)}, f"agent.tls.cert_file: {junk} holds no PEM certificate"),
        ({"cert_file": str(cert), "key_file": str(junk)}, f"agent.tls.key_file: {junk} holds no PEM private key"),
        ({"cert_file": str(key), "key_file": str(cert)}, f"agent.tls.cert_file: {key} holds no PEM certificate"),
        ({"cert_file": str(cert), "key_file": str(other_key)},
         f"agent.tls.key_file: {other_key} is not the key of the certificate in {cert}"),
    ]
    for tls, message in cases:
        proc = check_config(tmp_path, {"tls": tls})
        assert proc.returncode == 2, (tls, proc.stdout)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"cnet-agent: {tmp_path / 'config.yaml'}: {message}"), (tls, lines)
    good = check_config(tmp_path, {"tls": {"cert_file": str(cert), "key_file": str(key)}})
    assert good.returncode == 0, good.stderr


@needs_openssl
def test_the_context_refuses_anything_older_than_tls_1_2(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = server_context(default_config(tmp_path, agent={"tls": {"cert_file": str(cert), "key_file": str(key)}}))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_context(default_config(tmp_path)) is None
