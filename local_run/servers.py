"""ASGI apps of the local run served by uvicorn, each on its own thread and event loop,
so that a slow model call never stalls the front, and the front's own /_cache/ lookups
(made by the edge function from a worker thread) are served while it waits."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Idle keep-alive connections are closed after this long (CloudFront: 5 s by default).
KEEP_ALIVE_SECONDS = 5
# A request's line and headers must arrive within this long of its first byte, and its
# body without a gap this long; else the connection is closed (no request line, partial
# headers or a trickling body holds a connection open for good). CloudFront documents no
# such viewer-side figures (docs/decisions.md, "The local run refuses what AWS refuses"):
# the stricter reading, the keep-alive idle timeout's order of magnitude.
HEADER_SECONDS = 10
BODY_GAP_SECONDS = 10


class _ViewerTimeoutsProtocol(HttpToolsProtocol):
    """uvicorn's protocol with the timeouts a front facing the internet needs.

    - uvicorn times out idle keep-alive connections only after a first response; a
      connection that never sends a request would stay open for good. The same timer
      starts when the connection opens (any byte received cancels it, as after a response).
    - From a request's first byte, its headers have `header_seconds`; then each gap
      between body bytes is bounded by `body_gap_seconds`, while the app is reading (a
      body the app has not asked for yet, read paused, is not the client's delay)."""

    header_seconds: float = HEADER_SECONDS
    body_gap_seconds: float = BODY_GAP_SECONDS

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._viewer_timer = None
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._viewer_timer = self.loop.call_later(seconds, self._viewer_too_slow)

    def _disarm(self) -> None:
        if self._viewer_timer is not None:
            self._viewer_timer.cancel()
            self._viewer_timer = None

    def _viewer_too_slow(self) -> None:
        self._viewer_timer = None
        if self.flow.read_paused:  # waiting on the app, not on the client
            self._arm(self.body_gap_seconds)
        elif not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_seconds)

    def on_headers_complete(self) -> None:
        self._arm(self.body_gap_seconds)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm(self.body_gap_seconds)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


class BackgroundServer:
    def __init__(
        self,
        app,
        port: int = 0,
        name: str = "server",
        *,
        header_seconds: float = HEADER_SECONDS,
        body_gap_seconds: float = BODY_GAP_SECONDS,
    ) -> None:
        # Bound here, so the URL is known before serving starts. IPPROTO_TCP explicitly:
        # asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it
        # every response waits out the client's delayed ACK (~40 ms).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self._socket.listen(2048)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # nothing proxies these servers: a viewer's X-Forwarded-For is not its address
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            backlog=2048,
            lifespan="off",
            http=type(
                "ViewerTimeouts",
                (_ViewerTimeoutsProtocol,),
                {"header_seconds": header_seconds, "body_gap_seconds": body_gap_seconds},
            ),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, name=name, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self._thread.name} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
