"""meterproxy serve | report | reprice: argparse -> load config -> uvicorn (after uvicorn/main.py run())."""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from proxy import __version__
from proxy.app import CONFIG_ENV
from proxy.arguments import ArgumentParser
from proxy.config import Config, ConfigError
from proxy.configfile import load_config

log = logging.getLogger("meterproxy")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="meterproxy", description="An LLM reverse proxy that meters every call.")
    parser.add_argument("--version", action="version", version=f"meterproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,report,reprice}")
    serve = commands.add_parser("serve", help="start the proxy")
    serve.add_argument("--config", help=f"config file (default: ${CONFIG_ENV}, else ./config.yml)")
    serve.add_argument("--host", help="address to listen on (default: server.host, else 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port to listen on (default: server.port, else 9002)")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port (default: 1)"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands.add_parser(
        "reprice", help="write a copy of a record file priced with another config", add_help=False
    )
    commands.add_parser(
        "report", help="cost reports over the record file (see: meterproxy report --help)", add_help=False
    )
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        # uvicorn would take 70000 as 70000 % 65536 and 0 as any free port, never what was meant.
        raise argparse.ArgumentTypeError(f"{text!r}: give a port number from 1 to 65535")
    return port


def config_path(explicit: str | None, environ: Mapping[str, str]) -> Path:
    return Path(explicit or environ.get(CONFIG_ENV) or "config.yml")


def startup_warnings(config: Config, host: str) -> list[str]:
    """Set-ups that work but are probably not what the operator wants."""
    warnings = []
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    for provider in config.providers.values():
        if provider.api_key is not None and not config.auth_keys and not loopback:
            warnings.append(
                f"providers.{provider.name}.api_key is set, auth.keys is not, and the proxy listens on "
                f"{host}: "
                "anyone who can reach the port spends that key. Add auth.keys or listen on 127.0.0.1."
            )
        if config.auth_keys and provider.api_key is None:
            warnings.append(
                f"auth.keys is set but providers.{provider.name}.api_key is not: "
                "clients' keys are not forwarded, "
                "so its calls go upstream without a key."
            )
        if provider.currency != config.currency and provider.currency not in config.exchange_rates:
            warnings.append(
                f"providers.{provider.name}.currency is {provider.currency}, which exchange_rates has no "
                f"rate for: its costs stay out of the {config.currency} totals. Add "
                f"exchange_rates.{provider.currency}."
            )
    return warnings


_LISTEN_HINTS = {
    errno.EADDRINUSE: "stop what listens there, or choose another port (--port, server.port)",
    errno.EACCES: "choose a port above 1023 (--port, server.port)",
    errno.EADDRNOTAVAIL: "give an address of this machine (--host, server.host)",
}


def listen_problem(host: str, port: int) -> str | None:
    """Why the proxy cannot listen on host:port, or None. Tried before uvicorn starts: its errors do not
    always name the address, and a failed start exits with a code of its own."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on host {host!r}: {exc.strerror}; give an IP address (--host, server.host)"
    family, kind, protocol, _, address = found[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            hint = _LISTEN_HINTS.get(exc.errno or 0, "check --host and --port (server.host, server.port)")
            return f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}; {hint}"
    return None


def serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from proxy.serverlog import log_config
    from proxy.supervisor import Supervisor

    path = config_path(args.config, environ)
    try:
        config = load_config(path, environ)
    except ConfigError as exc:
        print(f"meterproxy: config error: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("meterproxy: --workers must be 1 or more", file=sys.stderr)
        return 2
    host = args.host or config.host
    port = config.port if args.port is None else args.port
    problem = listen_problem(host, port)
    if problem is not None:
        print(f"meterproxy: {problem}", file=sys.stderr)
        return 2
    # Every worker builds its app from this validated file (uvicorn needs an import string for workers).
    os.environ[CONFIG_ENV] = str(path.resolve())
    settings = uvicorn.Config(
        "proxy.app:create_app_from_environ",
        factory=True,
        host=host,
        port=port,
        workers=args.workers,
        loop="uvloop",
        http="proxy.protocol:ServerProtocol",
        lifespan="on",
        # On SIGTERM: stop accepting, let calls in flight finish for this long, then cut them.
        timeout_graceful_shutdown=config.drain_seconds,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        log_config=log_config(args.log_level),  # applied at once: the lines below are written with it
        log_level=args.log_level,
    )
    for warning in startup_warnings(config, host):
        log.warning("%s", warning)
    records = config.record_file if config.cost_tracking else "off"
    log.info(
        "meterproxy %s on http://%s:%d, %d worker(s), records: %s",
        __version__,
        host,
        port,
        args.workers,
        records,
    )
    if args.workers > 1:
        Supervisor(settings, sockets=[settings.bind_socket()]).run()
        return 0
    # What uvicorn.run does with one worker.
    server = uvicorn.Server(settings)
    with contextlib.suppress(KeyboardInterrupt):  # the Ctrl-C that stopped it, raised again
        server.run()
    return 0 if server.started else STARTUP_FAILURE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        from proxy.report import main as report

        return report(argv[1:])
    if argv[:1] == ["reprice"]:
        from proxy.reprice import main as reprice

        return reprice(argv[1:])
    args = build_parser().parse_args(argv)
    return serve(args, os.environ)
