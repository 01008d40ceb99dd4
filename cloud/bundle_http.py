"""Bundles over HTTP: an admin uploads one, a box downloads the one it is offered.

`POST /admin/api/bundles/upload?filename=...` (or `?version=...&arch=...`) streams the body to
the bundle folder (never into memory), bounded by `--max-bundle-bytes`, behind the admin token.

`GET|HEAD /pits-api/bundles/<id>` serves a bundle to a box with its own token, checked as
/control checks it, and only the bundle standing offered to that box; ranges (206, 416) come
from Tornado's StaticFileHandler, so that a download over a venue's uplink resumes.
"""

from __future__ import annotations

import logging
from typing import Any

import tornado.web
import ujson

from cloud import TokenError
from cloud.admin_http import AdminAuth
from cloud.bundles import BundleError, Upload
from cloud.handlers import BaseHandler, RelayParts, bearer_token, verify_pits_token
from wire import ErrorCode

log = logging.getLogger("pitlink.cloud.bundles")

UPLOAD_BODY_TIMEOUT_S = 3600.0  # a few hundred MB over an operator's uplink


@tornado.web.stream_request_body
class BundleUploadHandler(AdminAuth):
    """The bundle arrives as the request body, chunk by chunk, hashed as it is written."""

    upload: Upload | None = None
    who: str | None = None

    def prepare(self) -> None:
        self.who = self._who()
        if self.who is None:
            return
        try:
            store = self.relay.admin.store()
            length = self.request.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.write_json_error(
                    ErrorCode.BAD_REQUEST, "send the bundle with a Content-Length", 411
                )
                return
            if int(length) > store.max_bytes:
                raise BundleError(
                    f"the bundle is over the {store.max_bytes} byte limit", ErrorCode.TOO_LARGE, 413
                )
            self.upload = store.upload(
                filename=self.get_query_argument("filename", None),
                version=self.get_query_argument("version", None),
                arch=self.get_query_argument("arch", None),
            )
        except BundleError as exc:
            self.write_json_error(exc.code, str(exc), exc.status)
            return
        self.request.connection.set_max_body_size(int(length))  # type: ignore[union-attr]
        self.request.connection.set_body_timeout(UPLOAD_BODY_TIMEOUT_S)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        if self.upload is not None:
            self.upload.write(chunk)

    def post(self) -> None:
        upload, self.upload = self.upload, None
        if upload is None or self.who is None:
            return
        try:
            bundle = upload.commit()
        except BundleError as exc:
            self.write_json_error(exc.code, str(exc), exc.status)
            return
        self.relay.admin.added(self.who, bundle)
        self.finish(ujson.dumps(bundle.describe()))

    def on_connection_close(self) -> None:
        self.on_finish()

    def on_finish(self) -> None:
        if self.upload is not None:
            self.upload.abort()
            self.upload = None


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
            self.write(_error(ErrorCode.BAD_REQUEST, "the range is not within the bundle"))
        outcome = {200: "ok", 206: "partial", 304: "ok"}.get(status, "refused")
        self.relay.metrics.bundle_downloads.labels(outcome).inc()
        log.info(
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


def _error(code: ErrorCode, message: str) -> str:
    return ujson.dumps({"error": {"code": str(code), "message": message}})
