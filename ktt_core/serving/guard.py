"""The ASGI middleware in front of every KTT service: abuse is shed before it costs memory.

- A body larger than the cap (``KTT_MAX_REQUEST_BYTES``) is answered 413: at once when its
  Content-Length says so, else as soon as the streamed (chunked) bytes pass the cap. The body
  is read here, chunk by chunk, and handed on only when complete and within the cap, so a
  huge request never reaches BentoML's body parsing.
- A POST (PUT, PATCH) with a body that is not ``application/json`` is answered 415.
- A client that hangs up before its body is complete, or before its answer, is logged as
  one line ("client closed the connection"), not as an HTTP 500 with a traceback.
- Every answer carries ``X-KTT-Instance`` (``KTT_INSTANCE``, a random token ``ktt serve``
  gives its child), so the launcher knows that the server answering /readyz is its own.

:func:`guard` adds it to a BentoML service; :func:`ktt_core.serving.service.define_service`
(every model's and the ensemble's service) and the drift monitor call it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os

log = logging.getLogger("ktt.serving")

INSTANCE_HEADER = "x-ktt-instance"
BODY_METHODS = {"POST", "PUT", "PATCH"}
JSON_TYPE = "application/json"
# The start of /readyz's 503 answer when the model failed to load (final, not "still starting");
# :func:`ktt_core.serving.launch.wait_ready` stops waiting when it reads it.
NOT_READY = "KTT: the model failed to load: "
SERVE_SETTING = "KTT_MAX_REQUEST_BYTES, ktt serve --max-request-mb"


def _error(status: int, message: str, close: bool = False) -> tuple[dict, dict]:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # stop the client's upload: the rest of its body is not wanted
        headers.append((b"connection", b"close"))
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body, "more_body": False})


class RequestGuard:
    """Pure ASGI middleware (no buffering of its own beyond the cap); see the module docstring."""

    def __init__(self, app, max_bytes: int, setting: str = SERVE_SETTING) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.setting = setting  # where the limit is set, for the 413 message
        self.instance = os.environ.get("KTT_INSTANCE", "").encode()

    def _too_large(self, what: str) -> tuple[dict, dict]:
        return _error(413, f"request body {what} exceeds the limit of {self.max_bytes} bytes "
                           f"({self.setting})", close=True)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = f"{scope['method']} {scope['path']}"
        if self.instance:
            send = self._identify(send)
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await self._answer(send, _error(400, f"Content-Length {length[:40]!r} is not a number", close=True))
                return
            if int(length) > self.max_bytes:
                await self._answer(send, self._too_large(f"of {int(length)} bytes (Content-Length)"))
                return
        has_body = (length is not None and int(length) > 0) or "transfer-encoding" in headers
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if has_body and media_type != JSON_TYPE:
            await self._answer(send, _error(
                415, f"{f'Content-Type {media_type!r}' if media_type else 'a body without Content-Type'} "
                     f"is not supported; send {JSON_TYPE}",
                close=length is None))  # a small body is drained by the server; a stream of unknown size is not
            return

        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                log.warning("client closed the connection before its request was read (%s, %d bytes read)",
                            where, total)
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:  # a chunked body (or a lying client): cut at the cap
                await self._answer(send, self._too_large("(streamed)"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnects, as the server reports them

        async def answer(message):
            if message["type"] == "http.response.start":
                await _note_hang_up(receive, where)
            await send(message)

        await self.app(scope, replay, answer)

    def _identify(self, send):
        header = (INSTANCE_HEADER.encode(), self.instance)

        async def identified(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        return identified

    @staticmethod
    async def _answer(send, messages: tuple[dict, dict]) -> None:
        for message in messages:
            await send(message)


async def _note_hang_up(receive, where: str) -> None:
    """Log (one line) a client that left before its answer; the server then drops the answer."""
    # After the request body, the server's receive() only returns on a disconnect; one turn of
    # the event loop tells whether that has happened, without waiting for it.
    task = asyncio.ensure_future(receive())
    await asyncio.sleep(0)
    if task.done() and not task.cancelled() and task.result().get("type") == "http.disconnect":
        log.warning("client closed the connection before its answer (%s)", where)
        return
    task.cancel()


def guard(service, max_bytes: int, setting: str = SERVE_SETTING):
    """Put :class:`RequestGuard` in front of a BentoML service (the one place it is added)."""
    service.add_asgi_middleware(RequestGuard, max_bytes=max_bytes, setting=setting)
    return service
