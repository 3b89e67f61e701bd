"""Real headless Chromium driving real players (hls.js, shaka-player, dash.js).

`PageServer` serves this folder (player.html and the npm-installed players in
node_modules) on 127.0.0.1; the stream comes from the origin on another port,
so every request the player makes is cross-origin and CORS is exercised for
real. `Browser` is Debian's /usr/bin/chromium under /usr/bin/chromedriver via
selenium; nothing is ever downloaded (selenium-manager is bypassed by giving
the driver's path).
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PLAYERS = {
    "hls.js": HERE / "node_modules" / "hls.js" / "dist" / "hls.min.js",
    "shaka": HERE
    / "node_modules"
    / "shaka-player"
    / "dist"
    / "shaka-player.compiled.js",
    "dash.js": HERE / "node_modules" / "dashjs" / "dist" / "modern" / "umd" / "dash.all.min.js",
}
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
)


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the browser tests (`make test` installs all of it)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    missing += [
        f"{p.relative_to(HERE)} (run `npm ci` in {HERE})"
        for p in PLAYERS.values()
        if not p.is_file()
    ]
    return missing


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class PageServer:
    """This folder over HTTP on 127.0.0.1, an ephemeral port, in a thread."""

    def __init__(self, root: Path = HERE) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="page-server", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


@dataclass
class PlayResult:
    """What the page reported, plus the browser's console, for assertion messages."""

    result: dict[str, Any]
    console: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def state(self) -> str:
        return str(self.result.get("state"))

    def media_urls(self) -> list[str]:
        """Init and media segments the page fetched, in fetch order."""
        return [
            u
            for u in self.result.get("resources", [])
            if u.split("?")[0].endswith((".mp4", ".m4s"))
        ]

    def report(self) -> str:
        r = dict(self.result)
        events = r.pop("events", [])
        return "\n".join(
            [
                f"page result after {self.elapsed:.1f}s:",
                json.dumps(r, indent=1, default=str),
                "player timeline (ms since page start):",
                *(f"  {t:>6} {what}" for t, what in events),
                "browser console:",
                *(f"  {line}" for line in self.console),
            ]
        )


class Browser:
    """One headless Chromium session; `play()` loads the test page once per call."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._profile = tempfile.TemporaryDirectory(prefix="legato-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile.name}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: selenium-manager is never consulted, so
        # nothing is looked up or downloaded.
        service = Service(executable_path=CHROMEDRIVER)
        try:
            self.driver = webdriver.Chrome(service=service, options=options)
        except Exception:
            self._profile.cleanup()
            raise
        self.driver.set_script_timeout(30)
        self.driver.set_page_load_timeout(30)

    def console(self) -> list[str]:
        """Browser console lines logged since the last call."""
        lines = [
            f"{e.get('level')} {e.get('message')}"
            for e in self.driver.get_log("browser")
        ]
        return [
            line for line in lines if "[legato-test]" not in line
        ]  # those are in the timeline

    def play(
        self,
        page_url: str,
        *,
        player: str,
        src: str,
        rendition: str = "",
        rate: float = 16.0,
        timeout: float = 60.0,
        extra: dict[str, str] | None = None,
    ) -> PlayResult:
        """Open the test page and wait until the page reports 'ended' or 'error' (or `timeout`).

        `extra`: more page parameters (see player.html: keytoken, license).
        """
        self.console()  # drop what earlier pages logged
        query = urlencode(
            {"player": player, "src": src, "rendition": rendition, "rate": rate, **(extra or {})}
        )
        started = time.monotonic()
        self.driver.get(f"{page_url}/player.html?{query}")
        result: dict[str, Any] = {}
        while time.monotonic() - started < timeout:
            result = self.driver.execute_script(
                "return window.__snapshot ? window.__snapshot() : {state: 'page not loaded'}"
            )
            if result.get("state") in ("ended", "error"):
                break
            time.sleep(0.1)
        else:
            result["state"] = (
                f"timeout after {timeout:.0f}s (last state {result.get('state')!r})"
            )
        elapsed = time.monotonic() - started
        console = self.console()
        self.driver.get("about:blank")  # stop the player and its requests
        return PlayResult(result=result, console=console, elapsed=elapsed)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            self._profile.cleanup()
