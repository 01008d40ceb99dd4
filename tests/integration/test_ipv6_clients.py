"""One IPv6 network is one client (issue 25, item 2).

The attack: 300 requests for paths the relay does not hold, each from another address of one
/64 (one host may send from any address of its /64). Keyed by the exact address, each was a
new client with a fresh miss budget: all 300 reached the pits and spent its fetch budget, so
real spectators then got `429 fetch rate limit of pits reached`. Keyed by the /64, the miss
budget stops them after its burst, and the pits keeps its budget for everyone else.

The addresses are real: a documentation prefix routed to loopback for the test (root only, as
CI runs), and each request sent from its own address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pitlink_testkit.clock import FakeClock
from pitlink_testkit.fpvtrackside import Simulator
from pitlink_testkit.system import System

IP_FREEBIND = 15  # linux/in.h: bind to an address the route makes local


@pytest.fixture
def ipv6_block() -> Iterator[ipaddress.IPv6Network]:
    """A /56 of the documentation prefix routed to loopback for the test, then removed."""
    if os.geteuid() != 0:
        pytest.fail("routing a test prefix to loopback needs root (CI runs as root)")
    block = ipaddress.IPv6Network(f"2001:db8:{random.randrange(1, 0xFFFF):x}::/56")
    route = ["ip", "-6", "route", "add", "local", str(block), "dev", "lo"]
    subprocess.run(route, check=True, capture_output=True, timeout=10)
    try:
        yield block
    finally:
        route[3] = "del"
        subprocess.run(route, check=False, capture_output=True, timeout=10)


async def get_from(source: str, port: int, path: str) -> int:
    """GET `path` from the relay on [::1]:port, sent from the address `source`; the status."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("::1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), 20)
        return int(status.split()[1])
    finally:
        writer.close()


async def test_addresses_of_one_64_share_one_miss_budget(
    tmp_path: Path, sim: Simulator, ipv6_block: ipaddress.IPv6Network
) -> None:
    clock = FakeClock()  # no budget refills while the test runs: the counts are exact
    s = System(tmp_path, sim)
    await s.start_relay(
        clock=clock,
        host="::1",
        client_rate=None,  # the per-request limit is another test's: this one is the misses'
        client_miss_rate=10.0,
        client_miss_burst=50.0,
        pits_fetch_rate=100.0,
        pits_fetch_burst=200.0,
    )
    await s.start_agent(cloud_url=f"http://[::1]:{s.relay_port}")
    assert s.relay is not None
    try:
        attacker, neighbour = list(ipv6_block.subnets(new_prefix=64))[:2]
        rnd = random.Random(25)
        statuses = []
        for i in range(300):
            source = str(attacker[rnd.randrange(1, 2**64)])
            path = f"/pits/{s.pits_id}{sim.event_path}/missing-{i}.json"
            statuses.append(await get_from(source, s.relay_port, path))
        assert statuses.count(200) == 50  # the /64's burst of misses, and no more
        assert statuses.count(429) == 250
        assert s.relay.metrics.rate_limited.labels("miss")._value.get() == 250
        assert s.relay.metrics.rate_limited.labels("pits")._value.get() == 0
        # A real spectator, elsewhere, still gets what the pits has: its budget was not spent.
        got = await s.http.fetch(
            f"http://[::1]:{s.relay_port}/pits/{s.pits_id}{sim.event_path}/Event.json",
            raise_error=False,
        )
        assert got.code == 200, got.body
        assert json.loads(got.body)[0]["ID"] == sim.event_id
        # Another /64 is another client, with a budget of its own.
        other = f"/pits/{s.pits_id}{sim.event_path}/missing-next-door.json"
        assert await get_from(str(neighbour[1]), s.relay_port, other) == 200
    finally:
        await s.close()
