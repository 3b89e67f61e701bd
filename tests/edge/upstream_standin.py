"""A stand-in upstream for edge tests: a real HTTP server on 127.0.0.1 answering like origin would.

It serves a tiny protected track ``t1`` (multivariant and media playlists, an
MPD with a ClearKey licence URL, an init and a media segment, all marked
cacheable) and a key service: ``/keys/{kid}`` (16 bytes; some kids
misbehave on purpose) and ``/license/clearkey`` (echoes the request).  Its key
answers are marked cacheable too, to prove that the tiers never store them anyway.
Every request except /healthz is recorded in ``seen``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator

KID = "0123456789abcdef0123456789abcdef"
KEY = bytes(range(16))
MASTER = (
    b"#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n"
    b'#EXT-X-STREAM-INF:BANDWIDTH=100000,CODECS="mp4a.40.2"\nhls-aes128/aac-96k/index.m3u8\n'
    b'#EXT-X-STREAM-INF:BANDWIDTH=1000000,CODECS="fLaC"\nhls-aes128/flac/index.m3u8\n'
)
MEDIA = (
    "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:6\n#EXT-X-PLAYLIST-TYPE:VOD\n"
    '#EXT-X-MAP:URI="init.mp4"\n'
    f'#EXT-X-KEY:METHOD=AES-128,URI="/keys/{KID}",IV=0x00000000000000000000000000000001\n'
    "#EXTINF:6.0,\nseg-00001.m4s\n#EXT-X-ENDLIST\n"
).encode()
MPD = b"""<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" xmlns:clearkey="http://dashif.org/guidelines/clearKey"
     type="static" mediaPresentationDuration="PT6S" profiles="urn:mpeg:dash:profile:isoff-live:2011">
 <Period><AdaptationSet contentType="audio" mimeType="audio/mp4">
  <ContentProtection schemeIdUri="urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e" value="ClearKey1.0">
   <clearkey:Laurl Lic_type="EME-1.0">/license/clearkey</clearkey:Laurl>
  </ContentProtection>
  <Representation id="aac-96k" bandwidth="96000" codecs="mp4a.40.2">
   <SegmentTemplate initialization="cenc/aac-96k/init.mp4" media="cenc/aac-96k/seg-$Number%05d$.m4s"/>
  </Representation>
 </AdaptationSet></Period>
</MPD>
"""
PLAYLIST = "application/vnd.apple.mpegurl"
OBJECTS = {
    "/tracks/t1/master.m3u8": (PLAYLIST, MASTER),
    "/tracks/t1/hls-aes128/aac-96k/index.m3u8": (PLAYLIST, MEDIA),
    "/tracks/t1/manifest.mpd": ("application/dash+xml", MPD),
    "/tracks/t1/hls-aes128/aac-96k/init.mp4": ("audio/mp4", b"init" * 100),
    "/tracks/t1/hls-aes128/aac-96k/seg-00001.m4s": ("audio/mp4", b"encrypted" * 1000),
}


class KeyService(http.server.BaseHTTPRequestHandler):
    """See the module docstring."""

    seen: list[dict[str, object]]
    stop: threading.Event

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, ctype: str = "application/octet-stream", **extra: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "public, max-age=3600")  # the tiers must not believe it
        self.send_header("Access-Control-Allow-Origin", "https://evil.example")  # nor relay it
        for k, v in extra.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        if path != "/healthz":
            self.seen.append({"method": self.command, "path": path, "query": query, "body": body,
                              "xff": self.headers.get("X-Forwarded-For"), "via": self.headers.get("Via"),
                              "ctype": self.headers.get("Content-Type")})
        kid = path.rpartition("/")[2]
        if path == "/healthz":
            self._answer(200, b"ok", "text/plain")
        elif path in OBJECTS:
            ctype, body = OBJECTS[path]
            self._answer(200, body, ctype, ETag=f'"{hash(body) & 0xFFFFFFFF:08x}"')
        elif path == "/license/clearkey":
            self._answer(200, json.dumps({"echo": body.decode(), "query": query}).encode(), "application/json")
        elif kid.startswith("401"):
            self._answer(401, b'{"error": "expired"}', "application/json")
        elif kid.startswith("429"):
            self._answer(429, b'{"error": "rate limited"}', "application/json", Retry_After="1")
        elif kid.startswith("500"):
            self._answer(500, b"broken", "text/plain")
        elif kid.startswith("bbbb"):  # an answer far too big to be a key
            self._answer(200, b"x" * (200 * 1024))
        elif kid.startswith("dead"):  # never answers
            self.stop.wait(20)
        else:
            self._answer(200, KEY)

    do_GET = do_POST = do_HEAD = _handle


@contextlib.contextmanager
def key_service() -> Iterator[tuple[str, list[dict[str, object]]]]:
    seen: list[dict[str, object]] = []
    stop = threading.Event()
    handler = type("Handler", (KeyService,), {"seen": seen, "stop": stop})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


