"""`cloud-relay`: serve, and the one-off commands that make keys and tokens."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import jwt

from cloud import __version__
from cloud.config import config_from_args
from cloud.keys import ROLES, KeySet, keygen
from cloud.keystore import revoke, revoked_path_for
from wire import jsonlog
from wire.settings import SettingsError

log = logging.getLogger("pitlink.cloud")


async def _serve(argv: Sequence[str]) -> int:
    from cloud.app import CloudRelay

    config = config_from_args(argv)
    jsonlog.setup(config.log_level)
    relay = CloudRelay(config)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: re-read the key set and the revocation list now.
    loop.add_signal_handler(signal.SIGHUP, lambda: relay.keystore.maybe_reload(force=True))
    await stop.wait()
    log.info("relay stopping", extra={"grace_s": config.grace_period})
    await relay.shutdown()
    return 0


def _keygen(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="cloud-relay keygen",
        description="Create the key set, or put a new signing key first (older keys still verify).",
    )
    p.add_argument("--jwks", type=Path, required=True, help="the key set file (JWKS)")
    p.add_argument("--kid", help="the new key's id (default: random)")
    ns = p.parse_args(argv)
    kid = keygen(ns.jwks, ns.kid)
    print(f"new signing key {kid} written to {ns.jwks}")
    return 0


def _token(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="cloud-relay token", description="Print a signed token.")
    p.add_argument("--jwks", type=Path, required=True, help="the key set file (JWKS)")
    p.add_argument("--sub", required=True, help="the pits id, or the admin's name")
    p.add_argument("--role", choices=ROLES, default="pits")
    p.add_argument("--ttl", type=float, default=365 * 86400, help="lifetime in s (default a year)")
    ns = p.parse_args(argv)
    print(KeySet.load(ns.jwks).issue(sub=ns.sub, role=ns.role, ttl=ns.ttl))
    return 0


def _revoke(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="cloud-relay revoke",
        description="Refuse a token from now on; a running relay picks the change up by itself.",
    )
    p.add_argument("--jwks", type=Path, required=True, help="the key set file (JWKS)")
    p.add_argument(
        "--revoked", type=Path, help="the revocation list (default: JWKS name + .revoked)"
    )
    p.add_argument("--jti", help="the token id to revoke")
    p.add_argument("--token", help="or the token itself (its jti is read from it)")
    p.add_argument("--note", default="", help="a word on why, kept in the file")
    ns = p.parse_args(argv)
    jti = ns.jti
    if ns.token:
        # Expired or not, the token names its own id; the signature is not the question here.
        jti = jwt.decode(ns.token.strip(), options={"verify_signature": False}).get("jti")
    if not jti:
        p.error("give --jti or --token")
    path = ns.revoked or revoked_path_for(ns.jwks)
    added = revoke(path, jti, ns.note)
    print(f"token {jti} {'revoked' if added else 'was already revoked'} in {path}")
    return 0


COMMANDS = {"serve": _serve, "keygen": _keygen, "token": _token, "revoke": _revoke}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        if args and args[0] == "--version":
            print(__version__)
            return
        print(
            "usage: cloud-relay {serve,keygen,token,revoke} [flags]  (each takes --help)",
            file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout,
        )
        sys.exit(0 if args and args[0] in ("-h", "--help") else 2)
    command, rest = COMMANDS[args[0]], args[1:]
    try:
        if asyncio.iscoroutinefunction(command):
            code = asyncio.run(command(rest))
        else:
            code = command(rest)
    except (SettingsError, OSError, ValueError) as exc:
        print(f"cloud-relay: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
