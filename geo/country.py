"""Country of an address, from a MaxMind DB (GeoIP2/GeoLite2 Country or City).

``CountryDB(path, anonymous_path=None)`` opens the database memory-mapped
(libmaxminddb through the ``maxminddb`` C extension, ``MODE_MMAP_EXT``: about
15 µs a lookup against 130 µs for the pure-Python ``MODE_MMAP`` reader, which
is the fallback when the extension is missing) and **validates it at open**,
so a broken file stops the node at start with a clear message instead of
failing at request time:

* it must open (libmaxminddb checks the metadata and that the search tree
  fits in the file);
* the metadata must name a Country or City layout (or Anonymous-IP for the
  optional anonymous database), binary format 2, record size 24/28/32;
* probes: the search tree is walked (read from our own map of the file) to
  the first record of every populated IPv4 /8 and IPv6 2000::/11, every
  pointer must land inside the data section, and each such record is
  decoded by the reader and must have the layout's shape (``country`` a map
  whose ``iso_code`` is two capital letters...).  At least one record must
  carry a country.  That reads a few hundred records: milliseconds even for
  GeoLite2 City.

``lookup(ip)`` gives a ``CountryInfo`` (``country``, ``registered_country``,
``represented_country`` ISO codes and ``is_anonymous``) or None when the
database does not know the address.

Reload without restart: ``reload_if_changed(now)`` stats the files at most
every ``poll_interval`` seconds and reopens one whose inode, size or mtime
changed; ``reload()`` (SIGHUP) reopens unconditionally.  A replacement that
fails validation is logged and the old database stays in use.  Replace the
file by renaming a new one over it (as geoipupdate does): the old map stays
valid for lookups in flight, whereas overwriting the mapped file in place
can crash the process.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import mmap
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import maxminddb

from geo.client import IPAddress, normalise

log = logging.getLogger("legato.geo")

ISO_CODE_RE = re.compile(r"[A-Z]{2}")
COUNTRY_LAYOUT = ("Country", "City", "Enterprise")
ANONYMOUS_LAYOUT = ("Anonymous",)
_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_DATA_SEPARATOR = 16  # bytes of zeros between the search tree and the data section


class GeoDBError(Exception):
    """A database that cannot be used; the message names the file and the cause."""


@dataclass(frozen=True, slots=True)
class CountryInfo:
    """What the databases say about one address (ISO 3166-1 alpha-2 codes or None)."""

    country: str | None = None
    registered_country: str | None = None
    represented_country: str | None = None
    is_anonymous: bool = False

    def field(self, name: str) -> str | None:
        """The code in ``name`` (``country``, ``registered_country``, ``represented_country``)."""
        value: str | None = getattr(self, name)
        return value


FIELDS = ("country", "registered_country", "represented_country")


def _iso(record: dict[str, Any], name: str) -> str | None:
    sub = record.get(name)
    if isinstance(sub, dict):
        code = sub.get("iso_code")
        if isinstance(code, str):
            return code
    return None


def country_info(record: Any) -> CountryInfo | None:
    """A Country/City record -> CountryInfo (None when it names no country at all)."""
    if not isinstance(record, dict):
        return None
    info = CountryInfo(_iso(record, "country"), _iso(record, "registered_country"),
                       _iso(record, "represented_country"),
                       bool((record.get("traits") or {}).get("is_anonymous_proxy", False)))
    if info.country is None and info.registered_country is None and info.represented_country is None:
        return None
    return info


def _check_country_record(record: Any) -> bool:
    """Raise ValueError unless ``record`` has the Country/City shape; True if it names a country."""
    if not isinstance(record, dict):
        raise ValueError(f"record is a {type(record).__name__}, not a map")  # noqa: TRY004 - a bad file, not a bad call
    named = False
    for name in FIELDS:
        sub = record.get(name)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ValueError(f"{name} is a {type(sub).__name__}, not a map")  # noqa: TRY004 - a bad file
        code = sub.get("iso_code")
        if code is not None and not (isinstance(code, str) and ISO_CODE_RE.fullmatch(code)):
            raise ValueError(f"{name}.iso_code {code!r} is not a two-letter code")
        named = named or code is not None
    traits = record.get("traits")
    if traits is not None and not isinstance(traits, dict):
        raise ValueError("traits is not a map")
    return named


def _check_anonymous_record(record: Any) -> bool:
    if not isinstance(record, dict):
        raise ValueError(f"record is a {type(record).__name__}, not a map")  # noqa: TRY004 - a bad file, not a bad call
    flag = record.get("is_anonymous")
    if flag is not None and not isinstance(flag, bool):
        raise ValueError(f"is_anonymous is {flag!r}, not a boolean")
    return flag is not None


def _open_reader(path: Path) -> Any:
    mode = maxminddb.MODE_MMAP_EXT if importlib.util.find_spec("maxminddb.extension") else maxminddb.MODE_MMAP
    return maxminddb.open_database(str(path), mode)


def _probe_addresses(path: Path, meta: Any) -> Iterator[IPAddress]:
    """One address in the first populated network of each IPv4 /8 and IPv6 2000::/11.

    Walks the search tree ourselves (MaxMind DB format 2.0, "Search Tree
    Section") so that a pointer out of the data section is caught before any
    lookup trusts it.
    """
    node_count, size = meta.node_count, meta.record_size
    if size not in (24, 28, 32):
        raise ValueError(f"record size {size} is not 24, 28 or 32")
    node_bytes = size // 4
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        tree_size = node_count * node_bytes
        marker = buf.rfind(_METADATA_MARKER)
        data_size = marker - tree_size - _DATA_SEPARATOR
        if marker < 0 or data_size <= 0:
            raise ValueError("the file has no data section")

        def child(node: int, bit: int) -> int:
            off = node * node_bytes
            if size == 24:
                return int.from_bytes(buf[off + 3 * bit:off + 3 * bit + 3], "big")
            if size == 32:
                return int.from_bytes(buf[off + 4 * bit:off + 4 * bit + 4], "big")
            middle = buf[off + 3]
            if bit == 0:
                return ((middle & 0xF0) << 20) | int.from_bytes(buf[off:off + 3], "big")
            return ((middle & 0x0F) << 24) | int.from_bytes(buf[off + 4:off + 7], "big")

        def first_record(node: int, prefix: int, depth: int, width: int) -> int | None:
            """Bits of an address in the first non-empty network under ``node`` (bounded DFS)."""
            stack = [(node, prefix, depth)]
            budget = 4096
            while stack and budget:
                budget -= 1
                node, prefix, depth = stack.pop()
                if node == node_count:
                    continue
                if node > node_count:
                    if node - node_count - _DATA_SEPARATOR >= data_size:
                        raise ValueError(f"search tree points past the data section (record {node})")
                    return prefix << (width - depth)
                if depth >= width:
                    raise ValueError("search tree is deeper than the address")
                stack.append((child(node, 1), prefix << 1 | 1, depth + 1))
                stack.append((child(node, 0), prefix << 1, depth + 1))
            return None

        def descend(node: int, bits: int, count: int) -> int:
            for i in range(count - 1, -1, -1):
                if node >= node_count:
                    break
                node = child(node, (bits >> i) & 1)
            return node

        v4_root = descend(0, 0, 96) if meta.ip_version == 6 else 0
        for top in range(256):
            bits = first_record(descend(v4_root, top, 8), top, 8, 32)
            if bits is not None:
                yield ipaddress.IPv4Address(bits)
        if meta.ip_version == 6:
            for top in range(256):
                prefix = (0b001 << 8) | top
                bits = first_record(descend(0, prefix, 11), prefix, 11, 128)
                if bits is not None:
                    yield ipaddress.IPv6Address(bits)


@dataclass(frozen=True)
class _Opened:
    """One validated database file."""

    path: Path
    reader: Any
    identity: tuple[int, int, int, int]  # (device, inode, size, mtime_ns)
    database_type: str
    build_epoch: int


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def open_validated(path: Path, layout: tuple[str, ...], check: Callable[[Any], bool]) -> _Opened:
    """Open ``path`` and validate it (module docstring); GeoDBError says what is wrong."""
    kind = "anonymous-IP" if layout is ANONYMOUS_LAYOUT else "Country or City"
    try:
        identity = _identity(path)
        reader = _open_reader(path)
    except FileNotFoundError:
        raise GeoDBError(f"{path}: no such file") from None
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise GeoDBError(f"{path}: not a readable MaxMind DB: {reason}") from None
    try:
        meta = reader.metadata()
        if meta.binary_format_major_version != 2:
            raise ValueError(f"binary format {meta.binary_format_major_version}, expected 2")
        if not any(word in meta.database_type for word in layout):
            raise ValueError(f"database type {meta.database_type!r} is not a GeoIP2/GeoLite2 {kind} database")
        if meta.ip_version not in (4, 6):
            raise ValueError(f"ip_version {meta.ip_version}")
        named = probes = 0
        for addr in _probe_addresses(path, meta):
            probes += 1
            try:
                record = reader.get(addr)
            except maxminddb.InvalidDatabaseError as exc:
                raise ValueError(f"record for {addr} cannot be decoded: {exc}") from None
            try:
                named += check(record)
            except ValueError as exc:
                raise ValueError(f"record for {addr}: {exc}") from None
        if not named:
            raise ValueError(f"none of the {probes} probed records has {'is_anonymous' if layout is ANONYMOUS_LAYOUT else 'a country code'}")
    except (ValueError, RecursionError, maxminddb.InvalidDatabaseError) as exc:
        reader.close()
        raise GeoDBError(f"{path}: broken or unsuitable MaxMind DB: {exc}") from None
    except BaseException:
        reader.close()
        raise
    return _Opened(path, reader, identity, meta.database_type, meta.build_epoch)


class CountryDB:
    """A validated country database (and optional anonymous-IP database), reloadable."""

    def __init__(self, path: str | Path, anonymous_path: str | Path | None = None, *,
                 poll_interval: float = 5.0) -> None:
        self.path = Path(path)
        self.anonymous_path = Path(anonymous_path) if anonymous_path else None
        self.poll_interval = poll_interval
        self._db = open_validated(self.path, COUNTRY_LAYOUT, _check_country_record)
        self._anon: _Opened | None = None
        if self.anonymous_path is not None:
            try:
                self._anon = open_validated(self.anonymous_path, ANONYMOUS_LAYOUT, _check_anonymous_record)
            except GeoDBError:
                self._db.reader.close()
                raise
        self._refused: dict[Path, tuple[int, int, int, int]] = {}
        self._next_poll = 0.0
        self.reloads = 0

    @property
    def database_type(self) -> str:
        return self._db.database_type

    @property
    def build_epoch(self) -> int:
        return self._db.build_epoch

    def lookup(self, ip: IPAddress | str) -> CountryInfo | None:
        """What the databases know about ``ip``; None when they know nothing."""
        if isinstance(ip, str):
            ip = ipaddress.ip_address(ip)
        ip = normalise(ip)
        info = self._lookup(self._db, ip)
        anonymous = False
        if self._anon is not None:
            record = self._lookup_record(self._anon, ip)
            anonymous = isinstance(record, dict) and bool(record.get("is_anonymous"))
        if anonymous:
            return CountryInfo(*(info.country, info.registered_country, info.represented_country)
                               if info else (None, None, None), is_anonymous=True)
        return info

    def _lookup(self, db: _Opened, ip: IPAddress) -> CountryInfo | None:
        return country_info(self._lookup_record(db, ip))

    def _lookup_record(self, db: _Opened, ip: IPAddress) -> Any:
        try:
            return db.reader.get(ip)
        except maxminddb.InvalidDatabaseError as exc:  # the mapped file changed under us: unknown, and re-read it
            if self._next_poll != 0.0:
                log.error("geo database %s gave a corrupt answer (overwritten in place? replace it by renaming "
                          "a new file over it): %s", db.path, exc)
            self._next_poll = 0.0
            return None
        except ValueError:  # an IPv6 address in an IPv4-only database
            return None

    def reload_if_changed(self, now: float | None = None) -> bool:
        """Reopen a file that changed on disk (at most every ``poll_interval`` s when ``now`` is given)."""
        if now is not None:
            if now < self._next_poll:
                return False
            self._next_poll = now + self.poll_interval
        return self._reload(force=False)

    def reload(self) -> bool:
        """Reopen both files now (SIGHUP); a bad file is logged and the old one kept."""
        return self._reload(force=True)

    def _reload(self, force: bool) -> bool:
        changed = False
        new = self._reopen(self._db, COUNTRY_LAYOUT, _check_country_record, force)
        if new is not None:
            old, self._db = self._db, new
            changed = True
            self._retire(old)
        if self._anon is not None:
            new = self._reopen(self._anon, ANONYMOUS_LAYOUT, _check_anonymous_record, force)
            if new is not None:
                old, self._anon = self._anon, new
                changed = True
                self._retire(old)
        if changed:
            self.reloads += 1
        return changed

    def _reopen(self, current: _Opened, layout: tuple[str, ...], check: Callable[[Any], bool],
                force: bool) -> _Opened | None:
        try:
            identity = _identity(current.path)
        except OSError as exc:
            log.error("geo database %s: %s; keeping the loaded one", current.path, exc.strerror)
            return None
        if identity == current.identity and not force:
            return None
        if identity == self._refused.get(current.path) and not force:
            return None  # already refused this very file: do not log it on every poll
        try:
            new = open_validated(current.path, layout, check)
        except GeoDBError as exc:
            self._refused[current.path] = identity
            log.error("geo database not reloaded, keeping %s built %d: %s", current.database_type,
                      current.build_epoch, exc)
            return None
        log.info("geo database reloaded: %s (%s, built %d)", new.path, new.database_type, new.build_epoch)
        return new

    @staticmethod
    def _retire(old: _Opened) -> None:
        # Lookups are synchronous, so none is in flight here; the map can go.
        old.reader.close()

    def close(self) -> None:
        self._db.reader.close()
        if self._anon is not None:
            self._anon.reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bundled_geolite2() -> Path | None:
    """The GeoLite2 City file shipped by the ``maxminddb-geolite2`` package (demo use), if installed."""
    try:
        from _maxminddb_geolite2 import geolite2_database  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(geolite2_database())
    return path if path.exists() else None


