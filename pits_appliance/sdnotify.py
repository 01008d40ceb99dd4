"""systemd's notify protocol: READY=1, WATCHDOG=1 and STATUS= over $NOTIFY_SOCKET.

A dozen lines rather than a dependency: one datagram per message to a Unix socket whose path
systemd passes in the environment (a leading `@` means the abstract namespace).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("pitlink.pits.systemd")


class Notifier:
    """Sends notifications when run under systemd with Type=notify; does nothing otherwise."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        usec = env.get("WATCHDOG_USEC", "")
        # Ping twice per period, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval: float | None = (
            int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        )
        self._sock: socket.socket | None = None
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), self.address)
        except OSError as exc:
            log.warning("systemd notification failed", extra={"error": str(exc)})
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, line: str) -> bool:
        """STATUS=, sent only when it changed."""
        line = line.replace("\n", " ")[:200]
        if line == self._last_status:
            return False
        self._last_status = line
        return self.notify("STATUS=" + line)

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
