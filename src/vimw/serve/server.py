"""Starting a server: the registry, the batcher and the app on a bound socket, in uvicorn.

:func:`start` loads the models and builds the app; :func:`run` serves it until stopped
(``vimw serve``); :class:`BackgroundServer` serves it from a thread (tests, notebooks).
A replica holds nothing but the model directories it loaded: several of them, each
started with the same ``--models``, serve the same answers behind any load balancer.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from vimw.errors import MissingExtraError, VimwError
from vimw.serve.batcher import Batcher
from vimw.serve.defaults import (DEFAULT_DEVICE, DEFAULT_HOST, DEFAULT_MAX_BATCH, DEFAULT_MAX_UPLOAD_MB,
                                  DEFAULT_MAX_WAIT_MS, DEFAULT_PORT)
from vimw.serve.registry import ModelRegistry



@dataclass
class Service:
    """What one server process holds."""

    registry: ModelRegistry
    batcher: Batcher
    app: object  # the ASGI app


def parse_model_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=DIR`` or ``DIR`` as ``(name or None, directory)``."""
    name, sep, directory = spec.partition("=")
    if sep and name and directory and not os.path.exists(spec):
        return name, directory
    return None, spec


def start(models: Sequence[str] = (), *, zoo: str | None = None, fold: str = "auto",
          max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
          max_upload_bytes: int | None = None, device: str = DEFAULT_DEVICE) -> Service:
    """Load ``models`` (``DIR`` or ``NAME=DIR``) onto one backbone on ``device`` and build the app around them."""
    try:
        from vimw.serve.app import create_app
    except ImportError as exc:
        raise MissingExtraError(f"vimw serve needs the 'serve' extra (pip install 'vimw[serve]'): {exc}") from None
    registry = ModelRegistry(fold=fold, device=device)
    for spec in models:
        name, directory = parse_model_spec(spec)
        registry.load(directory, name, zoo)
    batcher = Batcher(max_batch=max_batch, max_wait_ms=max_wait_ms)
    limit = int(DEFAULT_MAX_UPLOAD_MB * 2**20) if max_upload_bytes is None else int(max_upload_bytes)
    if limit < 1:
        raise VimwError(f"the upload limit must be positive, got {limit} bytes")
    return Service(registry, batcher, create_app(registry, batcher, max_upload_bytes=limit))


def bind(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one, read it from the socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so; without it a
    # response's two writes wait on the client's delayed ACK (40 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise VimwError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app, log_level: str):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off",
                                         timeout_graceful_shutdown=5))


def run(service: Service, sock: socket.socket, *, log_level: str = "info") -> None:
    """Serve until interrupted, then stop the batcher."""
    server = _uvicorn_server(service.app, log_level)
    try:
        server.run(sockets=[sock])
    finally:
        service.batcher.close()


class BackgroundServer:
    """An ASGI app served from a thread on a free loopback port: ``with BackgroundServer(app) as url``.

    ``on_stop`` runs after the server stops (a service's ``batcher.close``).
    """

    def __init__(self, app, *, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning",
                 on_stop=None) -> None:
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self._on_stop = on_stop
        self._server = _uvicorn_server(app, log_level)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise VimwError("the server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._on_stop is not None:
            self._on_stop()
        self.sock.close()


__all__ = ["BackgroundServer", "Service", "bind", "parse_model_spec", "run",
           "start", "url_of"]
