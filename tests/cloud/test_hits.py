"""The fast path of a cache hit, as a plain object: which requests it answers, and with what.

Everything it declines goes to the application (tests/integration/test_fast_hits.py shows both
paths give the same headers over real sockets); here, each reason to decline, and each bound.
"""

from __future__ import annotations

import re

import pytest

from cloud import hits as hits_module
from cloud.active import ActivePits
from cloud.admin import PublicAllowlist
from cloud.cache import Cache, Entry
from cloud.clients import Clients
from cloud.drain import Drain
from cloud.hits import Hits
from cloud.metrics import Metrics
from cloud.ratelimit import RateLimiter, SharedLimiter
from cloud.registry import Registry
from cloud.relay import Freshness, Relay
from cloud.routing import Router
from pitlink_testkit.clock import FakeClock
from wire.canonical import etag_of
from wire.paths import DEFAULT_ALLOWLIST

BODY = b'{"channels":[]}'
ETAG = etag_of(BODY)
URI = "/pits/p1/httpfiles/Channels.json"
PATH = "/httpfiles/Channels.json"


class Wall:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Parts:
    """A Hits over the real cache, relay, router and limiter, with time injected."""

    def __init__(self, *, client_rate: float | None = None, admin_host: str | None = None):
        self.clock = FakeClock()
        self.wall = Wall()
        self.metrics = Metrics()
        self.cache = Cache()
        self.drain = Drain()
        self.allowlist = PublicAllowlist(DEFAULT_ALLOWLIST)
        self.relay = Relay(
            registry=Registry(self.metrics),
            cache=self.cache,
            metrics=self.metrics,
            freshness=Freshness(2.0),
            clock=self.clock,
        )
        self.router = Router(active=ActivePits("p1"), allowlist=self.allowlist, live=lambda: ["p1"])
        self.limits = SharedLimiter(RateLimiter(client_rate), "client", clock=self.clock)
        self.hits = Hits(
            serving=self.relay,
            route=self.router.route,
            drain=self.drain,
            client_limits=self.limits,
            clients=Clients(),
            metrics=self.metrics,
            server="TornadoServer/test",
            admin_host=admin_host,
            wall=self.wall,
            max_prepared=3,
        )

    def store(self, path: str = PATH, body: bytes = BODY, pits_id: str = "p1") -> Entry:
        entry = Entry(body=body, etag=etag_of(body), fetched_at=self.clock())
        self.cache.put((pits_id, "GET", path), entry)
        return entry

    def ask(self, uri: str = URI, method: str = "GET", version: str = "HTTP/1.1", **headers: str):
        fields = {name.replace("_", "-"): value for name, value in headers.items()}
        return self.hits.answer(method, uri, version, fields, "192.0.2.7")

    @property
    def counted(self) -> float:
        return self.metrics.cache_hits._value.get()


def parse(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        assert name not in headers, f"{name} twice"
        headers[name] = value
    return status, headers, body


@pytest.fixture
def parts() -> Parts:
    return Parts()


def test_a_fresh_entry_is_answered_whole(parts: Parts) -> None:
    parts.store()
    parts.clock.advance(0.4)
    hit = parts.ask()
    assert hit is not None and hit.status == 200
    status, headers, body = parse(hit.data)
    assert status == "HTTP/1.1 200 OK"
    assert body == BODY
    assert headers == {
        "Server": "TornadoServer/test",
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": hits_module.EXPOSED,
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox allow-scripts",
        "Content-Type": "application/json; charset=utf-8",
        "X-Pitlink-Cache": "HIT",
        "Etag": ETAG,
        "Content-Length": str(len(BODY)),
        "Date": "Fri, 15 Jan 2027 08:00:00 GMT",
        "X-Request-Id": headers["X-Request-Id"],
        "Age": "0",
        # 2 s window, 0.4 s old: good for another 1.6 s, rounded up as the handler does.
        "Cache-Control": "public, max-age=2",
    }
    assert parts.counted == 1


def test_age_and_max_age_follow_the_entry(parts: Parts) -> None:
    parts.store()
    parts.clock.advance(1.5)
    _, headers, _ = parse(parts.ask().data)  # type: ignore[union-attr]
    assert (headers["Age"], headers["Cache-Control"]) == ("1", "public, max-age=1")


def test_a_matching_if_none_match_is_a_304_without_body_or_type(parts: Parts) -> None:
    parts.store()
    for tag in (ETAG, f"W/{ETAG}", f'"other", {ETAG}', "*"):
        hit = parts.ask(If_None_Match=tag)
        assert hit is not None and hit.status == 304, tag
        status, headers, body = parse(hit.data)
        assert status == "HTTP/1.1 304 Not Modified"
        assert body == b""
        assert "Content-Type" not in headers and "Content-Length" not in headers
        assert headers["Etag"] == ETAG and headers["X-Pitlink-Cache"] == "HIT"
    stale_tag = parts.ask(If_None_Match='"sha256:00"')
    assert stale_tag is not None and stale_tag.status == 200


def test_head_has_the_length_and_no_body(parts: Parts) -> None:
    parts.store()
    hit = parts.ask(method="HEAD")
    assert hit is not None
    _, headers, body = parse(hit.data)
    assert headers["Content-Length"] == str(len(BODY)) and body == b""


def test_connection_close_is_said_back(parts: Parts) -> None:
    parts.store()
    _, headers, _ = parse(parts.ask(Connection="close").data)  # type: ignore[union-attr]
    assert headers["Connection"] == "close"
    _, headers, _ = parse(parts.ask().data)  # type: ignore[union-attr]
    assert "Connection" not in headers


def test_query_strings_are_ignored_as_by_the_application(parts: Parts) -> None:
    parts.store()
    assert parts.ask(URI + "?nocache=123") is not None


def test_the_root_routes_go_to_the_active_pits(parts: Parts) -> None:
    parts.store()
    assert parts.ask("/httpfiles/Channels.json") is not None


@pytest.mark.parametrize(
    ("why", "kwargs"),
    [
        ("a miss", {"uri": "/pits/p1/httpfiles/other.json"}),
        ("another pits", {"uri": "/pits/p2/httpfiles/Channels.json"}),
        ("not a data route", {"uri": "/"}),
        ("the index page", {"uri": "/pits"}),
        ("a POST", {"method": "POST"}),
        ("an OPTIONS", {"method": "OPTIONS"}),
        ("HTTP/1.0", {"version": "HTTP/1.0"}),
        ("a body", {"Content_Length": "3"}),
        ("a chunked body", {"Transfer_Encoding": "chunked"}),
        ("a malformed path", {"uri": "/pits/p1/httpfiles/../Channels.json"}),
        ("a double-encoded path", {"uri": "/pits/p1/httpfiles/%252e%252e/x.json"}),
        ("a bad pits id", {"uri": "/pits/-x/httpfiles/Channels.json"}),
        ("not on the allowlist", {"uri": "/pits/p1/secret.txt"}),
    ],
)
def test_what_the_application_decides(parts: Parts, why: str, kwargs: dict[str, str]) -> None:
    parts.store()
    parts.store("/secret.txt")
    assert parts.ask(**kwargs) is None, why
    assert parts.counted == 0


def test_a_copy_past_its_window_goes_to_the_application(parts: Parts) -> None:
    parts.store()
    parts.clock.advance(2.0)
    assert parts.ask() is None


def test_a_relay_leaving_answers_through_the_application(parts: Parts) -> None:
    """The application adds `Connection: close` then, and counts the request in flight."""
    parts.store()
    parts.drain.draining = True
    assert parts.ask() is None


def test_a_switched_off_allowlist_entry_is_seen_at_once(parts: Parts) -> None:
    parts.store()
    assert parts.ask() is not None
    parts.allowlist.set("/httpfiles/**", False)
    assert parts.ask() is None
    parts.allowlist.set("/httpfiles/**", True)
    assert parts.ask() is not None


def test_the_admin_host_is_left_to_the_application() -> None:
    parts = Parts(admin_host="admin.example.org")
    parts.store()
    assert parts.ask(Host="admin.example.org") is None
    assert parts.ask(Host="ADMIN.example.org:8443") is None
    assert parts.ask(Host="relay.example.org") is not None
    assert parts.ask() is not None  # no Host: Tornado takes 127.0.0.1


def test_a_client_over_its_rate_gets_the_applications_429() -> None:
    parts = Parts(client_rate=1.0)
    parts.store()
    assert parts.ask() is not None
    assert parts.ask() is None  # the application answers 429 with Retry-After
    parts.clock.advance(1.0)
    assert parts.ask() is not None


def test_limits_shared_through_redis_are_left_to_the_application() -> None:
    class Remote:
        async def rate_check(self, *args: object) -> float | None:
            return 0.0

    parts = Parts(client_rate=100.0)
    parts.limits.remote = Remote()  # type: ignore[assignment]
    parts.store()
    assert parts.ask() is None


def test_an_entry_with_an_etag_the_relay_would_not_write_is_not_prepared(parts: Parts) -> None:
    parts.cache.put(
        ("p1", "GET", PATH),
        Entry(body=BODY, etag='"x"\r\nSet-Cookie: a=b', fetched_at=parts.clock()),
    )
    assert parts.ask() is None


def test_a_new_body_is_prepared_anew(parts: Parts) -> None:
    parts.store()
    first = parse(parts.ask().data)  # type: ignore[union-attr]
    parts.store(body=b'{"channels":[1]}')
    second = parse(parts.ask().data)  # type: ignore[union-attr]
    assert first[2] == BODY and second[2] == b'{"channels":[1]}'
    assert second[1]["Etag"] == etag_of(b'{"channels":[1]}')


def test_prepared_responses_are_bounded(parts: Parts) -> None:
    for n in range(5):
        parts.store(f"/httpfiles/{n}.json")
        assert parts.ask(f"/pits/p1/httpfiles/{n}.json") is not None
        assert len(parts.hits._prepared) <= 3
    assert parts.ask("/pits/p1/httpfiles/0.json") is not None


def test_remembered_paths_are_bounded(parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hits_module, "MAX_PATHS", 4)
    parts.store()
    for n in range(10):
        parts.ask(f"/pits/p1/httpfiles/{n}.json")
        assert len(parts.hits._paths) <= 4
    assert parts.ask() is not None


def test_request_ids_are_unique_and_shaped_like_uuid_hex(parts: Parts) -> None:
    parts.store()
    ids = {parse(parts.ask().data)[1]["X-Request-Id"] for _ in range(1000)}  # type: ignore[union-attr]
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert parts.hits.ids.next()[:16] != Parts().hits.ids.next()[:16]  # per process


def test_the_date_moves_with_the_wall_clock(parts: Parts) -> None:
    parts.store()
    first = parse(parts.ask().data)[1]["Date"]  # type: ignore[union-attr]
    parts.wall.now += 0.5
    assert parse(parts.ask().data)[1]["Date"] == first  # type: ignore[union-attr]
    parts.wall.now += 1
    assert parse(parts.ask().data)[1]["Date"] == "Fri, 15 Jan 2027 08:00:01 GMT"  # type: ignore[union-attr]


def test_long_paths_are_answered_but_not_remembered(parts: Parts) -> None:
    """A request line may be 16 KiB: 4,096 remembered ones would be 64 MiB."""
    long_path = "/httpfiles/" + "a" * 600 + ".json"
    parts.store(long_path)
    parts.store()
    assert parts.ask("/pits/p1" + long_path) is not None
    assert parts.hits._paths == {}
    assert len(parts.allowlist._answers) == 0
    assert parts.ask() is not None
    assert list(parts.hits._paths) == [URI]


def test_a_prepared_response_holds_no_body(parts: Parts) -> None:
    """Bodies stay in the cache alone, whose byte bound then holds: an entry evicted from it is
    not kept alive by its prepared headers."""
    parts.store()
    parts.ask()
    (prepared,) = parts.hits._prepared.values()
    assert BODY not in prepared.ok and not hasattr(prepared, "entry")
