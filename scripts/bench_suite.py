"""Pitlink's benchmark suite (see scripts/bench). Numbers and ratios, not assertions.

Each comparison starts what it measures (simulator, relays, agents, redis-server, nginx, a bare
Tornado app), runs the two sides in turn, A B A B, and reports medians and their ratio: other
work on the machine slows both sides alike. Everything it started is stopped when it ends, on
failure, and on Ctrl-C. Results: a table on stdout, bench/results.json (every figure and the
load average around each comparison) and bench/results.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from benchlib import compare_http, compare_live, compare_pits
from benchlib.report import Outcome, chart, table
from benchlib.stack import ROOT, Settings, Skip, load_average

COMPARISONS: dict[str, Callable[[Settings], Outcome]] = {
    "hit": compare_http.hit,
    "profile": compare_http.profile,
    "cdn": compare_http.cdn,
    "latency": compare_http.latency,
    "fanin": compare_pits.fanin,
    "uplink": compare_pits.uplink,
    "canonical": compare_pits.canonical,
    "conns": compare_pits.conns,
    "workers": compare_http.workers,
    "blackhole": compare_pits.blackhole,
    "live": compare_live.live,
    "feedfan": compare_live.feedfan,
}


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPARISONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown comparison {', '.join(unknown)}; choose from {', '.join(COMPARISONS)}"
        )
    return names


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM stops the suite the way Ctrl-C does: through every `finally`, stopping processes.
    raise KeyboardInterrupt(f"signal {signum}")


def run_one(name: str, quick: bool, outcomes: list[Outcome]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"pitlink-bench-{name}-"))
    began, load_before = time.monotonic(), load_average()
    print(
        f"== {name}: {(COMPARISONS[name].__doc__ or name).splitlines()[0]}",
        file=sys.stderr,
        flush=True,
    )
    outcome = Outcome(name, status="interrupted", message="Ctrl-C or SIGTERM")
    try:
        outcome = COMPARISONS[name](Settings(quick=quick, tmp=tmp))
    except Skip as exc:
        outcome = Outcome(name, status="skipped", message=str(exc))
    except Exception as exc:
        traceback.print_exc()
        outcome = Outcome(name, status="failed", message=str(exc).splitlines()[0][:200])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        outcome.seconds = round(time.monotonic() - began, 1)
        outcome.load_average = {"before": load_before, "after": load_average()}
        outcomes.append(outcome)
        print(f"   {outcome.status} in {outcome.seconds:.0f} s", file=sys.stderr, flush=True)


def _shown(path: Path) -> Path:
    return path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test")
    parser.add_argument(
        "--only",
        type=_names,
        default=list(COMPARISONS),
        metavar="NAME[,NAME]",
        help=f"run only these: {', '.join(COMPARISONS)}",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench", help="where results.json and .png go"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    began, load_start = time.monotonic(), load_average()
    outcomes: list[Outcome] = []
    interrupted = False
    try:
        for name in args.only:
            run_one(name, args.quick, outcomes)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
    mode = "quick" if args.quick else "full"
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": mode,
        "interrupted": interrupted,
        "seconds": round(time.monotonic() - began, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "load_average_start": load_start,
            "load_average_end": load_average(),
        },
        "comparisons": {o.name: o.as_json() for o in outcomes},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "results.json", args.out / "results.png"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    loads = " / ".join(f"{x:.2f}" for x in result["machine"]["load_average_end"])
    subtitle = f"{mode}, {os.cpu_count()} cores, load {loads}"
    drew = chart(outcomes, png_path, subtitle)
    print()
    print(table(outcomes))
    print()
    for o in outcomes:
        if o.status == "ok" and o.message:
            print(f"note ({o.name}): {o.message}")
    print(
        f"{mode} run in {result['seconds']:.0f} s; load average {load_start} at the start, "
        f"{loads} at the end (all processes share {os.cpu_count()} cores)"
    )
    shown = [json_path] + ([png_path] if drew else [])
    print("written: " + ", ".join(str(_shown(p)) for p in shown))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
