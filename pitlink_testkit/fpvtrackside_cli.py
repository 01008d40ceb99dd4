"""The FPVTrackside simulator's command line: ``python scripts/fpvtrackside_sim.py --help``.

It serves a generated event with a live race (or a web root given with ``--root``) until Ctrl-C
or SIGTERM, then removes what it generated. With ``--extension-mode --notification-url URL`` it
also sends the race's ExtensionMode events to URL, as FPVTrackside does; SIGUSR1 then restarts
that (as a restart of FPVTrackside would: ``seq`` from 1, Hello again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from pitlink_testkit.fpvtrackside import VERSIONS, ExtensionSettings, Simulator

DESCRIPTION = "Simulate FPVTrackside, quirks included, for Pitlink tests and demos."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--root", type=Path, help="serve this web root instead of generating")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pilots", type=int, default=6)
    parser.add_argument(
        "--lap-interval", type=float, default=2.0, help="seconds per detection; 0 disables"
    )
    parser.add_argument("--slow", type=float, default=0.0, help="seconds to hold each request")
    parser.add_argument(
        "--fpvtrackside-version",
        choices=VERSIONS,
        default="2.70",
        help="answer as this FPVTrackside: 2.70 (event files untyped), 2.71 (typed as JSON), "
        "2.76 (also GET /current)",
    )
    extension = parser.add_argument_group(
        "ExtensionMode", "FPVTrackside's race events, one PUT each, to an Extension"
    )
    extension.add_argument(
        "--extension-mode",
        action="store_true",
        help="send ExtensionMode events (FPVTrackside's 'Notifier enabled / mode' setting)",
    )
    extension.add_argument(
        "--notification-url", metavar="URL", help="where to PUT them (its NotificationURL)"
    )
    extension.add_argument(
        "--hello-interval",
        type=float,
        default=2.0,
        help="seconds between Hellos until one is taken",
    )
    extension.add_argument(
        "--event-before-file",
        action="store_true",
        help="send a detection's event before the race file has it (FPVTrackside writes first)",
    )
    extension.add_argument(
        "--photos", action="store_true", help="give every pilot a photo (a PhotoPath)"
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    sim = Simulator(
        root=args.root,
        seed=args.seed,
        lap_interval=args.lap_interval or None,
        pilots=args.pilots,
        version=args.fpvtrackside_version,
        notification_url=args.notification_url if args.extension_mode else None,
        extension_settings=ExtensionSettings(hello_interval=args.hello_interval),
        event_before_file=args.event_before_file,
        photos=args.photos,
    )
    sim.slow = args.slow
    try:
        await sim.start(args.host, args.port)
        print(
            f"FPVTrackside simulator serving {sim.url}/ (web root {sim.root}) event {sim.event_id}",
            flush=True,
        )
        if sim.notification_url is not None:
            print(f"sending ExtensionMode events to {sim.notification_url}", flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still interrupts
                loop.add_signal_handler(signum, stopping.set)
        restarts: set[asyncio.Task[object]] = set()
        if sim.notification_url is not None and hasattr(signal, "SIGUSR1"):

            def restart() -> None:
                task = asyncio.create_task(sim.restart_extension())
                restarts.add(task)
                task.add_done_callback(restarts.discard)

            loop.add_signal_handler(signal.SIGUSR1, restart)
        await stopping.wait()
        for task in list(restarts):
            await task
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until Ctrl-C or SIGTERM, then clean up."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.extension_mode and not args.notification_url:
        parser.error("--extension-mode needs --notification-url (where FPVTrackside sends)")
    if args.notification_url and not args.extension_mode:
        parser.error(
            "--notification-url alone is the legacy notifier, which is not simulated: "
            "add --extension-mode"
        )
    if args.extension_mode and args.root is not None:
        parser.error("--extension-mode needs a generated event (no --root)")
    if args.hello_interval <= 0:
        parser.error("--hello-interval must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
