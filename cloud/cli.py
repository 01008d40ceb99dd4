"""`cloud-relay`: serve, and the one-off commands that make keys and tokens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import jwt
import tornado.netutil

from cloud import CloudError, __version__
from cloud.config import CloudConfig, config_from_args
from cloud.keys import ROLES, KeySet, family_of, keygen
from cloud.keystore import revoke, revoke_subject, revoked_path_for
from wire import jsonlog
from wire.settings import Parser, SettingsError

log = logging.getLogger("pitlink.cloud")


def _serve(argv: Sequence[str]) -> int:
    config = config_from_args(argv)
    if config.workers == 1:
        return asyncio.run(_serve_one(config))
    return _serve_workers(config)


def _serve_workers(config: CloudConfig) -> int:
    """Several processes on one port, joined through Redis like replicas on many machines.

    Each worker binds the port with SO_REUSEPORT; the parent forks them, passes SIGTERM and SIGINT on to them, and
    starts a worker again if one dies while nobody asked it to stop.
    """
    jsonlog.setup(config.log_level)
    base = config.node_id or uuid.uuid4().hex[:8]
    children: dict[int, int] = {}
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            worker = replace(config, node_id=f"{base}-{index}")
            # A socket of its own per worker (SO_REUSEPORT): the kernel spreads connections
            # evenly; one shared socket lets whichever worker wakes first take a whole burst.
            sockets = tornado.netutil.bind_sockets(config.port, config.host, reuse_port=True)
            os._exit(asyncio.run(_serve_one(worker, sockets)))
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for first in range(config.workers):
        spawn(first)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("workers started", extra={"workers": config.workers, "port": config.port})
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        gone = children.pop(pid, -1)
        code = os.waitstatus_to_exitcode(status)
        worst = max(worst, abs(code))
        if gone >= 0 and not stopping:
            log.error("worker died; starting it again", extra={"worker": gone, "code": code})
            spawn(gone)
    return 0 if stopping else worst


async def _serve_one(config: CloudConfig, sockets: list[socket.socket] | None = None) -> int:
    from cloud.app import CloudRelay

    jsonlog.setup(config.log_level)
    relay = CloudRelay(config)
    await relay.start(sockets)
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


def _jwks_flag(p: Parser) -> None:
    """--jwks, by default the serve's own PITLINK_JWKS: in the container image that names the
    key set in its volume, so `cloud-relay keygen` there needs no flag."""
    env = os.environ.get("PITLINK_JWKS") or None
    p.add_argument(
        "--jwks",
        type=Path,
        required=env is None,
        default=env,
        help="the key set file (JWKS) (default: PITLINK_JWKS)",
    )


def _keygen(argv: Sequence[str]) -> int:
    p = Parser(
        prog="cloud-relay keygen",
        description="Create the key set, or put a new signing key first (older keys still verify).",
    )
    _jwks_flag(p)
    p.add_argument("--kid", help="the new key's id (default: random)")
    ns = p.parse_args(argv)
    kid = keygen(ns.jwks, ns.kid)
    print(f"new signing key {kid} written to {ns.jwks}")
    return 0


def _lifetime(text: str) -> float:
    """A token's lifetime: a number of seconds above 0 (a token that is born expired is a
    mistake, never what an operator wants)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number of seconds") from None
    if not seconds >= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"{text[:40]} is not a lifetime: give the seconds the token is valid for, 1 or more "
            "(86400 is a day)"
        )
    return seconds


def _token(argv: Sequence[str]) -> int:
    p = Parser(
        prog="cloud-relay token",
        description="Print a signed token: for a box (--role pits, --sub its pits id) or for "
        "an operator of the admin page (--role admin).",
    )
    _jwks_flag(p)
    p.add_argument("--sub", required=True, help="the pits id, or the admin's name")
    p.add_argument("--role", choices=ROLES, default="pits")
    p.add_argument(
        "--ttl", type=_lifetime, default=365 * 86400, help="lifetime in s (default a year)"
    )
    ns = p.parse_args(argv)
    print(KeySet.load(ns.jwks).issue(sub=ns.sub, role=ns.role, ttl=ns.ttl))
    return 0


def _revoke(argv: Sequence[str]) -> int:
    p = Parser(
        prog="cloud-relay revoke",
        description="Refuse a token from now on; a running relay picks the change up by itself.",
    )
    _jwks_flag(p)
    p.add_argument(
        "--revoked", type=Path, help="the revocation list (default: JWKS name + .revoked)"
    )
    p.add_argument(
        "--jti", help="a token id to revoke (a first token's id revokes its renewals too)"
    )
    p.add_argument("--token", help="or the token itself: it and every renewal of it")
    p.add_argument("--sub", help="or a pits id: every token of that pits issued before now")
    p.add_argument("--note", default="", help="a word on why, kept in the file")
    ns = p.parse_args(argv)
    if sum(bool(x) for x in (ns.jti, ns.token, ns.sub)) != 1:
        p.error("give one of --jti, --token or --sub")
    path = ns.revoked or revoked_path_for(ns.jwks)
    if ns.sub:
        now = time.time()
        revoke_subject(path, ns.sub, now, ns.note)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
        print(f"every token of pits {ns.sub} issued before {stamp} revoked in {path}")
        return 0
    jti = ns.jti
    if ns.token:
        # Expired or not, the token names its family; the signature is not the question here.
        claims = jwt.decode(ns.token.strip(), options={"verify_signature": False})
        jti = family_of(claims)
    added = revoke(path, jti, ns.note)
    print(f"token {jti} {'revoked' if added else 'was already revoked'} in {path}")
    return 0


def _bundle(argv: Sequence[str]) -> int:
    from cloud.bundles import BundleStore
    from cloud.rollout import describe_rollout
    from cloud.rollout_store import Rollouts

    p = Parser(
        prog="cloud-relay bundle",
        description="Keep update bundles in the relay's bundle folder and offer them to boxes; "
        "a running relay sends an offer to a connected box within a second.",
    )
    p.add_argument(
        "--bundle-dir",
        type=Path,
        default=os.environ.get("PITLINK_BUNDLE_DIR") or None,
        help="the relay's --bundle-dir (default: PITLINK_BUNDLE_DIR)",
    )
    verbs = p.add_subparsers(dest="verb", required=True, parser_class=Parser)
    add = verbs.add_parser("add", help="copy a bundle file in: pitlink-ARCH-VERSION.raucb")
    add.add_argument("file", type=Path)
    add.add_argument("--version", help="the bundle's version (default: from the file name)")
    add.add_argument("--arch", help="amd64 or arm64 (default: from the file name)")
    verbs.add_parser("list", help="the bundles and whom each is offered to")
    remove = verbs.add_parser("remove", help="delete a bundle (its offers are withdrawn)")
    remove.add_argument("id")
    offer = verbs.add_parser("offer", help="offer a bundle to boxes (one first: the canary)")
    offer.add_argument("id")
    offer.add_argument("pits_ids", nargs="+", metavar="PITS_ID")
    withdraw = verbs.add_parser("withdraw", help="withdraw the offers to these boxes")
    withdraw.add_argument("pits_ids", nargs="+", metavar="PITS_ID")
    rollout = verbs.add_parser(
        "rollout",
        help="offer a bundle to a wave of N boxes, then to all the rest once the wave is good; "
        "it halts when one rolls back",
    )
    rollout.add_argument("id")
    rollout.add_argument("--wave", type=int, required=True, metavar="N", help="boxes in the wave")
    rollout.add_argument(
        "--first",
        nargs="+",
        default=[],
        metavar="PITS_ID",
        help="boxes in the wave (default: the connected boxes that can take it, by pits id)",
    )
    resume = verbs.add_parser(
        "resume", help="go on with a halted rollout (without the boxes that failed)"
    )
    resume.add_argument("id")
    cancel = verbs.add_parser(
        "cancel", help="stop a rollout; its offers not yet taken up are withdrawn"
    )
    cancel.add_argument("id")
    ns = p.parse_args(argv)
    if ns.bundle_dir is None:
        raise SettingsError(
            "--bundle-dir (or PITLINK_BUNDLE_DIR) is required: the folder the relay keeps its "
            "bundles in, as given to its own --bundle-dir"
        )
    if ns.verb != "add" and not ns.bundle_dir.is_dir():
        # Only `add` makes the folder: a typo in its name must not look like an empty one.
        what = "is not a folder" if ns.bundle_dir.exists() else "does not exist"
        raise SettingsError(
            f"the bundle folder {ns.bundle_dir} {what}: give the relay's --bundle-dir "
            "(`cloud-relay bundle add FILE` creates it)"
        )
    store = BundleStore(ns.bundle_dir)
    rollouts = Rollouts(store)
    if ns.verb == "add":
        bundle = store.add_file(ns.file, version=ns.version, arch=ns.arch)
        print(
            f"bundle {bundle.id}: version {bundle.version} for {bundle.arch}, {bundle.size} bytes"
        )
    elif ns.verb == "list":
        offers = store.offers()
        every = rollouts.all()
        for b in store.bundles():
            added = time.strftime("%Y-%m-%d %H:%M", time.gmtime(b.added))
            to = sorted(pits for pits, bid in offers.items() if bid == b.id)
            print(
                f"{b.id}  {b.version}  {b.arch}  {b.size} bytes  added {added} UTC  "
                f"offered to: {', '.join(to) or 'none'}"
            )
            if b.id in every:
                print("    " + describe_rollout(every[b.id]))
    elif ns.verb == "rollout":
        started = rollouts.start(ns.id, ns.wave, ns.first, who="cli")
        print(describe_rollout(started))
    elif ns.verb == "resume":
        print(describe_rollout(rollouts.resume(ns.id)))
    elif ns.verb == "cancel":
        cancelled, withdrawn = rollouts.cancel(ns.id)
        print(f"{describe_rollout(cancelled)}; offers withdrawn: {', '.join(withdrawn) or 'none'}")
    elif ns.verb == "remove":
        bundle, withdrawn = store.remove(ns.id)
        rollouts.forget(bundle.id)
        print(f"bundle {bundle.id} ({bundle.version}) removed; offers withdrawn: {len(withdrawn)}")
    elif ns.verb == "offer":
        bundle = store.offer(ns.id, ns.pits_ids)
        print(f"bundle {bundle.id} ({bundle.version}) offered to {', '.join(ns.pits_ids)}")
    else:
        withdrawn = store.withdraw(ns.pits_ids)
        print(f"offers withdrawn from {', '.join(withdrawn) or 'nobody (none stood)'}")
    return 0


COMMANDS = {
    "serve": _serve,
    "keygen": _keygen,
    "token": _token,
    "revoke": _revoke,
    "bundle": _bundle,
}

HELP = """usage: cloud-relay COMMAND [flags]

The Pitlink cloud relay: pits boxes dial in over one WebSocket, spectators and dashboards read
each box's FPVTrackside data from it.

commands:
  serve    run the relay: cloud-relay serve --jwks FILE [--host ADDR] [--port N] ...
  keygen   create the key set that signs tokens, or put a new signing key first (rotation)
  token    print a signed token for a box (--role pits) or for an operator (--role admin)
  revoke   refuse a token and its renewals (--token, --jti), or every token of a box (--sub)
  bundle   update bundles for the boxes: add FILE, list, remove ID, offer ID PITS_ID..., withdraw PITS_ID...,
           rollout ID --wave N [--first PITS_ID...], resume ID, cancel ID

Each command takes --help. Every flag of serve can also be set as PITLINK_<FLAG> in the
environment (--fetch-timeout is PITLINK_FETCH_TIMEOUT).
"""


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--version":
        print(__version__)
        return
    if not args or args[0] in ("-h", "--help"):
        print(HELP, end="", file=sys.stdout if args else sys.stderr)
        sys.exit(0 if args else 2)
    if args[0] not in COMMANDS:
        print(
            f"cloud-relay: no command {args[0][:40]!r}: use serve, keygen, token, revoke or bundle "
            "(cloud-relay --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    command, rest = COMMANDS[args[0]], args[1:]
    try:
        code = command(rest)
    except (SettingsError, OSError, ValueError, CloudError) as exc:
        print(f"cloud-relay: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
