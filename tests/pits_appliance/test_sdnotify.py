"""systemd notifications: READY=1, WATCHDOG=1 from the event loop only, STATUS= on change."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from pitlink_testkit.system import System
from pitlink_testkit.waiting import wait_for
from pits_appliance.agent import Agent
from pits_appliance.sdnotify import Notifier


class NotifySocket:
    """What systemd listens on: a datagram socket; a thread records what arrives, and when."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def messages(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, m) for t, m in self.received if m.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path):
    ns = NotifySocket(tmp_path / "notify")
    yield ns
    ns.close()


def test_notifier_is_silent_without_systemd() -> None:
    n = Notifier(env={})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog_interval is None


def test_abstract_socket_address_and_interval() -> None:
    n = Notifier(env={"NOTIFY_SOCKET": "@/org/x", "WATCHDOG_USEC": "30000000"})
    assert n.address == "\0/org/x"
    assert n.watchdog_interval == 15.0


def test_status_is_sent_only_when_it_changes(notify_socket: NotifySocket) -> None:
    n = Notifier(env={"NOTIFY_SOCKET": str(notify_socket.path)})
    assert n.status("up") and not n.status("up") and n.status("down")
    n.close()


async def test_ready_watchdog_and_nothing_while_the_loop_is_blocked(
    tmp_path: Path, sim, notify_socket: NotifySocket
) -> None:
    s = System(tmp_path, sim)
    await s.start_relay()
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"}  # ping every 0.1 s
    s.agent = Agent(s.agent_config(), env=env)
    try:
        await s.agent.start()
        await s.connected()
        await wait_for(lambda: notify_socket.messages("READY=1"), what="READY=1")
        await wait_for(
            lambda: len(notify_socket.messages("WATCHDOG=1")) >= 3, what="watchdog pings"
        )
        await wait_for(
            lambda: any("cloud link up" in m for _, m in notify_socket.messages("STATUS=")),
            what="a STATUS line",
        )
        # Block the event loop on purpose, as a stuck agent would: no ping may go out.
        blocked_from = time.monotonic()
        time.sleep(0.6)  # noqa: ASYNC251 - blocking the loop is the point of this test
        blocked_until = time.monotonic()
        await asyncio.sleep(0)
        # A datagram sent just before the block may be read a moment into it: allow 50 ms.
        during = [
            t
            for t, _ in notify_socket.messages("WATCHDOG=1")
            if blocked_from + 0.05 < t < blocked_until
        ]
        assert during == []
        count = len(notify_socket.messages("WATCHDOG=1"))
        await wait_for(
            lambda: len(notify_socket.messages("WATCHDOG=1")) > count + 1, what="pings again"
        )
    finally:
        await s.close()
    # Sent as the agent stopped; the socket's thread reads it a moment later.
    await wait_for(lambda: notify_socket.messages("STOPPING=1"), what="STOPPING=1")


@pytest.mark.provokes_error(
    "pitlink.pits.agent",
    r"^an agent task died",
    why="the test cancels the link task; the agent says why it withholds the watchdog",
)
async def test_no_watchdog_when_an_agent_task_died(tmp_path: Path, sim, notify_socket) -> None:
    s = System(tmp_path, sim)
    await s.start_relay()
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "60000000"}
    s.agent = Agent(s.agent_config(), env=env)
    try:
        await s.agent.start()
        assert s.agent.systemd_tick() is True
        s.agent._tasks[0].cancel()  # the link task is gone: the agent is not healthy
        await wait_for(lambda: not s.agent.healthy(), what="unhealthy")
        assert s.agent.systemd_tick() is False
    finally:
        await s.close()
