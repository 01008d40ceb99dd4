"""Fakes for unit tests of the relay's plain objects: a transport, pits frames, metric values."""

from __future__ import annotations

from typing import Any

from cloud.metrics import Metrics
from wire import PROTOCOL_VERSION
from wire import messages as m


class FakeTransport:
    """Stands in for the WebSocket: records every frame sent and every close."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closes: list[tuple[int, str]] = []

    def send(self, text: str) -> None:
        self.sent.append(text)

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    def frames(self, kind: str | None = None) -> list[m.Frame]:
        decoded = [m.decode(text, sender="cloud") for text in self.sent]
        return [f for f in decoded if kind is None or f.type == kind]

    @property
    def last(self) -> m.Frame:
        return self.frames()[-1]


def frame(message: m.Message, frame_id: str | None = None) -> str:
    """A frame as the pits would send it."""
    return m.encode(message, frame_id=frame_id, now_ms=0)


def pits_hello(pits_id: str, version: int = PROTOCOL_VERSION) -> str:
    return frame(m.PitsHello(protocol_version=version, pits_id=pits_id, sw_version="test-1.0"))


def dropped(metrics: Metrics, reason: str) -> float:
    return metrics.frames_dropped.labels(reason)._value.get()


def value(metric: Any) -> float:
    return metric._value.get()
