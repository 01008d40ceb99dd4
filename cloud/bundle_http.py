"""`/pits-api/bundles/<id>`: one update bundle to the box it is offered to, one download at a
time per box. A reader that stops taking bytes loses the slot (BaseHandler's write deadline)."""

from __future__ import annotations

import logging
from typing import Any

import tornado.web

from cloud import TokenError
from cloud.http_base import BaseHandler, RelayParts, bearer_token, json_error, verify_pits_token
from wire import ErrorCode

# Bundle downloads are logged with the bundle folder's other lines.
bundle_log = logging.getLogger("pitlink.cloud.bundles")


class BundleDownloadHandler(BaseHandler, tornado.web.StaticFileHandler):
    """One bundle to the box it is offered to; one download at a time per box."""

    def initialize(self, relay: RelayParts) -> None:  # type: ignore[override]
        BaseHandler.initialize(self, relay)
        store = relay.admin.updates.store
        root = "/nonexistent" if store is None else str(store.root)
        tornado.web.StaticFileHandler.initialize(self, path=root)
        self.sha256 = ""

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "private, no-store, no-transform")
        self.set_header("X-Content-Type-Options", "nosniff")

    async def get(self, bundle_id: str, include_body: bool = True) -> None:
        updates = self.relay.admin.updates
        if updates.store is None:
            self._refused("refused", ErrorCode.DENIED, "updates are off on this relay", 404)
            return
        token = bearer_token(self.request.headers.get("Authorization"))
        if token is None:
            self.set_header("WWW-Authenticate", 'Bearer realm="pitlink"')
            self._refused("refused", ErrorCode.UNAUTHORIZED, "a Bearer token is required", 401)
            return
        try:
            claims = verify_pits_token(self.relay, token)
        except TokenError as exc:
            self.set_header("WWW-Authenticate", 'Bearer realm="pitlink"')
            self._refused("refused", ErrorCode.UNAUTHORIZED, str(exc), 401)
            return
        pits_id = str(claims["sub"])
        bundle = updates.store.offered_to(pits_id)
        if bundle is None or bundle.id != bundle_id:
            self._refused(
                "refused", ErrorCode.DENIED, f"bundle {bundle_id} is not offered to {pits_id}", 403
            )
            return
        if pits_id in updates.downloading:
            self._refused(
                "busy", ErrorCode.BUSY, f"{pits_id} is downloading already", 429, retry_after=5
            )
            return
        self.sha256 = bundle.sha256
        updates.downloading.add(pits_id)
        try:
            await super().get(f"{bundle.id}.raucb", include_body)
        finally:
            updates.downloading.discard(pits_id)
        status = self.get_status()
        if status == 416:
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.write(json_error(ErrorCode.BAD_REQUEST, "the range is not within the bundle"))
        outcome = {200: "ok", 206: "partial", 304: "ok"}.get(status, "refused")
        self.relay.metrics.bundle_downloads.labels(outcome).inc()
        bundle_log.info(
            "bundle download",
            extra={
                "pits_id": pits_id,
                "bundle": bundle.id,
                "status": status,
                "head": not include_body,
            },
        )

    def _refused(
        self,
        outcome: str,
        code: ErrorCode,
        message: str,
        status: int,
        retry_after: float | None = None,
    ) -> None:
        self.relay.metrics.bundle_downloads.labels(outcome).inc()
        self.write_json_error(code, message, status, retry_after)

    def compute_etag(self) -> str | None:  # type: ignore[override]
        return f'"sha256:{self.sha256}"' if self.sha256 else None

    def get_content_type(self) -> str:
        return "application/octet-stream"

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        BaseHandler.write_error(self, status_code, **kwargs)
