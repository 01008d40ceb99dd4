"""Update bundles for the agent's tests: a stand-in `rauc` and a relay's bundle endpoint.

The bundles are not RAUC's (RAUC is not ours; tests/pits_appliance/fake_rauc.py stands in for
it and reads what they say of themselves); the endpoint answers as the relay's
`GET /pits-api/bundles/<id>` does: a Bearer token, Range requests (206, 416), the sha256 as
ETag, and on demand a cut connection or an error status.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from wire.messages import Offer, UpdateReport

FAKE_RAUC = Path(__file__).resolve().parent.parent / "tests" / "pits_appliance" / "fake_rauc.py"


def make_bundle(
    path: Path,
    *,
    compatible: str,
    version: str,
    signature: str = "good",
    install: str = "ok",
    size: int = 300_000,
) -> bytes:
    """Write a test bundle of `size` bytes; returns its bytes."""
    head = (
        json.dumps(
            {
                "compatible": compatible,
                "version": version,
                "signature": signature,
                "install": install,
            }
        ).encode()
        + b"\n"
    )
    body = head + bytes((i * 7 + 3) % 251 for i in range(max(0, size - len(head))))
    path.write_bytes(body)
    return body


def offer_for(data: bytes, *, bundle: str, compatible: str, version: str) -> Offer:
    return Offer(
        bundle=bundle,
        version=version,
        compatible=compatible,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


@dataclass
class FakeRauc:
    """The stand-in's command line, what it was asked, and the `rauc status` it prints."""

    folder: Path

    def __post_init__(self) -> None:
        self.log.touch()
        self.set_status(booted="A", boot_status="good")

    @property
    def log(self) -> Path:
        return self.folder / "rauc-calls.jsonl"

    @property
    def status(self) -> Path:
        return self.folder / "rauc-status.json"

    @property
    def command(self) -> str:
        return f"{sys.executable} {FAKE_RAUC} --log {self.log} --status {self.status}"

    @property
    def reboot(self) -> str:
        return f"{self.command} reboot"

    def box(self, *, slot: str, version: str) -> dict[str, Any]:
        """The agent's update settings for a box booted from `slot` running `version` (its
        command line and version file written beside the stand-in), with this stand-in as its
        rauc and its restart, and no update folders."""
        (self.folder / "cmdline").write_text(f"console=ttyS0 rauc.slot={slot} quiet\n")
        (self.folder / "version").write_text(version + "\n")
        return {
            "update_cmdline": self.folder / "cmdline",
            "update_version_file": self.folder / "version",
            "update_rauc": self.command,
            "update_reboot_command": self.reboot,
            "update_dirs": (),
        }

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def verbs(self) -> list[str]:
        """What the box asked RAUC to do with bundles (its `status` reads left out)."""
        return [call[0] for call in self.calls() if call[0] != "status"]

    def set_status(self, *, booted: str, boot_status: str) -> None:
        other = {"A": "B", "B": "A"}[booted]
        slots = [
            {
                "rootfs.0": {
                    "bootname": "A",
                    "state": "booted" if booted == "A" else "inactive",
                    "boot_status": boot_status if booted == "A" else "good",
                }
            },
            {
                "rootfs.1": {
                    "bootname": "B",
                    "state": "booted" if booted == "B" else "inactive",
                    "boot_status": boot_status if booted == "B" else "good",
                }
            },
        ]
        assert other
        self.status.write_text(
            json.dumps({"compatible": "pitlink-amd64", "booted": booted, "slots": slots})
        )


@dataclass
class Served:
    """What the bundle endpoint serves and how: set by the test, read by the handler."""

    token: str
    bundles: dict[str, bytes] = field(default_factory=dict)
    cut_at: int | None = None  # the next response stops (the connection drops) at this offset
    fail_next: list[int] = field(default_factory=list)  # statuses to answer before serving
    etag: str | None = None  # instead of the sha256
    ranges: list[str | None] = field(default_factory=list)  # the Range of each request


_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class BundleHandler(tornado.web.RequestHandler):
    def initialize(self, served: Served) -> None:
        self.served = served

    async def get(self, bundle: str) -> None:
        s = self.served
        s.ranges.append(self.request.headers.get("Range"))
        if self.request.headers.get("Authorization") != f"Bearer {s.token}":
            raise tornado.web.HTTPError(401)
        if s.fail_next:
            raise tornado.web.HTTPError(s.fail_next.pop(0))
        data = s.bundles.get(bundle)
        if data is None:
            raise tornado.web.HTTPError(404)
        self.set_header("ETag", s.etag or f'"sha256:{hashlib.sha256(data).hexdigest()}"')
        self.set_header("Accept-Ranges", "bytes")
        start, end = 0, len(data) - 1
        match = _RANGE.fullmatch(self.request.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(end, int(match.group(2))) if match.group(2) else end
            if start >= len(data):
                self.set_status(416)
                self.set_header("Content-Range", f"bytes */{len(data)}")
                return
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.set_header("Content-Length", str(end - start + 1))
        body = data[start : end + 1]
        if s.cut_at is not None and start < s.cut_at <= end:
            self.write(body[: s.cut_at - start])
            s.cut_at = None
            await self.flush()
            self.request.connection.stream.close()  # type: ignore[union-attr,attr-defined]
            return
        self.write(body)


class BundleServer:
    """`GET /pits-api/bundles/<id>` on loopback, port 0."""

    def __init__(self, served: Served):
        self.served = served
        app = tornado.web.Application(
            [(r"/pits-api/bundles/([0-9a-f]+)", BundleHandler, {"served": served})],
            log_function=lambda handler: None,  # its 503s are the test's own doing
        )
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.server = tornado.httpserver.HTTPServer(app)
        self.server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()


def report_states(reports: list[Any]) -> list[str]:
    """The states in order, repeats folded (progress reports repeat `downloading`)."""
    out: list[str] = []
    for r in reports:
        if not out or out[-1] != r.state:
            out.append(r.state)
    return out


def make_updater(
    state_dir: Path,
    rauc: FakeRauc,
    url: str = "",
    *,
    version: str,
    compatible: str,
    slot: str | None = "A",
    **kw: object,
) -> tuple[Any, list[UpdateReport]]:
    """An Updater (pits_appliance.update) driving the stand-in `rauc`, its reports collected:
    fetching bundles from `url` with token `tok-1`, retrying quickly."""
    from pits_appliance.rauc import Rauc
    from pits_appliance.update import Updater

    sent: list[UpdateReport] = []
    settings: dict[str, object] = {
        "state_dir": state_dir,
        "slot": slot,
        "version": version,
        "compatible": compatible,
        "rauc": Rauc(rauc.command),
        "reboot": rauc.reboot,
        "relay_url": lambda: url,
        "token": lambda: "tok-1",
        "retry_base": 0.02,
        **kw,
    }
    updater = Updater(**settings)  # type: ignore[arg-type]
    updater.send = sent.append
    return updater, sent
