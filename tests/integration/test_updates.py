"""Updates through a real relay: upload, offer to a box (the test plays it), download, report."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
import tornado.websocket

from cloud.app import CloudRelay
from pitlink_testkit.control import close_opened, open_control
from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from wire import messages as m

BUNDLE = bytes(range(256)) * 40  # 10 KiB
NAME = "pitlink-amd64-0.2.0+20261130T0900.raucb"


@pytest.fixture
async def relay(tmp_path: Path, sim) -> AsyncIterator[System]:
    """A relay with a bundle folder and a small upload bound, and no agent: the test plays the boxes."""
    s = System(tmp_path, sim)
    await s.start_relay(bundle_dir=tmp_path / "bundles", max_bundle_bytes=64 * 1024)
    yield s
    await close_opened()
    await s.close()


def admin_token(s: System) -> str:
    return s.keys.issue(sub="alice", role="admin", ttl=600)


async def admin(s: System, verb: str, body: dict | None = None, method: str | None = None):
    kwargs: dict = {"headers": {"Authorization": f"Bearer {admin_token(s)}"}}
    if body is not None:
        kwargs.update(method="POST", body=json.dumps(body))
    if method is not None:
        kwargs["method"] = method
    return await s.get(f"/admin/api/{verb}", **kwargs)


async def upload(s: System, data: bytes = BUNDLE, query: str = f"filename={quote(NAME)}"):
    return await s.get(
        f"/admin/api/bundles/upload?{query}",
        method="POST",
        body=data,
        headers={"Authorization": f"Bearer {admin_token(s)}"},
    )


async def box(
    s: System, pits_id: str, *, sw: str = "0.1.0", update: m.UpdateReport | None = None
) -> tornado.websocket.WebSocketClientConnection:
    """A box as the test plays it: connected and said hello (slot A)."""
    ws = await open_control(s.url, s.keys.issue(sub=pits_id, role="pits", ttl=600))
    assert m.decode(await ws.read_message(), sender="cloud").type == "hello"
    hello = m.PitsHello(protocol_version=1, pits_id=pits_id, sw_version=sw, slot="A", update=update)
    await ws.write_message(m.encode(hello, now_ms=0))
    relay = s.relay
    await wait_for(lambda: relay.registry.get(pits_id) is not None, what=f"{pits_id} connected")
    return ws


async def next_offer(ws: tornado.websocket.WebSocketClientConnection) -> m.Offer:
    while True:
        text = await ws.read_message()
        assert text is not None, "the relay closed the connection"
        frame = m.decode(text, sender="cloud")
        if frame.type == "offer":
            assert isinstance(frame.message, m.Offer)
            return frame.message


async def download(s: System, bundle_id: str, pits_id: str | None, **headers: str):
    if pits_id is not None:
        token = s.keys.issue(sub=pits_id, role="pits", ttl=600)
        headers["Authorization"] = f"Bearer {token}"
    return await s.get(f"/pits-api/bundles/{bundle_id}", headers=headers)


async def test_upload_offer_download_and_report(relay: System, caplog) -> None:
    caplog.set_level(logging.INFO)
    got = await upload(relay)
    assert got.code == 200, got.body
    bundle = json.loads(got.body)
    sha = hashlib.sha256(BUNDLE).hexdigest()
    assert (bundle["id"], bundle["sha256"], bundle["size"]) == (sha[:16], sha, len(BUNDLE))
    assert (bundle["version"], bundle["arch"]) == ("0.2.0+20261130T0900", "amd64")
    listed = json.loads((await admin(relay, "bundles")).body)
    assert listed["enabled"] is True and [b["id"] for b in listed["bundles"]] == [bundle["id"]]

    canary = await box(relay, "canary")
    current = await box(relay, "current", sw=bundle["version"])
    offered = await admin(
        relay, f"bundles/{bundle['id']}/offer", {"pitsIds": ["canary", "current"]}
    )
    assert offered.code == 200, offered.body
    assert json.loads(offered.body)["sent"] == ["canary"]  # `current` runs it already
    offer = await next_offer(canary)
    assert (offer.bundle, offer.version, offer.compatible) == (
        bundle["id"],
        bundle["version"],
        "pitlink-amd64",
    )
    assert (offer.size, offer.sha256) == (len(BUNDLE), sha)

    # The box downloads with its own token, and resumes with a range.
    whole = await download(relay, offer.bundle, "canary")
    assert whole.code == 200 and whole.body == BUNDLE
    assert whole.headers["Content-Type"] == "application/octet-stream"
    assert whole.headers["ETag"] == f'"sha256:{sha}"'
    assert "no-store" in whole.headers["Cache-Control"]
    assert whole.headers["Accept-Ranges"] == "bytes"
    rest = await download(relay, offer.bundle, "canary", Range="bytes=4000-")
    assert rest.code == 206 and rest.body == BUNDLE[4000:]
    assert rest.headers["Content-Range"] == f"bytes 4000-{len(BUNDLE) - 1}/{len(BUNDLE)}"
    head = await relay.get(
        f"/pits-api/bundles/{offer.bundle}",
        method="HEAD",
        headers={"Authorization": f"Bearer {relay.keys.issue(sub='canary', role='pits', ttl=60)}"},
    )
    assert head.code == 200 and head.headers["Content-Length"] == str(len(BUNDLE))
    past = await download(relay, offer.bundle, "canary", Range=f"bytes={len(BUNDLE)}-")
    assert past.code == 416
    assert past.headers["Content-Range"] == f"bytes */{len(BUNDLE)}"
    assert json.loads(past.body)["error"]["code"] == "BAD_REQUEST"

    # The box reports; the admin API shows it, the metric counts it, the log says how it ended.
    for state, done in (("downloading", 4000), ("good", None)):
        report = m.UpdateReport(
            state=state, version=bundle["version"], done=done, total=len(BUNDLE), message="ok"
        )
        await canary.write_message(m.encode(report, now_ms=0))
    metrics = relay.relay.metrics
    await wait_for(
        lambda: metrics.update_reports.labels("good")._value.get() == 1, what="the report"
    )
    rows = json.loads((await admin(relay, "connections")).body)["connections"]
    row = next(r for r in rows if r["pitsId"] == "canary")
    assert row["slot"] == "A" and row["swVersion"] == "0.1.0"
    assert row["update"] == {
        "state": "good",
        "version": bundle["version"],
        "total": len(BUNDLE),
        "message": "ok",
    }
    assert row["offer"] == {"bundle": bundle["id"], "version": bundle["version"]}
    ended = [r for r in caplog.records if r.getMessage() == "update ended"]
    assert [(r.pits_id, r.state) for r in ended] == [("canary", "good")]
    offers = [r for r in caplog.records if r.name == "pitlink.cloud.admin"]
    assert [r.action for r in offers] == ["bundle_add", "offer"]
    current.close()


async def test_an_offer_reaches_a_box_again_after_it_reconnects_and_a_withdrawal_too(
    relay: System,
) -> None:
    bundle = json.loads((await upload(relay)).body)
    await admin(relay, f"bundles/{bundle['id']}/offer", {"pitsIds": ["p1"]})
    first = await box(relay, "p1")
    assert (await next_offer(first)).bundle == bundle["id"]
    first.close()
    await wait_for(lambda: relay.relay.registry.get("p1") is None, what="p1 gone")
    again = await box(relay, "p1")
    assert (await next_offer(again)).bundle == bundle["id"]
    withdrawn = await admin(relay, "bundles/withdraw", {"pitsIds": ["p1"]})
    assert json.loads(withdrawn.body) == {"withdrawn": ["p1"], "sent": ["p1"]}
    assert (await next_offer(again)) == m.Offer(bundle=None)
    # Withdrawn: the download is refused now.
    assert (await download(relay, bundle["id"], "p1")).code == 403
    # A box that rolled back from this version says so in its hello: not offered it again.
    await admin(relay, f"bundles/{bundle['id']}/offer", {"pitsIds": ["p2"]})
    rolled = m.UpdateReport(state="rolled-back", version=bundle["version"], message="unhealthy")
    await box(relay, "p2", update=rolled)
    conn = relay.relay.registry.get("p2")
    assert conn.update == rolled and conn.offered is None


async def test_an_offer_made_with_the_cli_reaches_a_connected_box(relay: System) -> None:
    bundle = json.loads((await upload(relay)).body)
    ws = await box(relay, "p1")
    store = relay.relay.updates.store
    assert store is not None
    # As `cloud-relay bundle offer` does it: another process writing the folder.
    type(store)(store.root).offer(bundle["id"], ["p1"])
    assert (await next_offer(ws)).bundle == bundle["id"]


async def test_downloads_are_refused_without_the_right_token_or_offer(relay: System) -> None:
    bundle = json.loads((await upload(relay)).body)
    other = json.loads((await upload(relay, b"other bytes", "version=9&arch=arm64")).body)
    await admin(relay, f"bundles/{bundle['id']}/offer", {"pitsIds": ["p1"]})
    none = await download(relay, bundle["id"], None)
    assert none.code == 401 and json.loads(none.body)["error"]["code"] == "UNAUTHORIZED"
    forged = await download(relay, bundle["id"], None, Authorization="Bearer not-a-token")
    assert forged.code == 401
    admin_only = await download(
        relay, bundle["id"], None, Authorization=f"Bearer {admin_token(relay)}"
    )
    assert admin_only.code == 401
    assert (await download(relay, bundle["id"], "p2")).code == 403  # another box's token
    assert (await download(relay, other["id"], "p1")).code == 403  # not the one offered
    assert (await download(relay, "0123456789abcdef", "p1")).code == 403
    assert (await relay.get("/pits-api/bundles/../../etc/passwd")).code == 404
    assert (await download(relay, bundle["id"], "p1")).code == 200
    # One download at a time per box.
    updates = relay.relay.updates
    updates.downloading.add("p1")
    busy = await download(relay, bundle["id"], "p1")
    assert busy.code == 429 and busy.headers["Retry-After"] == "5"
    updates.downloading.discard("p1")
    assert relay.relay.metrics.bundle_downloads.labels("refused")._value.get() == 6


async def test_uploads_are_bounded_and_checked(relay: System) -> None:
    too_big = await upload(relay, b"x" * (64 * 1024 + 1))
    assert too_big.code == 413 and json.loads(too_big.body)["error"]["code"] == "TOO_LARGE"
    nameless = await upload(relay, b"x", "filename=bundle.bin")
    assert (
        nameless.code == 400 and "version and arch" in json.loads(nameless.body)["error"]["message"]
    )
    sneaky = await upload(relay, b"x", "filename=../../pitlink-amd64-1.raucb")
    assert sneaky.code == 200 and json.loads(sneaky.body)["filename"] == "pitlink-amd64-1.raucb"
    no_token = await relay.get(
        "/admin/api/bundles/upload?version=1&arch=amd64", method="POST", body=b"x"
    )
    assert no_token.code == 401
    pits = relay.keys.issue(sub="p1", role="pits", ttl=60)
    as_pits = await relay.get(
        "/admin/api/bundles/upload?version=2&arch=amd64",
        method="POST",
        body=b"x",
        headers={"Authorization": f"Bearer {pits}"},
    )
    assert as_pits.code == 403
    store = relay.relay.updates.store
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".upload")] == []
    listed = json.loads((await admin(relay, "bundles")).body)["bundles"]
    assert [b["version"] for b in listed] == ["1"]
    removed = await admin(relay, f"bundles/{listed[0]['id']}", method="DELETE")
    assert removed.code == 200 and json.loads((await admin(relay, "bundles")).body)["bundles"] == []
    assert (await admin(relay, f"bundles/{listed[0]['id']}", method="DELETE")).code == 404
    bad = await admin(relay, f"bundles/{listed[0]['id']}/offer", {"pitsIds": "p1"})
    assert bad.code == 400


async def test_without_a_bundle_folder_updates_are_off(system: System) -> None:
    listed = json.loads((await admin(system, "bundles")).body)
    assert listed["enabled"] is False and "--bundle-dir" in listed["message"]
    assert json.loads((await admin(system, "overview")).body)["updates"]["enabled"] is False
    refused = await upload(system, b"x")
    assert refused.code == 404 and "--bundle-dir" in json.loads(refused.body)["error"]["message"]
    got = await download(system, "0123456789abcdef", system.pits_id)
    assert got.code == 404
    assert isinstance(system.relay, CloudRelay)
