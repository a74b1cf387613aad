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


class _IdleTimeoutProtocol(HttpToolsProtocol):
    """uvicorn times out idle keep-alive connections only after a first response; a
    connection that never sends a request would stay open for good. Start the same
    timer when the connection opens (any byte received cancels it, as after a response)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)


class BackgroundServer:
    def __init__(self, app, port: int = 0, name: str = "server") -> None:
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
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            backlog=2048,
            lifespan="off",
            http=_IdleTimeoutProtocol,
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
