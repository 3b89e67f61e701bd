"""Legato's URL space, parsed in one place for every tier.

Every node (origin, regional, edge) and every tool (packager, bench, tests)
speaks the same paths, so they are defined here once:

====================================================  ===================
path                                                  ``Kind``
====================================================  ===================
``/tracks/{track}/master.m3u8``                       ``MASTER``
``/tracks/{track}/manifest.mpd``                      ``MPD``
``/tracks/{track}/track.json``                        ``TRACK_JSON``
``/tracks/{track}/{rendition}/index.m3u8``            ``MEDIA_PLAYLIST``
``/tracks/{track}/{rendition}/init.mp4``              ``INIT``
``/tracks/{track}/{rendition}/seg-{n:05d}.m4s``       ``SEGMENT``
``/tracks/{track}/{scheme}/{rendition}/…``            the three above, protected
``/licenses/{track}.json``                            ``LICENSE``
``/keys/{kid}``                                       ``KEY``
``/license/clearkey``                                 ``CLEARKEY``
``/metrics``                                          ``METRICS``
``/healthz``                                          ``HEALTHZ``
====================================================  ===================

Protected renditions live one level down, under their protection scheme
(``SCHEMES``: ``hls-aes128`` for HLS whole-segment AES-128, ``cenc`` for
Common Encryption used by DASH), because one track carries both and their
segments differ byte for byte; ``Route.scheme`` is ``None`` for clear ones.
Scheme names are therefore never rendition ids.  ``{kid}`` is a key id as 32
lowercase hex digits; keys and licences are never store objects.

Store objects live on disk at exactly their URL path below the store root
(``STORE/tracks/...``, ``STORE/licenses/...``), so ``Route.relpath`` is both the
cache key and the file name.

``parse(raw_path)`` takes the *raw* request path (still percent-encoded, query
already removed) and returns a ``Route``, ``None`` when the path is well formed
but names nothing in the URL space (a 404), or raises ``BadPath`` (a 400) for
paths that no honest client sends: dot segments (also percent-encoded),
encoded slashes or backslashes, NUL and control bytes, empty segments
(``//``), bad percent escapes.  A file name can only be built from validated
ids, so a ``Route`` can never point outside the store; the temporary build
directories of the packager (names starting with ``.``) are never valid ids
and so are never served.

Segment numbers are canonical: ``seg-00001.m4s`` is segment 1 and
``seg-000001.m4s`` is nothing, so one object has exactly one URL (and one
cache key).  Numbers of 100000 and more simply use more digits.

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

TRACK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A track id (use with ``fullmatch``); the packager validates ids with it."""

RENDITION_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
"""A rendition id such as ``aac-160k`` or ``flac`` (use with ``fullmatch``)."""

KID_RE = re.compile(r"[0-9a-f]{32}")
"""A key id (KID) as 32 lowercase hex digits (use with ``fullmatch``)."""

SCHEMES = ("hls-aes128", "cenc")
"""Protection schemes, each a directory level above its renditions."""

SEGMENT_NAME_RE = re.compile(r"seg-([0-9]{5,10})\.m4s")
"""A media segment file name; the number must also be canonical (see above)."""

MAX_PATH_LENGTH = 1024
"""Longer paths are rejected before any parsing (ours are < 150 bytes)."""

# Characters a path of ours may contain after percent-decoding.  Anything else
# cannot name an object here, so it is a 404 (or a 400 for the dangerous ones
# listed in _FORBIDDEN below).
_PATH_CHARS_RE = re.compile(r"[A-Za-z0-9._/-]*")
_PERCENT_RE = re.compile(r"%([0-9A-Fa-f]{2})")
_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")


class Kind(enum.Enum):
    """What a route names; decides content type and caching policy."""

    MASTER = "master"
    MPD = "mpd"
    TRACK_JSON = "track_json"
    MEDIA_PLAYLIST = "media_playlist"
    INIT = "init"
    SEGMENT = "segment"
    LICENSE = "license"
    KEY = "key"
    CLEARKEY = "clearkey"
    METRICS = "metrics"
    HEALTHZ = "healthz"

    @property
    def is_store_object(self) -> bool:
        """True for kinds served from the store (not keys, licences, /metrics, /healthz)."""
        return self not in (Kind.METRICS, Kind.HEALTHZ, Kind.KEY, Kind.CLEARKEY)


class BadPath(ValueError):
    """A request path that is malformed or hostile: answer 400 with ``reason``."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Route:
    """One parsed path of the URL space."""

    kind: Kind
    track: str | None = None
    rendition: str | None = None
    segment: int | None = None
    scheme: str | None = None
    kid: str | None = None

    @property
    def path(self) -> str:
        """The canonical URL path of this route."""
        if self.kind is Kind.KEY:
            return f"/keys/{self.kid}"
        return "/" + self.relpath if self.kind.is_store_object else _FIXED_PATHS[self.kind]

    @property
    def rendition_dir(self) -> str:
        """``tracks/{track}/[{scheme}/]{rendition}``: the directory of a rendition's files."""
        if self.scheme is None:
            return f"tracks/{self.track}/{self.rendition}"
        return f"tracks/{self.track}/{self.scheme}/{self.rendition}"

    @property
    def relpath(self) -> str:
        """The object's path relative to the store root, '/'-separated (store objects only).

        A plain string rather than a PurePosixPath: it is built on every
        request, and pathlib costs several microseconds per object.
        """
        kind = self.kind
        if kind is Kind.SEGMENT:
            return f"{self.rendition_dir}/{segment_name(self.segment or 0)}"
        if kind in _RENDITION_FILES:
            return f"{self.rendition_dir}/{_RENDITION_FILES[kind]}"
        if kind in _TRACK_FILES:
            return f"tracks/{self.track}/{_TRACK_FILES[kind]}"
        if kind is Kind.LICENSE:
            return f"licenses/{self.track}.json"
        raise ValueError(f"{kind} is not a store object")


_TRACK_FILES = {Kind.MASTER: "master.m3u8", Kind.MPD: "manifest.mpd", Kind.TRACK_JSON: "track.json"}
_TRACK_FILE_KINDS = {name: kind for kind, name in _TRACK_FILES.items()}
_RENDITION_FILES = {Kind.MEDIA_PLAYLIST: "index.m3u8", Kind.INIT: "init.mp4"}
_RENDITION_FILE_KINDS = {name: kind for kind, name in _RENDITION_FILES.items()}
_FIXED_PATHS = {Kind.METRICS: "/metrics", Kind.HEALTHZ: "/healthz", Kind.CLEARKEY: "/license/clearkey"}
_FIXED_KINDS = {path: kind for kind, path in _FIXED_PATHS.items()}


def segment_name(n: int) -> str:
    """File name of media segment ``n`` (1-based): ``seg-00001.m4s``."""
    if n < 1:
        raise ValueError(f"segment numbers start at 1, got {n}")
    return f"seg-{n:05d}.m4s"


def is_track_id(value: str) -> bool:
    return TRACK_ID_RE.fullmatch(value) is not None


def is_rendition_id(value: str) -> bool:
    """A rendition id; scheme names (``SCHEMES``) are reserved and never are."""
    return RENDITION_ID_RE.fullmatch(value) is not None and value not in SCHEMES


def _decode(raw: str) -> str:
    """Percent-decode ``raw``, refusing escapes that would change path structure.

    ``%2F`` and ``%5C`` would hide a separator inside a segment and ``%00`` a
    NUL; any other escape just decodes (``%2e%2e`` becomes ``..`` and is then
    refused as a dot segment by the caller).
    """
    if "%" not in raw:
        return raw
    if raw.count("%") != len(_PERCENT_RE.findall(raw)):
        raise BadPath("malformed percent-escape in path")

    def repl(m: re.Match[str]) -> str:
        byte = int(m.group(1), 16)
        if byte in (0x2F, 0x5C):
            raise BadPath("encoded slash or backslash in path")
        if byte < 0x20 or byte >= 0x7F:
            raise BadPath("encoded control or non-ASCII byte in path")
        return chr(byte)

    return _PERCENT_RE.sub(repl, raw)


def parse(raw_path: str) -> Route | None:
    """Parse a raw (percent-encoded, query-free) request path.

    Returns the ``Route``, or ``None`` for a well-formed path outside the URL
    space; raises ``BadPath`` for malformed or hostile paths.
    """
    if len(raw_path) > MAX_PATH_LENGTH:
        raise BadPath("path too long")
    if not raw_path.startswith("/"):
        raise BadPath("path must start with '/'")
    if _PATH_CHARS_RE.fullmatch(raw_path):
        path = raw_path  # the common case: nothing to decode or reject by character
    else:
        if "\\" in raw_path:
            raise BadPath("backslash in path")
        if _CONTROL_RE.search(raw_path):
            raise BadPath("control character or space in path")
        path = _decode(raw_path)
    parts = path.split("/")
    del parts[0]
    if "." in parts or ".." in parts:
        raise BadPath("dot segment in path")
    if "" in parts and parts.index("") < len(parts) - 1:
        raise BadPath("empty path segment ('//')")
    if path is not raw_path and not _PATH_CHARS_RE.fullmatch(path):
        return None  # odd but harmless characters: nothing of ours has them
    return _match(parts)


def _match(parts: list[str]) -> Route | None:
    """Match decoded, checked path segments against the URL space."""
    if len(parts) == 1:
        kind = _FIXED_KINDS.get("/" + parts[0])
        return Route(kind) if kind else None
    if len(parts) == 2 and parts[0] == "keys":
        return Route(Kind.KEY, kid=parts[1]) if KID_RE.fullmatch(parts[1]) else None
    if len(parts) == 2 and parts[0] == "license":
        kind = _FIXED_KINDS.get("/" + "/".join(parts))
        return Route(kind) if kind else None
    if len(parts) == 2 and parts[0] == "licenses":
        stem, dot, ext = parts[1].rpartition(".")
        if dot and ext == "json" and is_track_id(stem):
            return Route(Kind.LICENSE, track=stem)
        return None
    if parts[0] != "tracks" or not is_track_id(parts[1]):
        return None
    track = parts[1]
    if len(parts) == 3:
        kind = _TRACK_FILE_KINDS.get(parts[2])
        return Route(kind, track=track) if kind else None
    scheme = None
    if len(parts) == 5 and parts[2] in SCHEMES:
        scheme = parts.pop(2)
    if len(parts) == 4 and is_rendition_id(parts[2]):
        rendition, name = parts[2], parts[3]
        kind = _RENDITION_FILE_KINDS.get(name)
        if kind:
            return Route(kind, track=track, rendition=rendition, scheme=scheme)
        m = SEGMENT_NAME_RE.fullmatch(name)
        if m:
            n = int(m.group(1))
            if n >= 1 and segment_name(n) == name:
                return Route(Kind.SEGMENT, track=track, rendition=rendition, segment=n, scheme=scheme)
    return None


def track_path(track: str, name: str) -> str:
    """URL path of a track-level file (``master.m3u8``, ``manifest.mpd``, ``track.json``)."""
    kind = _TRACK_FILE_KINDS.get(name)
    if kind is None or not is_track_id(track):
        raise ValueError(f"not a track file: {track!r}/{name!r}")
    return Route(kind, track=track).path


def _check_scheme(scheme: str | None) -> None:
    if scheme is not None and scheme not in SCHEMES:
        raise ValueError(f"unknown protection scheme {scheme!r} (known: {', '.join(SCHEMES)})")


def rendition_path(track: str, rendition: str, name: str, scheme: str | None = None) -> str:
    """URL path of a rendition file (``index.m3u8``, ``init.mp4``), clear or under ``scheme``."""
    kind = _RENDITION_FILE_KINDS.get(name)
    if kind is None or not is_track_id(track) or not is_rendition_id(rendition):
        raise ValueError(f"not a rendition file: {track!r}/{rendition!r}/{name!r}")
    _check_scheme(scheme)
    return Route(kind, track=track, rendition=rendition, scheme=scheme).path


def segment_path(track: str, rendition: str, n: int, scheme: str | None = None) -> str:
    """URL path of media segment ``n`` of a rendition, clear or under ``scheme``."""
    if not is_track_id(track) or not is_rendition_id(rendition):
        raise ValueError(f"bad track or rendition id: {track!r}/{rendition!r}")
    _check_scheme(scheme)
    return Route(Kind.SEGMENT, track=track, rendition=rendition, segment=n, scheme=scheme).path


def key_path(kid: str) -> str:
    """URL path of the HLS AES-128 key with id ``kid`` (32 lowercase hex digits)."""
    if not KID_RE.fullmatch(kid):
        raise ValueError(f"bad key id: {kid!r}")
    return f"/keys/{kid}"


def license_path(track: str) -> str:
    """URL path of a track's licence record."""
    if not is_track_id(track):
        raise ValueError(f"bad track id: {track!r}")
    return Route(Kind.LICENSE, track=track).path
