"""Real node processes for tests: started on 127.0.0.1 port 0, owned by PID.

``run_origin(store, *args)`` is a context manager yielding the base URL of a
``legato origin`` subprocess.  It learns the port from the one readiness line
the node prints (``origin listening on http://HOST:PORT``), waits for it for a
bounded time, and on exit stops exactly that process: SIGTERM, then SIGKILL
after a timeout, then reaps it.  ``origin_process`` is the same with the
process handle and its captured stderr (the JSON access log) exposed.

``RawUpstream`` is a raw TCP upstream on 127.0.0.1 (port 0) for edge and
regional tests: it counts each request per path and leaves the answer (or the
misbehaviour) to a subclass's ``answer``.  ``get(url)`` is a plain client GET
whose HTTP error answers are answers too.

Import as ``from servers import run_origin`` (tests/ is on sys.path through
the root conftest).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


@dataclass
class NodeProcess:
    """A running node: its base URL, process and stderr capture file."""

    url: str
    proc: subprocess.Popen[bytes]
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        """Everything the node wrote to stderr so far (access log, warnings)."""
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the node, wait for it (SIGKILL on timeout) and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Read one stdout line within ``timeout`` seconds, or raise."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no readiness line within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"exited before listening (status {proc.wait()})")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


@contextlib.contextmanager
def node_process(role: str, *args: str, start_timeout: float = START_TIMEOUT) -> Iterator[NodeProcess]:
    """Run ``legato ROLE ARGS...`` until it announces its URL; stop it on exit."""
    with tempfile.TemporaryDirectory(prefix=f"legato-{role}-") as tmp:
        stderr_path = Path(tmp) / "stderr.log"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "legato.cli", role, *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
            )
        node = NodeProcess("", proc, stderr_path)
        try:
            try:
                line = _read_line(proc, start_timeout)
            except (TimeoutError, RuntimeError) as exc:
                raise RuntimeError(f"legato {role} {' '.join(args)}: {exc}\n{node.stderr()[-3000:]}") from None
            prefix = f"{role} listening on "
            if not line.startswith(prefix):
                raise RuntimeError(f"legato {role}: unexpected first line {line!r}")
            node.url = line[len(prefix):]
            yield node
        finally:
            node.stop()
            assert proc.stdout is not None
            proc.stdout.close()


@contextlib.contextmanager
def origin_process(store: Path, *extra_args: str, workers: int = 1) -> Iterator[NodeProcess]:
    """An origin serving ``store`` on 127.0.0.1, any free port."""
    args = ["--store", str(store), "--listen", "127.0.0.1:0", *extra_args]
    if workers != 1:
        args += ["--workers", str(workers)]
    with node_process("origin", *args) as node:
        yield node


@contextlib.contextmanager
def run_origin(store: Path, *extra_args: str, workers: int = 1) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT``) of an origin serving ``store``."""
    with origin_process(store, *extra_args, workers=workers) as node:
        yield node.url


def child_process_args(test_file: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and env running ``_child(argv)`` of the test module ``test_file`` in a fresh interpreter.

    Used by the cross-process store and coalescer tests; the child starts without
    the parent's Prometheus multiprocess directory.
    """
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('_legato_test_child', {test_file!r})\n"
        "mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "mod._child(sys.argv[1:])\n"
    )
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(tests.parent), str(tests)))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return [sys.executable, "-c", code, *args], env


def get(url: str, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


class RawUpstream:
    """A raw TCP server on 127.0.0.1 (port 0) answering as a subclass scripts it; counts requests per path.

    A thread accepts connections (polling every 0.2 s for ``close``) and serves
    each in a thread of its own: it reads the request head, counts the path in
    ``hits`` (under ``_lock``) and hands the connection to ``answer(conn,
    path)``, which writes whatever response the test wants; the connection is
    closed when ``answer`` returns.  ``_stop`` is set by ``close``: ``answer``
    may wait on it to stall.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(self, conn: socket.socket, path: str) -> None:
        """Write the response to a request for ``path`` on ``conn`` (a subclass decides)."""
        raise NotImplementedError

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1].decode()
            with self._lock:
                self.hits[path] = self.hits.get(path, 0) + 1
            self.answer(conn, path)

    def close(self) -> None:
        """Stop accepting, release any ``answer`` waiting on ``_stop`` and join the accepting thread."""
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)
