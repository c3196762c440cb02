"""uvicorn for the app, in the foreground (``experiments/serve.py``) or in a thread (tests, load benchmark).

Why a thread helper: the protocol tests, the browser tests and the load benchmark
all need a real HTTP server on loopback (real streaming, real disconnects), started
and stopped inside one process with a composer they built; one helper keeps the
three from growing their own start-up and shutdown code.
"""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

DEFAULT_HOST = "127.0.0.1"


def uvicorn_config(app: FastAPI, host: str = DEFAULT_HOST, port: int = 8000) -> uvicorn.Config:
    # One event loop, no reload, no access log per streamed request; h11 needs no compiled extras.
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, http="h11",
                          lifespan="on", timeout_graceful_shutdown=5)


class ServerThread:
    """``with ServerThread(app) as url:`` serves ``app`` on a free loopback port until the block ends."""

    def __init__(self, app: FastAPI, host: str = DEFAULT_HOST, port: int = 0, start_timeout_s: float = 60.0) -> None:
        self.server = uvicorn.Server(uvicorn_config(app, host, port))
        self.start_timeout_s = start_timeout_s
        self.url = ""
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(30)
