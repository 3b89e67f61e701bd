"""A strict HTTP/1.1 request-head parser with no I/O (RFC 9112).

Bytes in, request heads out: ``HeadReader.feed(data)`` buffers what the
socket delivered, ``HeadReader.next_head()`` returns the next complete
``RequestHead`` (or ``None`` until more bytes arrive) and raises ``H1Error``,
carrying the status to answer, when the bytes cannot be a valid request head.
Nothing here reads a socket, a clock or a file; ``cache.fastpath`` feeds it.

Only request *heads* are parsed.  A request that announces a body
(``Content-Length`` > 0 or chunked) is reported with ``has_body`` and not
consumed further: the fast path hands such a connection, head and all, to
aiohttp, which reads bodies.

Rules, each from RFC 9112 unless noted:

* §2.2: CRLF is the only line terminator accepted (a bare LF or CR is a
  400); empty lines before the request-line are skipped.
* §3: ``method SP request-target SP HTTP-version``, single spaces; the
  method is a token (RFC 9110 §9.1), the target visible ASCII.  The target's
  *form* (§3.2) is the application's business, not the parser's.
* §2.3: ``HTTP/1.0`` and ``HTTP/1.1`` are served; any other ``HTTP/1.x`` is
  treated as 1.1; other majors (``HTTP/2.0`` of the h2 preface,
  ``HTTP/3.0``, ``HTTP/0.9`` with a version) are 505.
* §5.1: ``field-name ":" OWS field-value OWS``; no whitespace before the
  colon; field names are tokens, values visible chars, SP, HTAB and
  obs-text (RFC 9110 §5.5).  §5.2: obs-fold is rejected with 400.
* §3.2, RFC 9110 §7.2: an HTTP/1.1 request needs exactly one Host.
* §6.1-§6.3 framing: Transfer-Encoding other than ``chunked`` is 501; a
  chunked coding that is not final, TE on HTTP/1.0, TE with Content-Length
  and any invalid or conflicting Content-Length are 400 (request smuggling
  lives in these corners, so every ambiguity is an error).
* §9.3 persistence: HTTP/1.1 keeps the connection unless ``Connection:
  close``; HTTP/1.0 only with ``Connection: keep-alive``.
* Limits (``Limits``): request-line ≤ 8 KiB (else 414, or 400 when what was
  received is not a request-line prefix), header section ≤ 16 KiB including
  its final CRLF, ≤ 100 field lines (else 431, RFC 6585 §5).

Every decision depends only on the bytes received, never on how they were
split: the tests feed random splits and compare.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["H1Error", "HeadReader", "Limits", "RequestHead", "parse_head"]


class H1Error(Exception):
    """The bytes received cannot be a valid request head.

    ``status`` is the response to send (400, 414, 431, 501 or 505) before
    closing the connection; ``reason`` a short phrase for the body.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on what a client may send before the head is complete."""

    request_line: int = 8 * 1024  # bytes, CRLF excluded
    header_section: int = 16 * 1024  # bytes after the request-line, final CRLF included
    header_count: int = 100  # field lines


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class RequestHead:
    """One parsed request head (immutable: a remembered parse is shared).

    ``headers`` keeps every field line in order, names lower-cased (field
    names are case-insensitive, RFC 9110 §5.1), values with surrounding
    whitespace removed.  ``raw`` is the exact bytes of the head (leading empty
    lines excluded), for handing the request on to another parser.
    """

    method: str
    target: str
    http_version: str  # "1.0" or "1.1"
    headers: tuple[tuple[str, str], ...]
    keep_alive: bool
    content_length: int | None
    chunked: bool
    raw: bytes

    @property
    def has_body(self) -> bool:
        """Whether a message body follows the head (RFC 9112 §6.3)."""
        return self.chunked or bool(self.content_length)

    def get(self, name: str) -> str | None:
        """The first value of a (lower-case) field name, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


# RFC 9110 §5.6.2 token; §5.5 field-value characters (no CTLs but HTAB, no DEL)
_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_TOKEN = rf"{_TCHAR}+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# every prefix of a well-formed request-line matches this (and it is prefix-closed)
_REQUEST_LINE_PREFIX = re.compile(rf"{_TOKEN}(?: [\x21-\x7e]*(?: [\x21-\x7e]*)?)?")
_FIELD_SECTION = re.compile(rf"(?:{_TOKEN}:[\t\x20-\x7e\x80-\xff]*\r\n)*")  # final CRLF excluded
# The whole head at once, for the common case (HTTP/1.x, every line valid).
# Possessive quantifiers (*+, ++) only spare the engine backtracking that
# cannot succeed: each run stops at a character it cannot contain (a token at
# ":" or SP, the target at SP, a value at CR, the field lines at the final
# CRLF), so giving any of it back never lets the rest match.
_HEAD = re.compile(
    rf"({_TCHAR}++) ([\x21-\x7e]++) HTTP/1\.([0-9])\r\n"
    rf"((?:{_TCHAR}++:[\t\x20-\x7e\x80-\xff]*+\r\n)*+)\r\n"
)
# Field names (lower-cased) that matter to framing and persistence.
_FRAMING_NAMES = frozenset(("host", "connection", "content-length", "transfer-encoding"))
_DIGITS = re.compile(r"[0-9]{1,18}")


def _request_line(line: str) -> tuple[str, str, str]:
    """Validate a complete request-line (§3); (method, target, minor version digit)."""
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise H1Error(400, "malformed request line")
    method, target, major, minor = m.groups()
    if major != "1":
        raise H1Error(505, f"HTTP/{major}.{minor} not supported; use HTTP/1.1")
    return method, target, minor


def _partial_request_line(buf: bytes | bytearray, start: int, limits: Limits) -> None:
    """Check a request-line whose CRLF has not arrived within the limit.

    Only its first ``limits.request_line`` bytes are looked at, so the answer
    cannot depend on how the bytes were split: 400 as soon as they cannot
    begin a request-line, 414 once the line is known to be too long.
    """
    limit = limits.request_line
    probe = buf[start:start + limit]
    if probe.endswith(b"\r") and len(buf) - start <= limit:
        probe = probe[:-1]  # perhaps the first half of the CRLF
    if not _REQUEST_LINE_PREFIX.fullmatch(probe.decode("latin-1")):
        raise H1Error(400, "malformed request line")
    if len(buf) - start >= limit + 2:
        raise H1Error(414, "request line too long")


def _connection_options(values: list[str]) -> set[str]:
    """Lower-cased connection options of every Connection field (RFC 9110 §7.6.1)."""
    return {opt.strip(" \t").lower() for v in values for opt in v.split(",")}


def _content_length(values: list[str]) -> int:
    """§6.3 rule 5 / RFC 9110 §8.6: one valid length, repeated identically at most."""
    first = values[0]
    if not _DIGITS.fullmatch(first) or any(v != first for v in values):
        raise H1Error(400, "invalid Content-Length")
    return int(first)


def _chunked(values: list[str], version: str, has_length: bool) -> bool:
    """Transfer-Encoding (§6.1): True for chunked; other codings are errors."""
    if version == "1.0":
        raise H1Error(400, "Transfer-Encoding in an HTTP/1.0 request")
    if has_length:
        raise H1Error(400, "both Transfer-Encoding and Content-Length")
    codings = [c.strip(" \t").lower() for v in values for c in v.split(",")]
    codings = [c for c in codings if c]
    if any(c != "chunked" for c in codings):
        raise H1Error(501, "transfer coding not implemented")
    if len(codings) != 1:
        raise H1Error(400, "chunked must be applied once, last")
    return True


FIELDS_MEMO = 512
"""Header sections whose parse is remembered (see ``_framing``)."""

HEADS_MEMO = 512
"""Whole request heads whose parse is remembered (see ``_known_head``)."""

MEMO_MAX = 4096
"""Longer sections and heads are parsed every time (they would bloat the memos)."""


@functools.lru_cache(maxsize=HEADS_MEMO)
def _known_head(raw: bytes, count_limit: int) -> RequestHead | None:
    """The head ``raw`` is, if the one-expression match takes it (None: parse it step by step).

    The same request arrives byte for byte again and again (every listener
    of a popular track on the same player asks for the same segment with the
    same fields), so its parse is remembered whole: a ``RequestHead`` is
    immutable and can be shared.  It depends on nothing but the bytes and
    the field-count limit; an invalid head raises every time (errors are
    not remembered).
    """
    m = _HEAD.fullmatch(raw.decode("latin-1"))
    if m is None:
        return None
    method, target, minor, section = m.groups()
    return _framing(method, target, minor, section, count_limit, raw)


def _framing(method: str, target: str, minor: str, section: str, count_limit: int, raw: bytes) -> RequestHead:
    """Build the head from a validated header section; Host, framing, persistence.

    A client sends the same header section again and again (a player's
    fields stay the same from one segment request to the next; only the
    request-line changes), so the parse of a section is remembered.  It
    depends on nothing but the section, the version and the field-count
    limit; an invalid one raises every time (errors are not remembered).
    """
    version = "1.0" if minor == "0" else "1.1"
    fields = _fields if len(section) <= MEMO_MAX else _fields.__wrapped__
    headers, keep_alive, length, chunked = fields(section, version, count_limit)
    return RequestHead(method, target, version, headers, keep_alive, length, chunked, raw)


@functools.lru_cache(maxsize=FIELDS_MEMO)
def _fields(section: str, version: str, count_limit: int) -> tuple[tuple[tuple[str, str], ...], bool, int | None, bool]:
    """(field lines, keep-alive, Content-Length, chunked) of a validated header section.

    The section is ``name ":" value CRLF`` lines already checked against the
    grammar, so plain string methods take it apart: a line splits at its first
    colon (a name is a token, which has none) and the value's surrounding OWS
    is stripped (``str.strip``, linear; a regex excluding trailing OWS would
    backtrack quadratically on long runs of it).  The framing fields are
    picked out by their lower-cased names as the lines go by; their values
    keep their case, the helpers above lower what is case-insensitive.
    """
    lines = section.split("\r\n")
    lines.pop()  # the empty string after the last CRLF
    if len(lines) > count_limit:
        raise H1Error(431, f"more than {count_limit} header fields")
    headers: list[tuple[str, str]] = []
    hosts = 0
    connection: list[str] = []
    lengths: list[str] = []
    codings: list[str] = []
    for line in lines:
        name, _, value = line.partition(":")
        name = name.lower()
        value = value.strip(" \t")
        headers.append((name, value))
        if name in _FRAMING_NAMES:
            if name == "host":
                hosts += 1
            elif name == "connection":
                connection.append(value)
            elif name == "content-length":
                lengths.append(value)
            else:
                codings.append(value)
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        raise H1Error(400, "an HTTP/1.1 request needs exactly one Host")
    length = _content_length(lengths) if lengths else None
    chunked = _chunked(codings, version, length is not None) if codings else False
    if connection:
        options = _connection_options(connection)
        keep_alive = "close" not in options and (version == "1.1" or "keep-alive" in options)
    else:
        keep_alive = version == "1.1"
    return tuple(headers), keep_alive, length, chunked


def parse_head(buf: bytes | bytearray, start: int = 0, limits: Limits = DEFAULT_LIMITS) -> tuple[RequestHead, int] | None:
    """Parse one request head from ``buf[start:]``.

    Returns ``(head, end)`` with ``end`` the offset just past the head, or
    ``None`` when more bytes are needed; raises ``H1Error``.  Empty lines
    before the request-line are skipped (§2.2).

    A well-formed head shorter than both limits is matched by one regular
    expression (and its parse remembered, see ``_known_head``); anything
    else takes the step-by-step path, which accepts exactly the same heads
    and finds the precise error.
    """
    if buf.startswith(b"\r\n", start):
        start = _skip_empty_lines(buf, start, limits)
    fast_end = start + min(limits.request_line, limits.header_section)
    term = buf.find(b"\r\n\r\n", start, fast_end)
    if term >= 0:
        end = term + 4
        raw = bytes(buf[start:end])
        head = (_known_head if len(raw) <= MEMO_MAX else _known_head.__wrapped__)(raw, limits.header_count)
        if head is not None:
            return head, end
    return _parse_slowly(buf, start, limits)


def _skip_empty_lines(buf: bytes | bytearray, start: int, limits: Limits) -> int:
    """Skip CRLFs before a request-line (§2.2), at most a request-line's worth."""
    first = start
    while buf.startswith(b"\r\n", start):
        start += 2
    if start - first > limits.request_line:
        raise H1Error(400, "too many empty lines before the request line")
    return start


def _parse_slowly(buf: bytes | bytearray, start: int, limits: Limits) -> tuple[RequestHead, int] | None:
    """The step-by-step path of ``parse_head``: every limit and error in order."""
    if start >= len(buf) or buf.endswith(b"\r") and start == len(buf) - 1:
        return None  # nothing yet, or the first half of another empty line
    # a request-line of at most `limit` bytes has its CRLF within limit + 2
    eol = buf.find(b"\r\n", start, start + limits.request_line + 2)
    if eol < 0:
        _partial_request_line(buf, start, limits)
        return None
    method, target, minor = _request_line(buf[start:eol].decode("latin-1"))
    section_start = eol + 2
    if buf.startswith(b"\r\n", section_start):
        end = section_start + 2
        return _framing(method, target, minor, "", limits.header_count, bytes(buf[start:end])), end
    # the final CRLF must end within the section limit
    term = buf.find(b"\r\n\r\n", section_start, section_start + limits.header_section)
    if term < 0:
        if len(buf) - section_start > limits.header_section:
            raise H1Error(431, "header section too large")
        return None
    end = term + 4
    section = buf[section_start:end - 2].decode("latin-1")
    if not _FIELD_SECTION.fullmatch(section):
        raise H1Error(400, "malformed header field")
    return _framing(method, target, minor, section, limits.header_count, bytes(buf[start:end])), end


class HeadReader:
    """A buffer of received bytes that yields complete request heads.

    ``feed`` appends; ``next_head`` parses the next head (``None`` until one
    is complete) and consumes it; ``rest`` returns the unconsumed bytes (a
    body, the next pipelined requests) without consuming them.  After an
    ``H1Error`` the reader is poisoned: the connection must be closed.
    """

    __slots__ = ("_buf", "_pos", "limits")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buf: bytes | bytearray = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        if self._pos >= len(self._buf):
            self._buf, self._pos = data, 0  # the common case: no copy at all
        elif isinstance(self._buf, bytearray):
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += data
        else:
            self._buf = bytearray(memoryview(self._buf)[self._pos:])
            self._buf += data
            self._pos = 0

    def next_head(self) -> RequestHead | None:
        """The next complete request head, consumed; None if incomplete."""
        if self._pos >= len(self._buf):
            return None
        parsed = parse_head(self._buf, self._pos, self.limits)
        if parsed is None:
            return None
        head, self._pos = parsed
        return head

    def rest(self) -> bytes:
        """Bytes received but not consumed by ``next_head``."""
        return bytes(self._buf[self._pos:])

    @property
    def buffered(self) -> int:
        """How many unconsumed bytes are held."""
        return len(self._buf) - self._pos
