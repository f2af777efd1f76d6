"""HTTPS for the API and the UI: the server's ssl.SSLContext from agent.tls (TLS 1.2+)."""

from __future__ import annotations

import ssl
from pathlib import Path

from cnetd.config import Config, ConfigError, TlsSection


def server_context(config: Config) -> ssl.SSLContext | None:
    """None without agent.tls; else a context that serves its certificate and key.

    Every problem is a ConfigError naming the file, the key and what is wrong: an unreadable
    file, a file that holds no certificate or no private key, a key that does not belong to
    the certificate."""
    tls = config.agent.tls
    if not tls.enabled:
        return None
    label = str(config.source) if config.source else "config"
    return _load(tls, label)


def _load(tls: TlsSection, label: str) -> ssl.SSLContext:
    assert tls.cert_file is not None and tls.key_file is not None
    cert_text = _read(tls.cert_file, label, "agent.tls.cert_file")
    key_text = _read(tls.key_file, label, "agent.tls.key_file")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError(f"{label}: agent.tls.cert_file: {tls.cert_file} holds no PEM certificate")
    if "PRIVATE KEY-----" not in key_text:
        raise ConfigError(f"{label}: agent.tls.key_file: {tls.key_file} holds no PEM private key")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=cert_text)  # the certificate alone
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{label}: agent.tls.cert_file: {tls.cert_file} is not a valid PEM certificate "
                          f"({_reason(exc)})") from None

    def no_password() -> str:  # never OpenSSL's prompt on the terminal of a daemon
        raise ConfigError(f"{label}: agent.tls.key_file: {tls.key_file} is encrypted; give the key unencrypted "
                          "(readable by root only)")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file, password=no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ConfigError(f"{label}: agent.tls.key_file: {tls.key_file} is not the key of the certificate in "
                              f"{tls.cert_file}") from None
        raise ConfigError(f"{label}: agent.tls.key_file: cannot use {tls.key_file} with {tls.cert_file} "
                          f"({_reason(exc)})") from None
    return context


def _read(path: Path, label: str, key: str) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{label}: {key}: cannot read {path}: {exc.strerror or exc}") from None


def _reason(exc: Exception) -> str:
    return getattr(exc, "reason", None) or str(exc)
