"""The cnet-agent command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys

from cnetd import __version__
from cnetd.bundle import restore_environment
from cnetd.config import Config, ConfigError, load_config
from cnetd.logsetup import setup_logging
from cnetd.security.auth import is_loopback
from cnetd.security.identity import Identities
from cnetd.security.tls import server_context
from cnetd.store.db import StoreError

log = logging.getLogger("cnetd")


def normalise_go_style_flags(argv: list[str]) -> list[str]:
    """The original agent took Go-style single-dash flags (-config); accept both."""
    out = []
    for arg in argv:
        if arg == "-config" or arg.startswith("-config="):
            arg = "-" + arg
        elif arg == "-version":
            arg = "--version"
        out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnet-agent",
        description="CNET Agent: deploys ML model scripts and process tasks on this node.",
    )
    parser.add_argument("-c", "--config", default="config.yaml", help="config file (default: config.yaml)")
    parser.add_argument("--version", action="version", version=f"cnet-agent {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the agent (the default)")
    check = sub.add_parser("check-config", help="validate the config file and print the effective config")
    check.add_argument("-c", "--config", dest="config_sub", help="config file")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--enter"]:  # the launch step, where the one-file binary has no python3 for it
        from cnetd.security import enter

        return enter.main(["enter", *argv[1:]])
    restore_environment()  # in the one-file binary: children must not load its bundled libraries
    args = build_parser().parse_args(normalise_go_style_flags(argv))
    path = getattr(args, "config_sub", None) or args.config
    try:
        config = load_config(path)
        Identities.from_config(config)  # a run_as user that does not exist is a config error too
        ssl_context = server_context(config)  # so is a certificate that cannot be used
    except ConfigError as exc:
        print(f"cnet-agent: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    return run(config, ssl_context)


def run(config: Config, ssl_context: ssl.SSLContext | None = None) -> int:
    from cnetd.app import create_app
    from cnetd.loop import LoopUnavailable, loop_factory
    from cnetd.sdnotify import Notifier
    from cnetd.server import ListenError, serve

    setup_logging(config.logging.level, config.logging.format)
    for warning in config.warnings:
        log.warning(warning)
    notifier = Notifier()  # reads and unsets NOTIFY_SOCKET & co: tasks must not inherit them
    address, port = config.agent.address, config.agent.port
    scheme = "https" if ssl_context else "http"
    log.info("cnet-agent %s starting: %s://%s:%d, state in %s", __version__, scheme, address, port, config.agent.state_dir)
    if ssl_context is None and not is_loopback(address):
        log.warning("listening on %s without TLS: API tokens and all data travel in clear text; "
                    "set agent.tls.cert_file and agent.tls.key_file", address)
    try:
        factory, loop_name = loop_factory(config.agent.event_loop)
        log.info("event loop: %s", loop_name)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(create_app(config), address, port, notifier, ssl_context=ssl_context))
    except LoopUnavailable as exc:
        print(f"cnet-agent: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        log.error("%s", exc)
        print(f"cnet-agent: {exc}", file=sys.stderr)
        return 1
    except ListenError as exc:
        print(f"cnet-agent: {exc.strerror}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cnet-agent: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # e.g. a sandbox that was asked for explicitly but cannot work
        print(f"cnet-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
    return 0
