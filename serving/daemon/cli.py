"""``python -m serving serve|load|hash-key``: the daemon's command line (registered by serving/__main__.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

COMMANDS = ("serve", "load", "hash-key")


def add_commands(sub) -> None:
    s = sub.add_parser("serve", help="run the OpenAI-compatible daemon (Equinox in front of an engine)")
    s.add_argument("--config", default="examples/serve.yaml", help="daemon config (.yaml or .toml)")
    s.add_argument("--host", default=None, help="listen address (default: the config's, 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="listen port (default: the config's, 8000)")
    s.add_argument("--state", default=None, help="SQLite file of the fairness counters (default: the config's)")
    s.add_argument("--time-scale", type=float, default=None, help="sim backend: wall seconds per engine second")
    ld = sub.add_parser("load", help="replay a workload over HTTP against a daemon, many clients with their own keys")
    from serving.daemon.load import add_arguments
    add_arguments(ld)
    h = sub.add_parser("hash-key", help="print the SHA-256 of an API key, for a config's key_sha256")
    h.add_argument("key")


def run_command(args: argparse.Namespace) -> int:
    if args.cmd == "hash-key":
        from serving.daemon.auth import hash_key
        print(hash_key(args.key))
        return 0
    if args.cmd == "load":
        from serving.daemon.load import main as load_main
        return load_main(args)
    return serve_main(args)


def serve_main(args: argparse.Namespace) -> int:
    from serving.daemon.config import ConfigError, load_config
    from serving.daemon.state import StateError

    try:
        cfg = load_config(args.config)
        if args.host is not None:
            cfg.host = args.host
        if args.port is not None:
            if not 0 < args.port <= 65535:
                raise ConfigError(f"--port must be in 1..65535, got {args.port}")
            cfg.port = args.port
        if args.state is not None:
            cfg.state_path = args.state
        if args.time_scale is not None:
            if not args.time_scale > 0:
                raise ConfigError(f"--time-scale must be positive, got {args.time_scale}")
            cfg.backend.time_scale = args.time_scale
        logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from serving.daemon.server import run_server
        return run_server(cfg, args.config)
    except (ConfigError, StateError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
