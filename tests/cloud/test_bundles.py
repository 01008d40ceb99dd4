"""The bundle folder and the offers (cloud.bundles), and offering to connected boxes (cloud.updates)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
from cloudfakes import frame, value

from cloud.bundles import MAX_META_BYTES, MAX_OFFERS_BYTES, BundleError, BundleStore
from cloud.metrics import Metrics
from cloud.registry import Registry
from cloud.updates import Updates, wants_offer
from wire import messages as m

NAME = "pitlink-amd64-0.1.0+20261129T1612.raucb"


def bundle_file(tmp_path: Path, name: str = NAME, data: bytes = b"signed bytes " * 1000) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def store(tmp_path: Path) -> BundleStore:
    return BundleStore(tmp_path / "bundles", wall=lambda: 1_800_000_000.0)


def test_add_reads_version_and_arch_from_the_name_and_keeps_bytes_hash_and_metadata(
    store: BundleStore, tmp_path: Path
) -> None:
    source = bundle_file(tmp_path)
    bundle = store.add_file(source)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert (bundle.id, bundle.sha256, bundle.size) == (sha[:16], sha, source.stat().st_size)
    assert (bundle.version, bundle.arch, bundle.compatible) == (
        "0.1.0+20261129T1612",
        "amd64",
        "pitlink-amd64",
    )
    assert store.path_of(bundle.id).read_bytes() == source.read_bytes()
    meta = json.loads((store.root / f"{bundle.id}.json").read_text())
    assert meta["filename"] == NAME and meta["added"] == 1_800_000_000.0
    assert store.bundles() == [bundle] and store.get(bundle.id) == bundle
    # Nothing half-written is left behind, and the same bytes again are the same bundle.
    assert sorted(p.name for p in store.root.iterdir()) == [
        f"{bundle.id}.json",
        f"{bundle.id}.raucb",
    ]
    assert store.add_file(source) == bundle
    offer = bundle.offer()
    assert m.Offer.parse(offer.payload()) == offer


def test_given_version_and_arch_beat_the_name(store: BundleStore, tmp_path: Path) -> None:
    bundle = store.add_file(bundle_file(tmp_path, "whatever.bin"), version="2.0", arch="arm64")
    assert (bundle.version, bundle.arch, bundle.filename) == ("2.0", "arm64", "whatever.bin")


@pytest.mark.parametrize(
    ("name", "version", "arch", "says"),
    [
        ("bundle.raucb", None, None, "cannot tell the version"),
        ("pitlink-riscv-1.0.raucb", None, None, "arch 'riscv'"),
        ("pitlink-amd64-1.0.raucb", "1.0 rm -rf", None, "is not 1 to 64"),
        ("pitlink-amd64-1.0.raucb", "x" * 65, None, "is not 1 to 64"),
        ("pitlink-amd64-1.0.raucb", "../../etc", None, "is not 1 to 64"),
        ("pitlink-amd64-1.0.raucb", None, "../amd64", "arch"),
    ],
)
def test_bad_versions_and_arches_are_refused_before_any_byte(
    store: BundleStore, name: str, version: str | None, arch: str | None, says: str
) -> None:
    with pytest.raises(BundleError, match=says) as caught:
        store.upload(filename=name, version=version, arch=arch)
    assert caught.value.status == 400
    assert list(store.root.iterdir()) == []


def test_a_name_from_outside_chooses_no_path(store: BundleStore, tmp_path: Path) -> None:
    upload = store.upload(filename="../../../etc/pitlink-arm64-1.2.raucb")
    upload.write(b"x" * 10)
    bundle = upload.commit()
    assert bundle.filename == "pitlink-arm64-1.2.raucb"
    assert {p.parent for p in store.root.rglob("*")} == {store.root}
    assert not (tmp_path / "etc").exists()
    for bad in ("../x", "ABCDEF0123456789", "0123", "/etc/passwd", "0123456789abcdef/../x"):
        assert store.get(bad) is None
        with pytest.raises(BundleError):
            store.path_of(bad)
        with pytest.raises(BundleError):
            store.offer(bad, ["p1"])


def test_an_upload_over_the_bound_or_aborted_leaves_nothing(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "b", max_bytes=100)
    upload = store.upload(filename=NAME)
    upload.write(b"x" * 100)
    with pytest.raises(BundleError) as caught:
        upload.write(b"x")
    assert caught.value.status == 413
    aborted = store.upload(filename=NAME)
    aborted.write(b"half")
    aborted.abort()
    with pytest.raises(BundleError, match="empty"):
        store.upload(filename=NAME).commit()
    assert list(store.root.iterdir()) == [] or [p.name for p in store.root.iterdir()] == [".lock"]


def test_one_bundle_per_version_and_arch(store: BundleStore, tmp_path: Path) -> None:
    store.add_file(bundle_file(tmp_path, data=b"one"))
    with pytest.raises(BundleError, match="remove it first") as caught:
        store.add_file(bundle_file(tmp_path, data=b"two"))
    assert caught.value.status == 409
    store.add_file(bundle_file(tmp_path, "pitlink-arm64-0.1.0+20261129T1612.raucb", b"two"))
    assert len(store.bundles()) == 2


def test_offers_persist_and_a_removed_bundle_takes_its_offers(
    store: BundleStore, tmp_path: Path
) -> None:
    bundle = store.add_file(bundle_file(tmp_path))
    store.offer(bundle.id, ["canary"])
    store.offer(bundle.id, ["p2", "p3", "p2"])
    again = BundleStore(store.root)  # a relay restarted, or another replica
    assert again.offers() == {"canary": bundle.id, "p2": bundle.id, "p3": bundle.id}
    assert again.offered_to("p2") == bundle and again.offered_to("p9") is None
    assert again.withdraw(["p3", "p9"]) == ["p3"]
    assert store.offers() == {"canary": bundle.id, "p2": bundle.id}  # re-read: it changed
    with pytest.raises(BundleError, match="not a pits id"):
        store.offer(bundle.id, ["../p"])
    removed, withdrawn = store.remove(bundle.id)
    assert removed == bundle and sorted(withdrawn) == ["canary", "p2"]
    assert store.offers() == {} and store.bundles() == []
    with pytest.raises(BundleError) as caught:
        store.remove(bundle.id)
    assert caught.value.status == 404


@pytest.mark.provokes_error(
    "pitlink.cloud.bundles", r"^offers file unreadable", why="the offers file is not JSON"
)
def test_a_hostile_offers_file_is_read_as_what_is_valid_in_it(
    store: BundleStore, tmp_path: Path
) -> None:
    bundle = store.add_file(bundle_file(tmp_path))
    (store.root / "offers.json").write_text(
        json.dumps({"p1": bundle.id, "../x": bundle.id, "p2": "../../etc", "p3": 7})
    )
    assert store.offers() == {"p1": bundle.id}
    (store.root / "offers.json").write_text("[not json")
    os.utime(store.root / "offers.json", ns=(1, 1))
    assert store.offers() == {}
    # Past its bound (many times what a fleet's offers take) it is not read at all.
    padded = json.dumps({"p1": bundle.id}) + " " * MAX_OFFERS_BYTES  # valid JSON, too big
    (store.root / "offers.json").write_text(padded)
    assert (store.root / "offers.json").stat().st_size > MAX_OFFERS_BYTES
    assert store.offers() == {}


# -- offering to the boxes connected here --------------------------------------------------------


def hello(pits_id: str, *, sw: str = "0.0.9", update: m.UpdateReport | None = None) -> str:
    return frame(
        m.PitsHello(protocol_version=1, pits_id=pits_id, sw_version=sw, slot="A", update=update)
    )


@pytest.fixture
def updates(store: BundleStore, registry: Registry, metrics: Metrics) -> Updates:
    u = Updates(store, registry, metrics)
    registry.on_register.append(u.connected)
    return u


def test_offer_on_hello_and_on_change_not_to_a_box_that_runs_it(
    updates: Updates, store: BundleStore, connect, tmp_path: Path
) -> None:
    bundle = store.add_file(bundle_file(tmp_path))
    store.offer(bundle.id, ["p1", "p2"])
    conn, transport = connect("p1", hello=False)
    conn.on_text(hello("p1"))
    (offer,) = transport.frames("offer")
    assert offer.message == bundle.offer()
    assert conn.slot == "A"
    # A box that already runs the version is not offered it.
    conn2, transport2 = connect("p2", hello=False)
    conn2.on_text(hello("p2", sw=bundle.version))
    assert transport2.frames("offer") == []
    # An offer made while a box is connected is sent at once; a withdrawal too.
    conn3, transport3 = connect("p3", hello=False)
    conn3.on_text(hello("p3"))
    assert transport3.frames("offer") == []
    store.offer(bundle.id, ["p3"])
    assert updates.refresh() == ["p3"]
    store.withdraw(["p3"])
    assert updates.refresh() == ["p3"]
    assert [f.message for f in transport3.frames("offer")] == [bundle.offer(), m.Offer(bundle=None)]
    assert updates.refresh() == []


def test_reports_are_kept_counted_and_end_offers_for_that_version(
    updates: Updates, store: BundleStore, connect, metrics: Metrics, tmp_path: Path
) -> None:
    bundle = store.add_file(bundle_file(tmp_path))
    conn, transport = connect("p1", hello=False, on_update=updates.reported)
    conn.on_text(hello("p1"))
    report = m.UpdateReport(state="downloading", version=bundle.version, done=5, total=10)
    conn.on_text(frame(report))
    assert conn.update == report
    assert conn.describe()["update"] == report.payload()
    rolled = m.UpdateReport(state="rolled-back", version=bundle.version, message="no health")
    conn.on_text(frame(rolled))
    assert value(metrics.update_reports.labels("rolled-back")) == 1
    assert value(metrics.update_reports.labels("downloading")) == 1
    store.offer(bundle.id, ["p1"])
    assert updates.refresh() == []  # it rolled back from this version: not pushed again
    assert transport.frames("offer") == []
    # After a restart the hello says how it ended.
    again, transport2 = connect("p1", hello=False)
    again.on_text(hello("p1", update=rolled))
    assert again.update == rolled and transport2.frames("offer") == []
    failed = m.UpdateReport(state="failed", version=bundle.version)
    assert wants_offer(None, failed, bundle) and not wants_offer(None, rolled, bundle)


# -- damaged files (issue 25): nothing read from the folder raises past its parser -----------------


def error_lines(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(message)]


@pytest.mark.provokes_error(
    "pitlink.cloud.bundles",
    r"^offers file unreadable",
    why="offers.json is 100,000 opening brackets, then changes to another damage",
)
def test_a_deeply_nested_offers_file_stands_for_no_offers_and_is_said_once(
    updates: Updates,
    store: BundleStore,
    connect,
    registry: Registry,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bundle = store.add_file(bundle_file(tmp_path))
    offers = store.root / "offers.json"
    offers.write_bytes(b"[" * 100_000)  # the attack: RecursionError out of json.loads
    for _n in range(3):  # every hello, and every tick, asks for the offers
        conn, transport = connect("p1", hello=False)
        conn.on_text(hello("p1"))
        assert conn.state == "open" and registry.get("p1") is conn
        assert transport.frames("offer") == [] and transport.closes == []
        assert updates.refresh() == []
    [line] = error_lines(caplog, "offers file unreadable")
    assert line.path == str(offers) and "not JSON" in line.error  # type: ignore[attr-defined]
    # Changed (still damaged, otherwise): said again, once.
    offers.write_bytes(b'{"a":' * 40 + b"1" + b"}" * 40)
    assert store.offers() == {} and store.offers() == {}
    lines = error_lines(caplog, "offers file unreadable")
    assert len(lines) == 2 and "nested more than" in lines[1].error  # type: ignore[attr-defined]
    # Repaired: the offer stands again and reaches the box at the next tick.
    offers.write_text(json.dumps({"p1": bundle.id}))
    assert updates.refresh() == ["p1"]
    assert transport.frames("offer")[0].message == bundle.offer()


@pytest.mark.provokes_error(
    "pitlink.cloud.bundles", r"^offers file unreadable", why="offers.json is damaged"
)
def test_a_change_to_a_damaged_offers_file_is_refused_and_loses_nothing(
    store: BundleStore, tmp_path: Path
) -> None:
    bundle = store.add_file(bundle_file(tmp_path))
    offers = store.root / "offers.json"
    damaged = b'{"p1": "' + bundle.id.encode() + b'", \xff'
    offers.write_bytes(damaged)
    assert store.offers() == {}
    for change in (
        lambda: store.offer(bundle.id, ["p2"]),
        lambda: store.withdraw(["p1"]),
        lambda: store.remove(bundle.id),
    ):
        with pytest.raises(BundleError, match=r"offers file .* cannot be read .*repair or delete"):
            change()
    assert offers.read_bytes() == damaged and store.get(bundle.id) == bundle
    offers.unlink()
    assert store.offer(bundle.id, ["p2"]) == bundle and store.offers() == {"p2": bundle.id}


@pytest.mark.parametrize(
    "meta",
    [
        b"[" * 100_000,
        b'{"id": ' + b"[" * 900 + b"]" * 900 + b"}",  # decodes; str() of it would recurse
        b"\xff\xfe",
        b"[]",
        b'{"id": 1}',
        None,  # the right fields, with a size of 1e400 (an infinity int() refuses)
        b" " * (MAX_META_BYTES + 1),
    ],
)
def test_a_damaged_bundle_record_is_no_bundle_and_is_said_once(
    updates: Updates,
    store: BundleStore,
    connect,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    meta: bytes | None,
) -> None:
    bundle = store.add_file(bundle_file(tmp_path))
    path = store.root / f"{bundle.id}.json"
    good = path.read_bytes()
    if meta is None:
        meta = good.replace(f'"size": {bundle.size}'.encode(), b'"size": 1e400')
        assert meta != good
    store.offer(bundle.id, ["p1"])
    path.write_bytes(meta)
    for _n in range(3):
        conn, transport = connect("p1", hello=False)
        conn.on_text(hello("p1"))
        assert conn.state == "open" and transport.frames("offer") == []
        assert updates.refresh() == [] and store.bundles() == [] and store.get(bundle.id) is None
    [line] = error_lines(caplog, "bundle metadata unreadable")
    assert line.path == str(path) and line.bundle == bundle.id  # type: ignore[attr-defined]
    # Repaired: offered at the next tick; damaged again later: said again.
    path.write_bytes(good)
    assert updates.refresh() == ["p1"]
    path.write_bytes(meta)
    assert store.get(bundle.id) is None
    assert len(error_lines(caplog, "bundle metadata unreadable")) == 2
