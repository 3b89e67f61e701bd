"""legato/server.py: listen parsing, sockets, loop choice, and serve() as a real process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from legato import server
from legato.logs import AccessRecord


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("localhost:65535", ("localhost", 65535)),
    ("[::1]:443", ("::1", 443)),
])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert server.parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["", "8080", ":8080", "host:", "host:http", "host:65536", "host:-1"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        server.parse_listen(listen)


def test_url_host() -> None:
    assert server.url_host("::1") == "[::1]"
    assert server.url_host("127.0.0.1") == "127.0.0.1"


def test_reuse_port_sockets_share_a_port() -> None:
    reservation = server.bind_socket("127.0.0.1", 0, reuse_port=True)
    port = reservation.getsockname()[1]
    a = server.bind_socket("127.0.0.1", port, reuse_port=True)
    b = server.bind_socket("127.0.0.1", port, reuse_port=True)
    try:
        a.listen()
        b.listen()
        assert a.getsockname()[1] == b.getsockname()[1] == port
        with pytest.raises(OSError):  # without SO_REUSEPORT the port is taken
            server.bind_socket("127.0.0.1", port, reuse_port=False)
    finally:
        for s in (reservation, a, b):
            s.close()


def test_new_event_loop_prefers_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = server.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


async def test_runner_kwargs_feed_app_observers() -> None:
    seen: list[AccessRecord] = []

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app[server.OBSERVERS] = (seen.append,)
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app, **server.runner_kwargs(app, access_log=False))
    await runner.setup()
    sock = server.bind_socket("127.0.0.1", 0, reuse_port=False)
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hello?secret=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await reader.read()
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()
    assert [(r.method, r.path, r.status) for r in seen] == [("GET", "/hello", 200)]


SLOW_APP = textwrap.dedent("""
    import asyncio, sys
    from aiohttp import web
    from legato.server import ServeOptions, serve

    async def slow(request):
        await asyncio.sleep(1.5)
        return web.Response(text="finished")

    def make_app():
        app = web.Application()
        app.router.add_get("/slow", slow)
        return app

    sys.exit(serve(ServeOptions(role="test", listen="127.0.0.1:0", workers=int(sys.argv[1]),
                                access_log=False, shutdown_timeout=10), make_app))
""")


@pytest.mark.parametrize("workers", [1, 3])
def test_serve_announces_once_and_drains_on_sigterm(tmp_path: Path, workers: int) -> None:
    script = tmp_path / "slow_app.py"
    script.write_text(SLOW_APP)
    proc = subprocess.Popen([sys.executable, str(script), str(workers)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("test listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        result: dict[str, str] = {}

        def request() -> None:
            with urllib.request.urlopen(url + "/slow", timeout=20) as resp:
                result["body"] = resp.read().decode()

        client = threading.Thread(target=request)
        client.start()
        time.sleep(0.5)  # the request is in its handler now
        proc.terminate()
        client.join(timeout=20)
        assert result.get("body") == "finished"
        assert proc.wait(timeout=20) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_no_orphans_when_the_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "slow_app.py"
    script.write_text(SLOW_APP)
    proc = subprocess.Popen([sys.executable, str(script), "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[1]
        port = int(url.rsplit(":", 1)[1])
        proc.kill()  # SIGKILL: the parent cannot forward anything
        proc.wait()
        # the workers see their lifeline close and stop listening
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("workers still listening after their parent died")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
