#!/usr/bin/env python3
"""A stand-in for RAUC's command line (RAUC is not ours): `info`, `install`, `status`, and the
box's `reboot`, with RAUC's exit codes and its habit of notes on stderr before the error.

A test bundle is one JSON line (compatible, version, and how the stand-in should treat it:
`signature` "good" or "bad", `install` "ok" or an error message), then padding. Every call is
appended to the --log file as one JSON line; `status` prints the --status file.

    fake_rauc.py --log FILE --status FILE (info --output-format=json B | install B | status ...)
"""

import json
import sys


def main(argv: list[str]) -> int:
    log, status = argv[2], argv[4]
    args = argv[5:]
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(args) + "\n")
    if args[0] == "reboot":
        return 0
    if args[0] == "status":
        with open(status, encoding="utf-8") as f:
            sys.stdout.write(f.read())
        return 0
    bundle = args[-1]
    print(f"rauc-Message: 16:03:14.349: Reading bundle: {bundle}", file=sys.stderr)
    try:
        with open(bundle, "rb") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError) as exc:
        print(f"Failed to load bundle: {exc}", file=sys.stderr)
        return 1
    print("rauc-Message: 16:03:14.351: Verifying bundle signature... ", file=sys.stderr)
    if header.get("signature") != "good":
        print(
            "signature verification failed: Verify error: self-signed certificate", file=sys.stderr
        )
        return 1
    if args[0] == "info":
        print(
            json.dumps(
                {
                    "compatible": header["compatible"],
                    "version": header["version"],
                    "description": None,
                    "build": None,
                    "hooks": [],
                    "images": [],
                }
            )
        )
        return 0
    if args[0] == "install":
        if header.get("install", "ok") != "ok":
            print(header["install"], file=sys.stderr)
            return 1
        print("Installing done.")
        return 0
    print(f"unknown command {args[0]}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
