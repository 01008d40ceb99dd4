"""The FPVTrackside simulator's command line: ``python scripts/fpvtrackside_sim.py --help``.

It serves a generated event with a live race (or a web root given with ``--root``) until Ctrl-C
or SIGTERM, then removes what it generated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from pitlink_testkit.fpvtrackside import VERSIONS, Simulator

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
    return parser


async def _serve(args: argparse.Namespace) -> None:
    sim = Simulator(
        root=args.root,
        seed=args.seed,
        lap_interval=args.lap_interval or None,
        pilots=args.pilots,
        version=args.fpvtrackside_version,
    )
    sim.slow = args.slow
    try:
        await sim.start(args.host, args.port)
        print(
            f"FPVTrackside simulator serving {sim.url}/ (web root {sim.root}) event {sim.event_id}",
            flush=True,
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still interrupts
                loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until Ctrl-C or SIGTERM, then clean up."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
