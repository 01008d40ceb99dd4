"""Rollouts in waves (cloud.rollout, cloud.rollout_store) over plain objects: the bundle folder,
connections over a fake transport, and the relay's offers (cloud.updates)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cloudfakes import frame, value

from cloud.bundles import BundleError, BundleStore
from cloud.metrics import Metrics
from cloud.registry import Registry
from cloud.rollout import MAX_ROLLOUTS_BYTES, Rollout, describe_rollout
from cloud.rollout_store import Rollouts
from cloud.updates import Updates, wants_offer
from wire import messages as m

NAME = "pitlink-amd64-0.2.0+20261129T1612.raucb"
VERSION = "0.2.0+20261129T1612"


@pytest.fixture
def store(tmp_path: Path) -> BundleStore:
    return BundleStore(tmp_path / "bundles", wall=lambda: 1_800_000_000.0)


@pytest.fixture
def updates(store: BundleStore, registry: Registry, metrics: Metrics) -> Updates:
    u = Updates(store, registry, metrics)
    registry.on_register.append(u.connected)
    return u


def add(store: BundleStore, tmp_path: Path, name: str = NAME):
    path = tmp_path / "in" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(name.encode() * 100)
    return store.add_file(path)


def hello(pits_id: str, *, sw: str = "0.1.0", arch: str | None = "amd64") -> str:
    features = [f"arch:{arch}"] if arch else []
    return frame(
        m.PitsHello(protocol_version=1, pits_id=pits_id, sw_version=sw, slot="A", features=features)
    )


def boxes(connect, updates: Updates, *ids: str, **kwargs):
    out = {}
    for pits_id in ids:
        conn, transport = connect(pits_id, hello=False, on_update=updates.reported)
        conn.on_text(hello(pits_id, **kwargs))
        out[pits_id] = (conn, transport)
    return out


def report(conn, state: str, version: str = VERSION, message: str = "") -> None:
    conn.on_text(frame(m.UpdateReport(state=state, version=version, message=message)))


def offered(transport) -> list[str | None]:
    return [f.message.bundle for f in transport.frames("offer")]


def test_a_wave_of_two_then_the_rest_once_both_are_good(
    updates: Updates, store: BundleStore, connect, tmp_path: Path
) -> None:
    bundle = add(store, tmp_path)
    fleet = boxes(connect, updates, "d", "b", "c", "a")
    assert updates.rollouts is not None
    updates.rollouts.start(bundle.id, 2, [], "alice")
    updates.refresh()
    # The wave: the first two connected boxes by pits id; the others are offered nothing yet.
    assert store.offers() == {"a": bundle.id, "b": bundle.id}
    assert [offered(fleet[p][1]) for p in "abcd"] == [[bundle.id], [bundle.id], [], []]
    report(fleet["a"][0], "good")
    assert store.offers() == {"a": bundle.id, "b": bundle.id}
    report(fleet["b"][0], "downloading")
    report(fleet["b"][0], "good")
    assert store.offers() == {p: bundle.id for p in "abcd"}
    assert [offered(fleet[p][1]) for p in "cd"] == [[bundle.id], [bundle.id]]
    r = updates.rollouts.all()[bundle.id]
    assert (r.phase, r.state, r.members) == ("rest", "running", ["a", "b"])
    # A box that connects later is offered it too; one of another arch, or newer, is not.
    late = boxes(connect, updates, "e")
    other = boxes(connect, updates, "f", arch="arm64")
    ahead = boxes(connect, updates, "g", sw="0.3.0")
    updates.refresh()
    assert offered(late["e"][1]) == [bundle.id]
    assert offered(other["f"][1]) == offered(ahead["g"][1]) == []
    assert "f" not in store.offers() and "g" not in store.offers()


def test_boxes_named_first_make_the_wave(
    updates: Updates, store: BundleStore, connect, tmp_path: Path
) -> None:
    bundle = add(store, tmp_path)
    boxes(connect, updates, "a", "b", "c")
    assert updates.rollouts is not None
    updates.rollouts.start(bundle.id, 2, ["c", "away"], "alice")
    updates.refresh()
    assert store.offers() == {"c": bundle.id, "away": bundle.id}


@pytest.mark.parametrize("bad", ["rolled-back", "failed"])
def test_a_rollback_in_the_wave_halts_it_withdraws_and_can_be_resumed_or_cancelled(
    updates: Updates,
    store: BundleStore,
    connect,
    metrics: Metrics,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    bad: str,
) -> None:
    caplog.set_level(logging.INFO)
    bundle = add(store, tmp_path)
    fleet = boxes(connect, updates, "a", "b", "c", "d")
    assert updates.rollouts is not None
    updates.rollouts.start(bundle.id, 3, [], "alice")
    updates.refresh()
    report(fleet["c"][0], "installing")
    report(fleet["a"][0], bad, message="no health")
    r = updates.rollouts.all()[bundle.id]
    assert r.state == "halted"
    assert r.halt is not None and (r.halt["pitsId"], r.halt["state"]) == ("a", bad)
    assert r.halt["version"] == VERSION and r.halt["message"] == "no health"
    # a and b had not installed it: withdrawn; c is installing it: its offer stays.
    assert store.offers() == {"c": bundle.id}
    assert offered(fleet["b"][1]) == [bundle.id, None]
    assert value(metrics.rollout_halted.labels(bundle.id)) == 1
    [line] = [rec for rec in caplog.records if rec.getMessage() == "rollout halted"]
    assert line.pits_id == "a" and line.levelno == logging.WARNING  # type: ignore[attr-defined]
    assert "halted: a reported" in describe_rollout(r)
    # Halted: nothing more is offered, whatever happens.
    report(fleet["c"][0], "good")
    updates.refresh()
    assert offered(fleet["d"][1]) == []
    with pytest.raises(BundleError, match="being rolled out already"):
        updates.rollouts.start(bundle.id, 1, [], "bob")
    # Resumed: a is left out, the wave is filled up again (b back, d joins).
    updates.rollouts.resume(bundle.id)
    updates.refresh()
    r = updates.rollouts.all()[bundle.id]
    assert (r.state, r.skipped, r.wave_members()) == ("running", ["a"], ["b", "c", "d"])
    assert offered(fleet["d"][1]) == [bundle.id]
    assert value(metrics.rollout_halted.labels(bundle.id)) == 0
    # Cancelled: the offers not taken up are withdrawn, c's (good) stays.
    cancelled, withdrawn = updates.rollouts.cancel(bundle.id)
    assert cancelled.state == "cancelled" and withdrawn == ["b", "d"]
    updates.refresh()
    assert offered(fleet["d"][1]) == [bundle.id, None]
    with pytest.raises(BundleError, match="no halted rollout"):
        updates.rollouts.resume(bundle.id)
    updates.rollouts.start(bundle.id, 1, [], "bob")  # a new rollout may replace a cancelled one
    updates.rollouts.forget(bundle.id)
    updates.refresh()
    assert updates.rollouts.all() == {}
    assert (
        metrics.registry.get_sample_value("pitlink_rollout_halted", {"bundle": bundle.id}) is None
    )


def test_a_rollout_survives_a_new_store_on_the_same_folder(
    store: BundleStore, tmp_path: Path
) -> None:
    bundle = add(store, tmp_path)
    Rollouts(store).start(bundle.id, 2, ["a"], "alice")
    again = Rollouts(BundleStore(store.root))
    r = again.all()[bundle.id]
    assert (r.wave, r.first, r.state, r.by) == (2, ["a"], "running", "alice")
    assert Rollout.parse(json.loads(json.dumps(r.describe()))) == r


def test_bad_rollouts_are_refused(store: BundleStore, tmp_path: Path) -> None:
    bundle = add(store, tmp_path)
    odd = add(store, tmp_path, "pitlink-amd64-nightly.raucb")
    rollouts = Rollouts(store)
    with pytest.raises(BundleError, match="no bundle"):
        rollouts.start("0" * 16, 1, [], "a")
    with pytest.raises(BundleError, match=r"not MAJOR\.MINOR\.PATCH"):
        rollouts.start(odd.id, 1, [], "a")
    for wave in (0, 1001):
        with pytest.raises(BundleError, match="the wave is 1 to 1000"):
            rollouts.start(bundle.id, wave, [], "a")
    with pytest.raises(BundleError, match="2 boxes named for a wave of 1"):
        rollouts.start(bundle.id, 1, ["a", "b"], "a")
    with pytest.raises(BundleError, match="is not a pits id"):
        rollouts.start(bundle.id, 1, ["../x"], "a")
    with pytest.raises(BundleError, match="no rollout of bundle"):
        rollouts.cancel(bundle.id)
    assert not (store.root / "rollouts.json").exists()


@pytest.mark.provokes_error(
    "pitlink.cloud.rollout", r"^rollouts file unreadable", why="rollouts.json is damaged"
)
def test_a_damaged_rollouts_file_moves_nothing_and_is_not_written_over(
    updates: Updates, store: BundleStore, connect, tmp_path: Path
) -> None:
    bundle = add(store, tmp_path)
    boxes(connect, updates, "a")
    path = store.root / "rollouts.json"
    path.write_bytes(b"[" * 100_000)
    assert updates.refresh() == [] and store.offers() == {}
    assert updates.rollouts is not None
    with pytest.raises(BundleError, match=r"rollouts file .* cannot be read"):
        updates.rollouts.start(bundle.id, 1, [], "a")
    assert path.read_bytes() == b"[" * 100_000
    # Past its bound, or records that are not a rollout: skipped.
    path.write_text(json.dumps({bundle.id: {"bundle": bundle.id}}) + " " * MAX_ROLLOUTS_BYTES)
    assert updates.rollouts.all() == {}
    path.write_text(
        json.dumps(
            {
                bundle.id: {"bundle": bundle.id, "version": VERSION, "wave": 0},
                "x": {"bundle": "../../etc", "version": VERSION, "wave": 1},
            }
        )
    )
    assert updates.rollouts.all() == {}


def test_never_offered_a_version_that_is_not_newer(
    updates: Updates, store: BundleStore, connect, tmp_path: Path
) -> None:
    bundle = add(store, tmp_path)  # 0.2.0+20261129T1612
    store.offer(bundle.id, ["older", "same-numbers-later-build", "newer", "unknown"])
    older = boxes(connect, updates, "older", sw="0.2.0")  # no build: older than any build
    later = boxes(connect, updates, "same-numbers-later-build", sw="0.2.0+20261201T0000")
    newer = boxes(connect, updates, "newer", sw="0.10.0")
    unknown = boxes(connect, updates, "unknown", sw="dev")
    assert offered(older["older"][1]) == [bundle.id]
    for fleet in (later, newer, unknown):
        ((_conn, transport),) = fleet.values()
        assert offered(transport) == []
    assert wants_offer(None, None, bundle)
