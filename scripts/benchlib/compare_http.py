"""Comparisons over HTTP: cache-hit throughput, a CDN in front, latency, several workers."""

from __future__ import annotations

import http.client
import pstats
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from benchlib.report import Chart, Outcome, Row, ratio
from benchlib.stack import (
    PITS_ID,
    ROOT,
    BenchError,
    Keys,
    Relay,
    Settings,
    Sim,
    Stack,
    event_sim,
    http_get,
    make_keys,
    median,
    metric,
    need,
    paired_ratio,
    percentile,
    start_agent,
    start_bare_tornado,
    start_nginx,
    start_redis,
    start_relay,
    wait_data,
    wrk,
    wrk_side_by_side,
    wrk_summary,
)
from pitlink_testkit.loopback import free_port


def _port(url: str) -> int:
    return urllib.parse.urlsplit(url).port or 80


def _static_server(port: int, root: str) -> str:
    return f"""    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
"""


def _write_static(settings: Settings, path: str, body: bytes) -> str:
    root = settings.tmp / "www"
    target = root / f"pits/{PITS_ID}{path}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(body)
    for d in [root, *target.relative_to(root).parents]:
        (root / d).chmod(0o755)
    return str(root)


def _throughput_chart(title: str, runs: dict[str, Any], target: float | None = None) -> Chart:
    return Chart(
        title=title,
        unit="requests/s (median of runs)",
        bars={k: v["rps_median"] for k, v in runs.items()},
        runs={k: v["rps_runs"] for k, v in runs.items()},
        target=target,
    )


# A relay that keeps what it fetched for an hour and limits no client: every repeat is a hit.
CACHING = ("--freshness", "3600", "--client-rate", "0", "--client-miss-rate", "0")


def _caching_relay(
    stack: Stack,
    keys: Keys,
    profile: Path | None = None,
    name: str = "relay",
    *flags: str,
    sim: Sim | None = None,
) -> tuple[Relay, str, bytes]:
    """A relay that keeps everything an hour, its agent and the event (on `sim`, or a new
    one): (relay, the event's largest path, its body as the relay serves it), the body already
    in the relay's cache."""
    sim = sim or event_sim(stack)
    relay = start_relay(stack, keys, name, *CACHING, *flags, profile=profile)
    start_agent(stack, keys, relay.url, sim, f"{name}-agent")
    path = sim.biggest()
    return relay, path, wait_data(stack, relay.data(path))


def hit(settings: Settings) -> Outcome:
    """1. Cache hits of the relay vs a bare Tornado handler vs nginx serving the same bytes."""
    need("wrk", "nginx")
    out = Outcome("hit")
    keys = make_keys(settings.tmp)
    with Stack(settings.tmp) as stack:
        sim = event_sim(stack)
        relay, path, body = _caching_relay(stack, keys, sim=sim)
        # The same relay with no schema check: bodies are checked once each when
        # they arrive, so hits must run as fast with the check as without it.
        unchecked, _, _ = _caching_relay(
            stack, keys, None, "unchecked", "--no-schema-check", sim=sim
        )
        for one in (relay, unchecked):
            _, headers, _ = http_get(one.data(path))
            if headers.get("X-Pitlink-Cache") != "HIT":
                raise BenchError(f"the relay did not serve {path} from its cache: {headers}")
        tornado_url = start_bare_tornado(stack, body, "application/json")
        nginx_port = free_port()
        start_nginx(stack, _static_server(nginx_port, _write_static(settings, path, body)))
        nginx_url = f"http://127.0.0.1:{nginx_port}/pits/{PITS_ID}{path}"
        stack.wait(lambda: http_get(nginx_url)[2] == body, "nginx serving the body")
        runs = wrk_side_by_side(
            {
                "relay": relay.data(path),
                "tornado": tornado_url + path,
                "nginx": nginx_url,
                "relay, schemas unchecked": unchecked.data(path),
            },
            rounds=settings.rounds,
            seconds=settings.wrk_seconds,
        )
    summary = {k: wrk_summary(v) for k, v in runs.items()}
    relay_rps, tornado_rps, nginx_rps, unchecked_rps = (summary[k]["rps_median"] for k in runs)
    vs_tornado = ratio(relay_rps, tornado_rps)
    out.details = {
        "path": path,
        "body_bytes": len(body),
        "wrk": "-t1 -c32",
        "paired_ratio_relay_over_tornado": paired_ratio(runs["relay"], runs["tornado"]),
        "paired_ratio_relay_over_nginx": paired_ratio(runs["relay"], runs["nginx"]),
        "paired_ratio_checked_over_unchecked": paired_ratio(
            runs["relay"], runs["relay, schemas unchecked"]
        ),
        **summary,
    }
    out.rows = [
        Row(
            "cache hit: relay vs bare Tornado",
            f"{relay_rps:,.0f} req/s",
            f"{tornado_rps:,.0f} req/s",
            vs_tornado,
            ">= 1.2",
            None if vs_tornado is None else vs_tornado >= 1.2,
        ),
        Row(
            "cache hit: relay vs nginx static",
            f"{relay_rps:,.0f} req/s",
            f"{nginx_rps:,.0f} req/s",
            ratio(relay_rps, nginx_rps),
        ),
        Row(
            "cache hit: schemas checked vs not",
            f"{relay_rps:,.0f} req/s",
            f"{unchecked_rps:,.0f} req/s",
            ratio(relay_rps, unchecked_rps),
            "~1 (noise)",
        ),
    ]
    bad = sum(s["bad_responses"] for s in summary.values())
    if bad:
        out.message = f"{bad} non-2xx answers or socket errors under wrk"
    out.charts = [_throughput_chart(f"cache hit, {len(body):,} B body", summary)]
    return out


PROFILE_TOP = 15


def profile(settings: Settings) -> Outcome:
    """Where a cache hit's time goes: the relay under cProfile while wrk asks one fresh path.

    The top entries by own time go to bench/profile-hit.txt (and the JSON); the README's
    Performance section shows them. cProfile slows everything it sees about twofold, so read
    the shares, not the rate.
    """
    need("wrk")
    out = Outcome("profile")
    keys = make_keys(settings.tmp)
    stats_file = settings.tmp / "relay.prof"
    with Stack(settings.tmp) as stack:
        relay, path, _ = _caching_relay(stack, keys, profile=stats_file)
        run = wrk(relay.data(path), settings.wrk_seconds * 2)
        stack.stop_one(relay.proc, timeout=30)  # SIGTERM: the relay leaves, cProfile writes
    if not stats_file.exists():
        raise BenchError("the profiled relay wrote no profile (did it stop cleanly?)")
    stats = pstats.Stats(str(stats_file))
    total = stats.total_tt  # type: ignore[attr-defined]
    idle = sum(
        tt
        for (file, _, name), (_, _, tt, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        if "poll" in name and file == "~"
    )
    busy = max(total - idle, 1e-9)
    rows = sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: item[1][2],
        reverse=True,
    )
    top = []
    for (file, line, name), (_, calls, tt, cum, _) in rows:
        if "poll" in name and file == "~":
            continue  # waiting for the next request, not work
        where = name if file == "~" else f"{_short(file)}:{line}({name})"
        top.append(
            {
                "function": where,
                "calls_per_request": round(calls / max(run.requests, 1), 2),
                "own_share": round(tt / busy, 3),
                "cumulative_share": round(cum / busy, 3),
            }
        )
        if len(top) == PROFILE_TOP:
            break
    text = [f"relay cache hit under cProfile: {run.requests:,} requests, {run.rps:,.0f} req/s"]
    text += ["own  cum   calls/req  function"]
    text += [
        f"{t['own_share']:4.0%} {t['cumulative_share']:4.0%}  {t['calls_per_request']:9}  "
        f"{t['function']}"
        for t in top
    ]
    (ROOT / "bench").mkdir(exist_ok=True)
    (ROOT / "bench" / "profile-hit.txt").write_text("\n".join(text) + "\n")
    out.details = {"path": path, "requests": run.requests, "rps_profiled": run.rps, "top": top}
    out.rows = [
        Row(
            "profile of a hit: top function (own time)",
            f"{top[0]['function']} {top[0]['own_share']:.0%}" if top else "-",
            "bench/profile-hit.txt",
        )
    ]
    return out


def _short(file: str) -> str:
    """A profiled function's file, from the package on (tornado/iostream.py, cloud/hits.py)."""
    parts = Path(file).parts
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            index = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[index + 1 :])
    return "/".join(parts[-2:])


def _cdn_server(port: int, upstream_port: int, zone: str) -> str:
    return f"""    upstream {zone}_up {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{zone}_up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache {zone};
            proxy_cache_lock on;
            proxy_cache_revalidate on;
            proxy_cache_use_stale updating error timeout;
            proxy_cache_background_update on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
"""


def cdn(settings: Settings) -> Outcome:
    """2. The relay behind nginx proxy_cache (honouring its Cache-Control) vs nginx static.

    Twice: with a freshness window long enough for the CDN to keep the copy (60 s), and with
    the default window (1 s), which is what a race is run with.
    """
    need("wrk", "nginx")
    out = Outcome("cdn")
    keys = make_keys(settings.tmp)
    with Stack(settings.tmp) as stack:
        sim = event_sim(stack)
        relays = {
            "60": start_relay(
                stack,
                keys,
                "relay60",
                "--freshness",
                "60",
                "--client-rate",
                "0",
                "--client-miss-rate",
                "0",
            ),
            "1": start_relay(
                stack, keys, "relay1", "--client-rate", "0", "--client-miss-rate", "0"
            ),
        }
        for window, relay in relays.items():
            start_agent(stack, keys, relay.url, sim, f"agent{window}")
        path = sim.biggest()
        body = b""
        cache_control = {}
        for window, relay in relays.items():
            body = wait_data(stack, relay.data(path))
            cache_control[window] = http_get(relay.data(path))[1].get("Cache-Control")
        ports = {"static": free_port(), "cdn60": free_port(), "cdn1": free_port()}
        prefix = settings.tmp / "nginx"
        servers = (
            f"    proxy_cache_path {prefix}/cache60 keys_zone=cdn60:10m max_size=64m use_temp_path=off;\n"
            f"    proxy_cache_path {prefix}/cache1 keys_zone=cdn1:10m max_size=64m use_temp_path=off;\n"
            + _static_server(ports["static"], _write_static(settings, path, body))
            + _cdn_server(ports["cdn60"], _port(relays["60"].url), "cdn60")
            + _cdn_server(ports["cdn1"], _port(relays["1"].url), "cdn1")
        )
        start_nginx(stack, servers)
        urls = {k: f"http://127.0.0.1:{p}/pits/{PITS_ID}{path}" for k, p in ports.items()}
        for name, url in urls.items():

            def serves(url: str = url) -> bool:
                return http_get(url)[2] == body

            stack.wait(serves, f"{name} through nginx")
        cache_status = {k: http_get(u)[1].get("X-Cache-Status") for k, u in urls.items()}

        def reaching(window: str) -> float:
            base = relays[window].url
            return sum(
                metric(base, n)
                for n in (
                    "pitlink_cache_hits_total",
                    "pitlink_cache_misses_total",
                    "pitlink_cache_revalidations_total",
                    "pitlink_cache_stale_served_total",
                )
            )

        targets = {
            "CDN -> relay (60 s)": urls["cdn60"],
            "nginx static": urls["static"],
            "CDN -> relay (1 s)": urls["cdn1"],
        }
        for url in targets.values():
            wrk(url, 1)
        before = {w: reaching(w) for w in relays}
        runs = wrk_side_by_side(
            targets, rounds=settings.rounds, seconds=settings.wrk_seconds, warmup=False
        )
        reached = {w: reaching(w) - before[w] for w in relays}
    summary = {k: wrk_summary(v) for k, v in runs.items()}
    cdn60, static, cdn1 = (summary[k]["rps_median"] for k in runs)
    r60, r1 = ratio(cdn60, static), ratio(cdn1, static)
    total = {k: s["requests"] for k, s in zip(("60", "static", "1"), summary.values(), strict=True)}
    out.details = {
        "path": path,
        "body_bytes": len(body),
        "relay_cache_control": cache_control,
        "nginx_cache_status_after_warmup": cache_status,
        "requests_reaching_relay": reached,
        "paired_ratio_cdn60_over_static": paired_ratio(
            runs["CDN -> relay (60 s)"], runs["nginx static"]
        ),
        **summary,
    }
    out.rows = [
        Row(
            "CDN (nginx proxy_cache) -> relay, 60 s",
            f"{cdn60:,.0f} req/s",
            f"{static:,.0f} req/s",
            r60,
            ">= 0.80",
            None if r60 is None else r60 >= 0.8,
        ),
        Row(
            "CDN -> relay, default 1 s freshness",
            f"{cdn1:,.0f} req/s",
            f"{static:,.0f} req/s",
            r1,
            "(info)",
        ),
        Row(
            "  requests reaching the relay (60 s / 1 s)",
            f"{reached['60']:,.0f} of {total['60']:,}",
            f"{reached['1']:,.0f} of {total['1']:,}",
            None,
            f"CC: {cache_control['60']} / {cache_control['1']}",
        ),
    ]
    out.charts = [_throughput_chart("relay behind a CDN vs nginx static", summary)]
    return out


def _timed(conn: http.client.HTTPConnection, path: str) -> tuple[float, int, str]:
    """One GET: (milliseconds, status, X-Pitlink-Cache)."""
    began = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return (
        (time.perf_counter() - began) * 1000,
        response.status,
        response.getheader("X-Pitlink-Cache") or "",
    )


def _timed_new_connection(netloc: str, path: str) -> tuple[float, int, str]:
    """One GET on a connection of its own, connecting included (as the agent asks the origin)."""
    began = time.perf_counter()
    conn = http.client.HTTPConnection(netloc, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    return (time.perf_counter() - began) * 1000, response.status, ""


def latency(settings: Settings) -> Outcome:
    """3. One request at a time: relay miss (freshness 0) and hit vs the origin directly."""
    out = Outcome("latency")
    samples = 200 if settings.quick else 2000
    keys = make_keys(settings.tmp)
    with Stack(settings.tmp) as stack:
        sim = event_sim(stack)
        miss = start_relay(
            stack,
            keys,
            "miss",
            "--freshness",
            "0",
            "--client-rate",
            "0",
            "--client-miss-rate",
            "0",
            "--pits-fetch-rate",
            "0",
        )
        hit_relay = start_relay(
            stack,
            keys,
            "hit",
            *CACHING,
        )
        agent = start_agent(stack, keys, miss.url, sim, "agent-miss")
        start_agent(stack, keys, hit_relay.url, sim, "agent-hit")
        path = sim.biggest()
        relay_path = f"/pits/{PITS_ID}{path}"
        for url in (sim.url + path, miss.url + relay_path, hit_relay.url + relay_path):
            wait_data(stack, url)
        sim_netloc = urllib.parse.urlsplit(sim.url).netloc
        keep_alive = {
            "direct": (http.client.HTTPConnection(sim_netloc, timeout=10), path),
            "relay miss": (
                http.client.HTTPConnection(urllib.parse.urlsplit(miss.url).netloc, timeout=10),
                relay_path,
            ),
            "relay hit": (
                http.client.HTTPConnection(urllib.parse.urlsplit(hit_relay.url).netloc, timeout=10),
                relay_path,
            ),
        }

        def one(name: str) -> tuple[float, int, str]:
            if name == "direct, new connection":
                return _timed_new_connection(sim_netloc, path)
            conn, p = keep_alive[name]
            return _timed(conn, p)

        order = [*keep_alive, "direct, new connection"]
        times: dict[str, list[float]] = {k: [] for k in order}
        labels: dict[str, dict[str, int]] = {k: {} for k in order}
        try:
            for _ in range(50):  # warm-up: connections open, code paths hot
                for name in order:
                    one(name)
            origin_sum = metric(agent.status_url, "pitlink_origin_fetch_seconds_sum")
            origin_count = metric(agent.status_url, "pitlink_origin_fetch_seconds_count")
            for i in range(samples):
                shift = i % len(order)
                for name in order[shift:] + order[:shift]:  # rotate who goes first
                    ms, status, label = one(name)
                    if status != 200:
                        raise BenchError(f"{name} answered {status}")
                    times[name].append(ms)
                    labels[name][label] = labels[name].get(label, 0) + 1
            origin_sum = metric(agent.status_url, "pitlink_origin_fetch_seconds_sum") - origin_sum
            origin_count = (
                metric(agent.status_url, "pitlink_origin_fetch_seconds_count") - origin_count
            )
        finally:
            for conn, _ in keep_alive.values():
                conn.close()
    stats: dict[str, dict[str, Any]] = {
        k: {
            "p50_ms": round(median(v), 3),
            "p99_ms": round(percentile(v, 99), 3),
            "samples": len(v),
            "cache_labels": labels[k],
        }
        for k, v in times.items()
    }
    direct, missed, hit_ = stats["direct"], stats["relay miss"], stats["relay hit"]
    added = round(missed["p50_ms"] - direct["p50_ms"], 3)
    added_p99 = round(missed["p99_ms"] - direct["p99_ms"], 3)
    agent_origin_ms = round(origin_sum / origin_count * 1000, 3) if origin_count else None
    out.details = {
        "path": path,
        "added_by_miss_p50_ms": added,
        "added_by_miss_p99_ms": added_p99,
        "agent_origin_fetch_mean_ms": agent_origin_ms,
        **stats,
    }
    fresh = stats["direct, new connection"]
    out.rows = [
        Row(
            "latency p50: relay miss vs direct",
            f"{missed['p50_ms']:.2f} ms (+{added:.2f})",
            f"{direct['p50_ms']:.2f} ms",
            ratio(missed["p50_ms"], direct["p50_ms"]),
            "< +2 ms",
            added < 2.0,
        ),
        Row(
            "latency p99: relay miss vs direct",
            f"{missed['p99_ms']:.2f} ms (+{added_p99:.2f})",
            f"{direct['p99_ms']:.2f} ms",
            ratio(missed["p99_ms"], direct["p99_ms"]),
            "< +10 ms",
            added_p99 < 10.0,
        ),
        Row(
            "latency p50 / p99: relay hit vs direct",
            f"{hit_['p50_ms']:.2f} / {hit_['p99_ms']:.2f} ms",
            f"{direct['p50_ms']:.2f} / {direct['p99_ms']:.2f} ms",
            ratio(hit_["p50_ms"], direct["p50_ms"]),
        ),
        Row(
            "  direct, new connection each (p50)",
            f"{fresh['p50_ms']:.2f} ms",
            f"agent's origin fetch: {agent_origin_ms} ms mean",
        ),
    ]
    out.charts = [
        Chart(
            "latency p50, one request at a time",
            "ms",
            {k: s["p50_ms"] for k, s in stats.items()},
        ),
        Chart(
            "latency p99, one request at a time",
            "ms",
            {k: s["p99_ms"] for k, s in stats.items()},
        ),
    ]
    return out


def _connections_per_worker(port: int, parent: int) -> dict[str, int]:
    """Established connections on `port` by worker pid (from ss), every worker listed."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    counts = dict.fromkeys(children, 0)
    listing = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
    ).stdout
    for pid in re.findall(r"pid=(\d+)", listing):
        if pid in counts:
            counts[pid] += 1
    return counts


def workers(settings: Settings) -> Outcome:
    """8. `--workers 2` (two processes on one port, joined through Redis) vs one process."""
    need("wrk", "redis-server")
    out = Outcome("workers")
    keys = make_keys(settings.tmp)
    flags = CACHING
    with Stack(settings.tmp) as stack:
        sim = event_sim(stack)
        # A Redis each: the two relays must not see each other's pits as one cluster.
        one = start_relay(
            stack, keys, "one", *flags, "--redis-url", start_redis(stack, "redis-one")
        )
        two = start_relay(
            stack,
            keys,
            "two",
            *flags,
            "--redis-url",
            start_redis(stack, "redis-two"),
            "--workers",
            "2",
        )
        start_agent(stack, keys, one.url, sim, "agent-one")
        start_agent(stack, keys, two.url, sim, "agent-two")
        path = sim.biggest()
        wait_data(stack, one.data(path))
        wait_data(stack, two.data(path))
        # New connections land on either worker: both must have the path before timing.
        labels: dict[str, int] = {}
        for _ in range(40):
            label = http_get(two.data(path))[1].get("X-Pitlink-Cache", "?")
            labels[label] = labels.get(label, 0) + 1
        runs = wrk_side_by_side(
            {"2 workers": two.data(path), "1 process": one.data(path)},
            rounds=settings.rounds,
            seconds=settings.wrk_seconds,
        )
        # Where wrk's 32 connections landed: one more run, looked at halfway with ss.
        spread: dict[str, int] = {}
        if shutil.which("ss"):
            sampler = threading.Timer(
                1.5,
                lambda: spread.update(_connections_per_worker(_port(two.url), two.proc.pid)),
            )
            sampler.start()
            wrk(two.data(path), 3)
            sampler.join()
    summary = {k: wrk_summary(v) for k, v in runs.items()}
    two_rps, one_rps = summary["2 workers"]["rps_median"], summary["1 process"]["rps_median"]
    r = ratio(two_rps, one_rps)
    out.details = {
        "path": path,
        "both_with_redis": True,
        "paired_ratio_two_over_one": paired_ratio(runs["2 workers"], runs["1 process"]),
        "cache_labels_of_40_new_connections": labels,
        "wrk_connections_per_worker_pid": spread,
        "wrk": "-t1 -c32, sharing the 2 cores with the workers",
        **summary,
    }
    if spread:
        out.message = (
            "connections per worker while wrk ran (32 + the agent's): "
            + ", ".join(str(n) for n in sorted(spread.values(), reverse=True))
            + " (each worker binds the port with SO_REUSEPORT; the kernel spreads connections)"
        )
    out.rows = [
        Row(
            "cache hit: --workers 2 vs 1 process",
            f"{two_rps:,.0f} req/s",
            f"{one_rps:,.0f} req/s",
            r,
            ">= 1.70",
            None if r is None else r >= 1.7,
        )
    ]
    out.charts = [_throughput_chart("--workers 2 vs one process", summary, None)]
    return out
