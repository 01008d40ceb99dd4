"""`/admin` (one HTML page) and `/admin/api/...` (the JSON it uses), behind an admin token."""

from __future__ import annotations

import inspect
import re
from importlib import resources
from typing import Any

import tornado.web
import ujson

from cloud import TokenError
from cloud.admin import Admin
from cloud.bundles import BundleError, Upload
from cloud.clients import Origin
from cloud.http_base import BaseHandler, bearer_token
from wire import ErrorCode, ProtocolError

PAGE = resources.files("cloud").joinpath("static/admin.html").read_bytes()
_PITS = r"pits/(?P<pits>[A-Za-z0-9][A-Za-z0-9._-]{0,63})"
_BUNDLE = r"bundles/(?P<bundle>[0-9a-f]{16})"


class AdminPageHandler(BaseHandler):
    """The page itself holds no data: it asks for the token and calls the API with it."""

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:",
        )

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(PAGE)


class AdminAuth(BaseHandler):
    """A handler behind the admin token; it answers JSON, never cached."""

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "application/json; charset=utf-8")

    def _who(self) -> str | None:
        """The admin's name, or None after answering 401 (no valid token) or 403 (not admin)."""
        token = bearer_token(self.request.headers.get("Authorization"))
        if token is None:
            self.set_header("WWW-Authenticate", 'Bearer realm="pitlink-admin"')
            self.write_json_error(ErrorCode.UNAUTHORIZED, "an admin token is required")
            return None
        try:
            claims = self.relay.verify_token(token, role=None)
        except TokenError as exc:
            self.write_json_error(ErrorCode.UNAUTHORIZED, str(exc))
            return None
        if claims.get("role") != "admin":
            self.write_json_error(ErrorCode.DENIED, "this token is not an admin token")
            return None
        return str(claims["sub"])


class AdminAPIHandler(AdminAuth):
    """Routes `/admin/api/<verb>` to the Admin object, after checking the admin token."""

    ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        ("GET", re.compile(r"overview"), "overview"),
        ("GET", re.compile(r"connections"), "connections"),
        ("GET", re.compile(r"offline"), "offline"),
        ("GET", re.compile(r"refused"), "refused"),
        ("POST", re.compile(_PITS + r"/reconnect"), "reconnect"),
        ("POST", re.compile(_PITS + r"/pause"), "pause"),
        ("POST", re.compile(_PITS + r"/resume"), "resume"),
        ("GET", re.compile(r"cache"), "cache"),
        ("POST", re.compile(r"cache/purge"), "purge"),
        ("GET", re.compile(r"allowlist"), "allowlist"),
        ("POST", re.compile(r"allowlist"), "set_allowlist"),
        ("POST", re.compile(r"active"), "set_active"),
        ("GET", re.compile(r"bundles"), "bundles"),
        ("DELETE", re.compile(_BUNDLE), "remove_bundle"),
        ("POST", re.compile(_BUNDLE + r"/offer"), "offer"),
        ("POST", re.compile(r"bundles/withdraw"), "withdraw"),
        ("POST", re.compile(_BUNDLE + r"/rollout"), "rollout"),
        ("POST", re.compile(_BUNDLE + r"/rollout/resume"), "resume_rollout"),
        ("POST", re.compile(_BUNDLE + r"/rollout/cancel"), "cancel_rollout"),
    ]

    async def get(self, verb: str) -> None:
        await self._dispatch("GET", verb)

    async def post(self, verb: str) -> None:
        await self._dispatch("POST", verb)

    async def delete(self, verb: str) -> None:
        await self._dispatch("DELETE", verb)

    async def _dispatch(self, method: str, verb: str) -> None:
        who = self._who()
        if who is None:
            return
        for route_method, pattern, name in self.ROUTES:
            match = pattern.fullmatch(verb)
            if match and route_method == method:
                try:
                    result = getattr(self, "_" + name)(who, match.groupdict(), self._body())
                    if inspect.isawaitable(result):
                        result = await result
                except ProtocolError as exc:
                    self.write_json_error(exc.code, exc.message)
                    return
                except BundleError as exc:
                    self.write_json_error(exc.code, str(exc), exc.status)
                    return
                self.finish(ujson.dumps(result, ensure_ascii=False))
                return
        self.write_json_error(ErrorCode.DENIED, "no such admin action", 404)

    def _body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            body = ujson.loads(self.request.body)
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
        return body

    @property
    def admin(self) -> Admin:
        return self.relay.admin

    def public_origin(self) -> Origin:
        """How the public reaches the relay, for the pits' addresses on the page: as the admin
        was reached, except that the admin's own listener (`--admin-port`) is not the public's
        (the public port is the relay's own, unless --public-url or a proxy says otherwise)."""
        origin = self.origin()
        socket = getattr(getattr(self.request.connection, "stream", None), "socket", None)
        if socket is None or self.relay.public.public is not None:
            return origin
        here = socket.getsockname()[1]
        public_port = self.relay.port
        if public_port is None or here == public_port or origin.port != f":{here}":
            return origin
        name = origin.host[: -len(origin.port)]
        return Origin(origin.scheme, f"{name}:{public_port}")

    # -- verbs: (who, path groups, body) -> JSON-able result --------------------------------

    async def _overview(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return await self.admin.overview(self.public_origin())

    async def _connections(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return {"connections": await self.admin.connections(self.public_origin())}

    async def _offline(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return {"offline": await self.admin.offline()}

    async def _refused(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return {"refused": self.admin.refused()}

    async def _reconnect(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        await self.admin.reconnect(who, g["pits"])
        return {"ok": True}

    async def _pause(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        await self.admin.pause(who, g["pits"], True)
        return {"ok": True, "paused": True}

    async def _resume(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        await self.admin.pause(who, g["pits"], False)
        return {"ok": True, "paused": False}

    def _cache(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return self.admin.cache_stats()

    async def _purge(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        pits_id, prefix = body.get("pitsId"), body.get("prefix", "/")
        if pits_id is not None and not isinstance(pits_id, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "pitsId must be a string")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "prefix must be a path starting with /")
        return {"purged": await self.admin.purge(who, pits_id, prefix)}

    def _allowlist(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return {"allowlist": self.admin.allowlist()}

    def _set_allowlist(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        pattern, enabled = body.get("pattern"), body.get("enabled")
        if not isinstance(pattern, str) or not isinstance(enabled, bool):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "give a pattern and enabled true/false")
        self.admin.set_allowlist(who, pattern, enabled)
        return {"allowlist": self.admin.allowlist()}

    def _set_active(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        pits_id = body.get("pitsId")
        if pits_id is not None and not isinstance(pits_id, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "pitsId must be a string or null")
        self.admin.set_active(who, pits_id)
        return self.admin.active()

    def _bundles(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return self.admin.bundles()

    def _remove_bundle(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return {"removed": g["bundle"], "withdrawn": self.admin.remove_bundle(who, g["bundle"])}

    def _offer(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return self.admin.offer(who, g["bundle"], _pits_ids(body))

    def _withdraw(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return self.admin.withdraw(who, _pits_ids(body))

    def _rollout(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        wave, first = body.get("wave"), body.get("first", [])
        if not isinstance(wave, int) or isinstance(wave, bool):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "wave must be a number of boxes")
        return self.admin.rollout(who, g["bundle"], wave, _pits_ids({"pitsIds": first}, True))

    def _resume_rollout(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return self.admin.resume_rollout(who, g["bundle"])

    def _cancel_rollout(self, who: str, g: dict[str, str], body: dict[str, Any]) -> Any:
        return self.admin.cancel_rollout(who, g["bundle"])


def _pits_ids(body: dict[str, Any], may_be_empty: bool = False) -> list[str]:
    ids = body.get("pitsIds")
    if may_be_empty and ids == []:
        return []
    if not isinstance(ids, list) or not ids or len(ids) > 1000:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "pitsIds must be a list of 1 to 1000 pits ids")
    if not all(isinstance(p, str) for p in ids):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "pitsIds must be strings")
    return ids


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


def admin_rules(args: dict[str, Any]) -> list[Any]:
    """The admin page and API's routes."""
    return [
        (r"/admin/?", AdminPageHandler, args),
        (r"/admin/api/bundles/upload", BundleUploadHandler, args),
        (r"/admin/api/(.*)", AdminAPIHandler, args),
    ]
