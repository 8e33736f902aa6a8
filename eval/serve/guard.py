"""What every request passes before a route sees it: the Host allow-list, the API key, the body
size limit on the bytes actually read.

A pure ASGI middleware (Starlette's BaseHTTPMiddleware would hide client disconnects from the
routes). The body is read here, whole, before the app runs: counting the bytes as they arrive is
the only limit a chunked upload (no Content-Length) cannot walk past, and a 413 is sent as soon as
the count passes it, with ``Connection: close`` so the server stops reading. A refusal answers in
OpenAI's error shape like every other error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi.responses import JSONResponse

from eval.serve.access import bearer_matches, host_allowed

MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class ServeSettings:
    api_key: str | None = None
    timeout_s: float = 60.0
    retry_after_s: int = 1
    max_body_bytes: int = MAX_BODY_BYTES
    bound_to_loopback: bool = True  # then only loopback Host names are accepted
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)  # --allowed-host names (bound elsewhere)


def error_response(status: int, message: str, kind: str = "invalid_request_error", param=None, code=None, headers=None) -> JSONResponse:  # fmt: skip
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    def __init__(self, app, settings: ServeSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = self.settings
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name.lower(), value)
        host = headers.get(b"host", b"").decode("latin-1")
        limit = settings.max_body_bytes
        length = headers.get(b"content-length", b"").decode("latin-1").strip()
        refusal = None
        if not host_allowed(host, settings.bound_to_loopback, settings.allowed_hosts):
            where = "localhost, 127.0.0.1, [::1]" + ("" if settings.bound_to_loopback else ", IP addresses") + " and --allowed-host names"  # fmt: skip
            refusal = error_response(400, f"Host header {host[:100]!r} is not allowed: this server accepts {where}", param="Host", code="host_not_allowed")  # fmt: skip
        elif settings.api_key and scope["path"].startswith("/v1/") and not bearer_matches(headers.get(b"authorization"), settings.api_key):  # fmt: skip
            refusal = error_response(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error")
        elif length and (not length.isdigit() or int(length) > limit):
            refusal = _too_large(limit)
        if refusal is not None:
            refusal.headers["Connection"] = "close"  # the body (if any) is left unread
            return await refusal(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away (or its read deadline passed): no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _too_large(limit)(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body_sent = False

        async def replay():  # the body as one message, then the real channel (disconnects)
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, f"the body is over {limit} bytes", headers={"Connection": "close"})
