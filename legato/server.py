"""Running an aiohttp node: event loop, sockets, workers, signals, readiness.

Every node kind (origin now; regional and edge later) is an
``aiohttp.web.Application`` built by a factory; ``serve(options, make_app)``
runs it and returns the process exit status:

* **Loop**: uvloop when importable, asyncio otherwise (``new_event_loop``).
* **Socket**: ``listen`` is HOST:PORT (``[v6]:PORT`` too); port 0 picks a
  free port.  With ``workers`` > 1 the parent binds a SO_REUSEPORT socket
  *without listening* to resolve and reserve the port (the kernel only
  balances connections across listening sockets), then forks the workers;
  each binds its own SO_REUSEPORT socket to that port and listens, so the
  kernel spreads connections over them.
* **Readiness**: once every worker listens, exactly one line goes to stdout,
  flushed: ``{role} listening on http://HOST:PORT``.  Test harnesses and
  supervisors read it to learn the port.
* **Shutdown**: SIGTERM or SIGINT stops accepting, lets in-flight responses
  finish (up to ``shutdown_timeout``), closes idle keep-alive connections and
  exits 0.  The parent forwards the signal to its workers.  Workers watch a
  "lifeline" pipe from the parent and shut down if the parent dies, so no
  orphan keeps the port.  If a worker dies on its own, the parent stops the
  others and exits non-zero: restarting is the service manager's job.
* **Metrics**: with workers > 1, ``PROMETHEUS_MULTIPROC_DIR`` is pointed at a
  fresh temporary directory (unless already set) before any worker imports
  prometheus_client, so ``/metrics`` on any worker reports all of them.
* **Access log / metrics**: the app may list observers under
  ``OBSERVERS``; with ``access_log`` on, a JSON line writer is added.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from legato.logs import JsonAccessLog, Observer, access_logger_class, configure_logging

log = logging.getLogger("legato.server")

OBSERVERS: web.AppKey[Sequence[Observer]] = web.AppKey("observers")
"""Where an app lists the access observers (e.g. its RequestMetrics) to feed."""

SITE: web.AppKey[Callable[[web.AppRunner, socket.socket], Any]] = web.AppKey("site")
"""Optional: ``async site(runner, sock) -> server`` serving ``sock`` in place of
aiohttp's SockSite (the cache nodes put their sendfile fast path there).  The
returned object needs ``async shutdown(timeout)``."""

RELOAD: web.AppKey[Callable[[], Any]] = web.AppKey("reload")
"""Optional: ``async reload()`` run on SIGHUP (workers receive it from the parent)."""

AppFactory = Callable[[], web.Application]

_SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class ServeOptions:
    """How to run a node; each node kind maps its config onto this."""

    role: str  # "origin", "regional", "edge": names the readiness line and metrics
    listen: str = "127.0.0.1:8080"
    workers: int = 1
    access_log: bool = True
    shutdown_timeout: float = 10.0
    backlog: int = 1024


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is importable, else a stock asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen {listen!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def url_host(host: str) -> str:
    """A host as it appears in a URL (IPv6 literals in brackets)."""
    return f"[{host}]" if ":" in host else host


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound (not yet listening) TCP socket for ``host:port``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.set_inheritable(False)
    except BaseException:
        sock.close()
        raise
    return sock


def runner_kwargs(app: web.Application, *, access_log: bool, shutdown_timeout: float = 10.0) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` (or aiohttp's ``TestServer``).

    Wires the app's observers (and the JSON access log when enabled) into
    aiohttp's per-request logging hook.
    """
    registered: Sequence[Observer] = app.get(OBSERVERS, ())
    observers = list(registered)
    if access_log:
        observers.append(JsonAccessLog())
    return {
        "access_log_class": access_logger_class(observers),
        "access_log": logging.getLogger("legato.access"),
        "handle_signals": False,
        "shutdown_timeout": shutdown_timeout,
    }


def announce(role: str, host: str, port: int) -> None:
    """Print the readiness line (the only thing a node writes to stdout)."""
    print(f"{role} listening on http://{url_host(host)}:{port}", flush=True)


async def _serve_socket(
    options: ServeOptions, make_app: AppFactory, sock: socket.socket,
    on_ready: Callable[[], None], lifeline: int | None = None,
) -> None:
    """Serve ``sock`` until SIGTERM/SIGINT (or the lifeline closes), then drain."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in _SHUTDOWN_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    if lifeline is not None:
        loop.add_reader(lifeline, stop.set)
    app = make_app()
    runner = web.AppRunner(app, **runner_kwargs(app, access_log=options.access_log,
                                                shutdown_timeout=options.shutdown_timeout))
    await runner.setup()
    reload = app.get(RELOAD)
    tasks: set[asyncio.Task[Any]] = set()
    if reload is not None:
        def on_hup() -> None:
            task = loop.create_task(reload())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
    custom = None
    try:
        if SITE in app:
            custom = await app[SITE](runner, sock)
        else:
            site = web.SockSite(runner, sock, backlog=options.backlog)
            await site.start()
        on_ready()
        await stop.wait()
        log.info("shutting down: draining in-flight requests (up to %.0f s)", options.shutdown_timeout)
        if custom is not None:
            await custom.shutdown(options.shutdown_timeout)
    finally:
        # aiohttp's cleanup closes each connection once its response is written, but close()
        # still has to flush the transport's buffer (the end of a large body): keep the loop
        # running until every connection is gone, or those bytes die with the process.
        server = runner.server
        transports = [h.transport for h in server.connections if h.transport] if server is not None else []
        await runner.cleanup()
        deadline = loop.time() + options.shutdown_timeout
        while any(t.get_write_buffer_size() for t in transports) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if lifeline is not None:
            loop.remove_reader(lifeline)


def _run(coro_factory: Callable[[], Any]) -> None:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(coro_factory())


def serve(options: ServeOptions, make_app: AppFactory) -> int:
    """Run a node until told to stop; returns the exit status."""
    configure_logging()
    host, port = parse_listen(options.listen)
    if options.workers <= 1:
        sock = bind_socket(host, port, reuse_port=False)
        port = sock.getsockname()[1]
        _run(lambda: _serve_socket(options, make_app, sock, lambda: announce(options.role, host, port)))
        return 0
    with _multiprocess_metrics_dir():
        return _supervise(options, make_app, host, port)


@contextlib.contextmanager
def _multiprocess_metrics_dir() -> Iterator[None]:
    """Point prometheus_client at a temporary directory shared by all workers."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield  # the operator chose one
        return
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the multiprocess directory was set")
    path = tempfile.mkdtemp(prefix="legato-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(path, ignore_errors=True)


def _supervise(options: ServeOptions, make_app: AppFactory, host: str, port: int) -> int:
    """Parent of ``workers`` forked processes sharing one port."""
    reservation = bind_socket(host, port, reuse_port=True)  # never listens
    port = reservation.getsockname()[1]
    ready_r, ready_w = os.pipe()
    lifeline_r, lifeline_w = os.pipe()
    pids: list[int] = []
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum == signal.SIGHUP:  # reload: pass it on, keep running
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGHUP)
            return
        stopping = True
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    # Block shutdown signals while forking so none lands between fork and the
    # handlers being installed on either side.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SHUTDOWN_SIGNALS)
    try:
        for _ in range(options.workers):
            pid = os.fork()
            if pid == 0:  # worker
                os.close(ready_r)
                os.close(lifeline_w)
                reservation.close()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHUTDOWN_SIGNALS)
                os._exit(_worker(options, make_app, host, port, ready_w, lifeline_r))
            pids.append(pid)
        for sig in (*_SHUTDOWN_SIGNALS, signal.SIGHUP):
            signal.signal(sig, forward)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SHUTDOWN_SIGNALS)
    os.close(ready_w)
    os.close(lifeline_r)

    ready = 0
    while ready < options.workers:
        try:
            data = os.read(ready_r, options.workers)
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        if not data:
            break
        ready += len(data)
    os.close(ready_r)
    if ready == options.workers and not stopping:
        announce(options.role, host, port)
    elif not stopping:
        log.error("only %d of %d workers started", ready, options.workers)
        forward(signal.SIGTERM, None)

    status = 0
    remaining = set(pids)
    while remaining:
        pid, wstatus = os.waitpid(-1, 0)
        if pid not in remaining:
            continue
        remaining.discard(pid)
        code = os.waitstatus_to_exitcode(wstatus)
        if code != 0 or not stopping:
            log.error("worker %d exited with status %d%s", pid, code, "" if stopping else " unexpectedly")
            status = 1
            if not stopping:
                forward(signal.SIGTERM, None)
    os.close(lifeline_w)
    reservation.close()
    return status if ready == options.workers else 1


def _worker(options: ServeOptions, make_app: AppFactory, host: str, port: int, ready_w: int, lifeline: int) -> int:
    """Body of one forked worker: serve until told to stop; returns the exit status."""
    for sig in (*_SHUTDOWN_SIGNALS, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)

    def ready() -> None:
        os.write(ready_w, b"1")
        os.close(ready_w)

    try:
        sock = bind_socket(host, port, reuse_port=True)
        _run(lambda: _serve_socket(options, make_app, sock, ready, lifeline))
        return 0
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
