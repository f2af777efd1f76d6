"""The package-index settings an environment build uses: pip's effective configuration as
the agent sees it (its config files and PIP_* variables), handed to the build task as PIP_*
variables, with PIP_CONFIG_FILE=/dev/null so that the build reads no file of its own.

The build runs under a uid of its own with a private HOME, so it could not read root's
~/.config/pip/pip.conf; asking pip itself (`pip config list`) here, as the agent, is what
makes a mirror, a wheel directory or a constraint file configured for the node work there.
"""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

# pip options that choose where packages come from and how they are fetched.
PASSED_OPTIONS = (
    "index-url", "extra-index-url", "find-links", "no-index", "trusted-host", "cert", "client-cert",
    "default-timeout", "timeout", "retries", "proxy", "constraint", "only-binary", "no-binary", "prefer-binary", "pre",
)
# The agent's variables a download needs (proxies, CA bundles).
PASSED_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
                    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")
SECTIONS = ("global", "install", ":env:")  # later ones win, as in pip


def parse_config_list(text: str) -> dict[str, str]:
    """`pip config list` output ("section.option='value'") merged into option -> value."""
    found: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        name, sep, raw = line.partition("=")
        if not sep or "." not in name:
            continue
        section, option = name.rsplit(".", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw.strip("'\"")
        found.setdefault(section, {})[option] = str(value)
    merged: dict[str, str] = {}
    for section in SECTIONS:
        merged.update(found.get(section, {}))
    return merged


def pip_settings(agent_env: Mapping[str, str]) -> dict[str, str]:
    """pip's effective index settings for the agent, as option -> value ({} when pip cannot say)."""
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                              timeout=30, env=dict(agent_env), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot read pip's configuration (%s); environment builds use pip's defaults", exc)
        return {}
    if done.returncode != 0:
        log.warning("pip config list failed (%s); environment builds use pip's defaults", done.stderr.strip()[:200])
        return {}
    return parse_config_list(done.stdout)


def build_variables(settings: Mapping[str, str], agent_env: Mapping[str, str]) -> dict[str, str]:
    """The variables a build task gets: the passed pip options as PIP_*, the agent's proxy
    and CA variables, and no config file."""
    env = {f"PIP_{option.upper().replace('-', '_')}": value for option, value in settings.items()
           if option in PASSED_OPTIONS}
    env.update({name: agent_env[name] for name in PASSED_VARIABLES if agent_env.get(name)})
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env
