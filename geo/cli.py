"""`legato license`: write, import and show the licence records of a store.

Records live at ``STORE/licenses/{track}.json`` (format: geo/licence.py) and
are written atomically (a temporary file renamed into place), so origin never
serves half a record.  Every record is validated before anything is written;
an import writes all of its tracks or none.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from geo.licence import (
    FIELDS,
    ISO_CODES,
    Licence,
    LicenceError,
    Policy,
    Term,
    decide,
    format_instant,
    overlap,
    parse_codes,
    parse_instant,
)
from legato.cli import HelpFormatter
from legato.urls import is_track_id

CSV_COLUMNS = ("track", "allow", "deny", "from", "until", "model", "replacement", "refuse_anonymous",
               "country_field")
PURGE_HINT = ("Caches keep the previous record for up to origin's license_max_age (30 s by default). "
              "To apply it at once: legato purge --config TOPOLOGY.toml {paths}")

DESCRIPTION = """\
Licence records say where and when a track may be played: territories
(ISO 3166-1 alpha-2 codes, WW for the whole world, minus excluded ones), a
validity window in UTC, a revenue model label, and per-country replacement
tracks offered to listeners refused there.  Edges refuse manifests and keys
outside the licence with HTTP 451.

  legato license set TRACK --store DIR --allow GB,IE --from 2025-01-01 --model subscription
  legato license set TRACK --store DIR --allow WW --deny SE --replacement SE=OTHER
  legato license import licences.csv --store DIR
  legato license show TRACK --store DIR [--country GB] [--at 2025-06-01T12:00:00Z]
"""

IMPORT_HELP = f"""\
CSV with a header row; columns: {', '.join(CSV_COLUMNS)} (track and allow
required).  Each row is one term of its track's licence (several rows may
give one track several windows or territories); the tracks named replace
their whole records.  allow/deny: codes separated by spaces, ';' or ',';
from/until: ISO 8601 in UTC (2025-01-31 or 2025-01-31T08:00:00Z), empty for
open-ended; replacement: COUNTRY=TRACK pairs separated by ';';
refuse_anonymous: true/false; country_field: one of {', '.join(FIELDS)}.
Unknown codes, inverted or overlapping windows and unknown tracks are
errors listing their line numbers; nothing is written unless every line is
good."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("license", help="set and import per-territory licence records",
                              description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    s = sub.add_parser("set", help="write one track's licence record (replaces it)", formatter_class=HelpFormatter,
                       description="Write STORE/licenses/TRACK.json with one term built from the options.")
    s.add_argument("track", metavar="TRACK", help="track id (must be packaged in the store)")
    _store_arg(s)
    s.add_argument("--allow", required=True, metavar="CODES",
                   help="territories where the track may play: ISO codes separated by ',' (e.g. GB,IE), or WW")
    s.add_argument("--deny", default="", metavar="CODES", help="territories excluded from --allow (e.g. SE)")
    s.add_argument("--from", dest="not_before", default=None, metavar="TIME",
                   help="start of the window, UTC (2025-01-31 or 2025-01-31T08:00:00Z); open when omitted")
    s.add_argument("--until", dest="not_after", default=None, metavar="TIME",
                   help="end of the window (exclusive), UTC; open-ended when omitted")
    s.add_argument("--model", default="subscription", help="revenue model label (e.g. subscription, ad-supported)")
    s.add_argument("--replacement", action="append", default=[], metavar="COUNTRY=TRACK",
                   help="track offered instead to listeners refused in COUNTRY; repeatable")
    s.add_argument("--country-field", choices=FIELDS, default=None,
                   help="which country of an address decides (default: the edge's [geo] country_field)")
    s.add_argument("--refuse-anonymous", action="store_true",
                   help="refuse addresses an anonymous-IP database flags (VPNs, Tor, proxies)")
    s.set_defaults(func=run_set)

    i = sub.add_parser("import", help="set the licences of many tracks from a CSV file, all or nothing",
                       description=IMPORT_HELP, formatter_class=HelpFormatter)
    i.add_argument("file", type=Path, metavar="FILE.csv", help="the CSV file")
    _store_arg(i)
    i.set_defaults(func=run_import)

    w = sub.add_parser("show", help="print a track's licence record (and a decision)", formatter_class=HelpFormatter,
                       description="Print STORE/licenses/TRACK.json; with --country, also what an edge "
                       "would decide for a listener there.")
    w.add_argument("track", metavar="TRACK", help="track id")
    _store_arg(w)
    w.add_argument("--country", default=None, metavar="CC", help="decide for a listener in this country")
    w.add_argument("--at", default=None, metavar="TIME", help="decide at this UTC time (default: now)")
    w.set_defaults(func=run_show)


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=Path("store"), metavar="DIR", help="store directory")


def _fail(message: str) -> int:
    print(f"legato license: {message}", file=sys.stderr)
    return 1


def licence_file(store: Path, track: str) -> Path:
    return store / "licenses" / f"{track}.json"


def track_exists(store: Path, track: str) -> bool:
    return is_track_id(track) and (store / "tracks" / track / "track.json").is_file()


def _split_codes(text: str) -> list[str]:
    return [c for c in text.replace(";", " ").replace(",", " ").split() if c]


def parse_replacements(items: Iterable[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        code, eq, track = item.strip().partition("=")
        code = code.strip().upper()
        track = track.strip()
        if not eq or not track:
            raise LicenceError(f"{where}: {item!r} is not COUNTRY=TRACK")
        if code not in ISO_CODES:
            raise LicenceError(f"{where}: {code!r} is not an ISO 3166-1 alpha-2 code")
        if code in out and out[code] != track:
            raise LicenceError(f"{where}: two replacements for {code}")
        out[code] = track
    return out


def _check_tracks(store: Path, licence: Licence) -> list[str]:
    problems = []
    if not track_exists(store, licence.track):
        problems.append(f"unknown track {licence.track!r} (no {store / 'tracks' / licence.track / 'track.json'})")
    for code, other in sorted(licence.replacements.items()):
        if not track_exists(store, other):
            problems.append(f"replacement for {code}: unknown track {other!r}")
    return problems


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name in the same directory, fsync, rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _summary(licence: Licence) -> str:
    parts = []
    for t in licence.terms:
        where = ("everywhere" if "WW" in t.allow else ",".join(sorted(t.allow))) + (
            f" except {','.join(sorted(t.deny))}" if t.deny else "")
        when = f"{format_instant(t.not_before) or '-∞'} .. {format_instant(t.not_after) or '∞'}"
        parts.append(f"{where}, {when}, {t.model}")
    text = "; ".join(parts)
    if licence.replacements:
        text += "; replacements " + ", ".join(f"{k}={v}" for k, v in sorted(licence.replacements.items()))
    return text


def _purge_hint(tracks: Iterable[str]) -> str:
    return PURGE_HINT.format(paths=" ".join(f"/licenses/{t}.json" for t in tracks))


def run_set(args: argparse.Namespace) -> int:
    try:
        if not is_track_id(args.track):
            raise LicenceError(f"{args.track!r} is not a track id")
        term = Term(parse_codes(_split_codes(args.allow), "--allow"),
                    parse_codes(_split_codes(args.deny), "--deny", world=False),
                    parse_instant(args.not_before, "--from"), parse_instant(args.not_after, "--until"), args.model)
        term.check("the term")
        licence = Licence(args.track, (term,), parse_replacements(args.replacement, "--replacement"),
                          args.country_field, args.refuse_anonymous)
    except LicenceError as exc:
        return _fail(exc.reason)
    problems = _check_tracks(args.store, licence)
    if problems:
        return _fail("; ".join(problems))
    path = licence_file(args.store, args.track)
    try:
        write_atomic(path, licence.to_json())
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}")
    print(f"wrote {path}: {_summary(licence)}")
    print(_purge_hint([args.track]))
    return 0


def read_csv(path: Path, store: Path) -> tuple[list[Licence], list[str]]:
    """Licences from an import file, and every problem found (with line numbers)."""
    errors: list[str] = []
    failed: set[str] = set()  # tracks with a bad line: reported there, not again as a whole
    rows: dict[str, list[tuple[int, Term]]] = {}
    extras: dict[str, dict[str, tuple[int, object]]] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            unknown = [h for h in header if h not in CSV_COLUMNS]
            if not header or "track" not in header or "allow" not in header or unknown:
                detail = f"unknown column(s) {', '.join(unknown)}" if unknown else "missing track or allow"
                return [], [f"line 1: bad header ({detail}; columns: {', '.join(CSV_COLUMNS)})"]
            reader.fieldnames = header
            for row in reader:
                line = reader.line_num
                if None in row:
                    errors.append(f"line {line}: more fields than columns")
                    continue
                cells = {k: (v or "").strip() for k, v in row.items()}
                if not any(cells.values()):
                    continue
                track = cells["track"]
                try:
                    if not is_track_id(track):
                        raise LicenceError(f"{track!r} is not a track id")
                    term = Term(parse_codes(_split_codes(cells["allow"]), "allow"),
                                parse_codes(_split_codes(cells.get("deny", "")), "deny", world=False),
                                parse_instant(cells.get("from"), "from"), parse_instant(cells.get("until"), "until"),
                                cells.get("model") or "subscription")
                    term.check("term")
                    settings: dict[str, object] = {}
                    if cells.get("replacement"):
                        settings["replacements"] = parse_replacements(cells["replacement"].split(";"), "replacement")
                    if cells.get("refuse_anonymous"):
                        flag = cells["refuse_anonymous"].lower()
                        if flag not in ("true", "false", "yes", "no", "1", "0"):
                            raise LicenceError(f"refuse_anonymous: {cells['refuse_anonymous']!r} is not true/false")
                        settings["refuse_anonymous"] = flag in ("true", "yes", "1")
                    if cells.get("country_field"):
                        if cells["country_field"] not in FIELDS:
                            raise LicenceError(f"country_field: {cells['country_field']!r} is not one of "
                                               f"{', '.join(FIELDS)}")
                        settings["country_field"] = cells["country_field"]
                except LicenceError as exc:
                    errors.append(f"line {line}: {exc.reason}")
                    failed.add(track)
                    continue
                before = len(errors)
                if not track_exists(store, track):
                    errors.append(f"line {line}: unknown track {track!r} (not packaged in {store})")
                for earlier_line, earlier in rows.get(track, []):
                    common = overlap(earlier, term)
                    if common:
                        shown = ", ".join(sorted(common)[:5]) + (" ..." if len(common) > 5 else "")
                        errors.append(f"line {line}: window overlaps line {earlier_line} for {track} in {shown}")
                rows.setdefault(track, []).append((line, term))
                seen = extras.setdefault(track, {})
                for key, value in settings.items():
                    if key in seen and seen[key][1] != value:
                        errors.append(f"line {line}: {key} differs from line {seen[key][0]} for {track}")
                    seen.setdefault(key, (line, value))
                if len(errors) > before:
                    failed.add(track)
    except FileNotFoundError:
        return [], [f"{path}: no such file"]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [], [f"{path}: cannot read: {exc}"]
    licences = []
    for track, terms in rows.items():
        if track in failed:
            continue
        settings = {k: v for k, (_, v) in extras.get(track, {}).items()}
        first = terms[0][0]
        try:
            licence = Licence(track, tuple(t for _, t in terms), settings.get("replacements", {}),  # type: ignore[arg-type]
                              settings.get("country_field"), bool(settings.get("refuse_anonymous", False)))  # type: ignore[arg-type]
        except LicenceError as exc:
            errors.append(f"line {first}: {track}: {exc.reason}")
            continue
        for code, other in sorted(licence.replacements.items()):
            if not track_exists(store, other):
                errors.append(f"line {first}: replacement for {code}: unknown track {other!r}")
        licences.append(licence)
    if not rows and not errors:
        errors.append(f"{path}: no licence rows")
    return licences, errors


def run_import(args: argparse.Namespace) -> int:
    licences, errors = read_csv(args.file, args.store)
    if errors:
        print(f"legato license: {args.file}: {len(errors)} error(s), nothing written:", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    staged: list[tuple[Path, Path]] = []
    try:  # all or nothing: every temporary file first, then the renames
        for licence in licences:
            path = licence_file(args.store, licence.track)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
            with tmp.open("wb") as fh:
                fh.write(licence.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            staged.append((tmp, path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        return _fail(f"cannot write in {args.store / 'licenses'}: {exc.strerror or exc}")
    for licence in licences:
        print(f"{licence.track}: {_summary(licence)}")
    print(f"wrote {len(licences)} licence record(s) to {args.store / 'licenses'}")
    print(_purge_hint(lic.track for lic in licences))
    return 0


def run_show(args: argparse.Namespace) -> int:
    if not is_track_id(args.track):
        return _fail(f"{args.track!r} is not a track id")
    path = licence_file(args.store, args.track)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        known = "" if track_exists(args.store, args.track) else " (and the track is not in the store)"
        return _fail(f"{args.track} has no licence record: no {path}{known}")
    except OSError as exc:
        return _fail(f"cannot read {path}: {exc.strerror}")
    try:
        licence = Licence.from_json(data, track=args.track)
    except LicenceError as exc:
        return _fail(f"{path}: invalid record: {exc.reason}")
    print(json.dumps(licence.to_dict(), indent=2))
    print(f"# {_summary(licence)}")
    if args.country:
        try:
            (country,) = parse_codes([args.country], "--country", world=False)
            now = parse_instant(args.at, "--at") if args.at else time.time()
        except (LicenceError, ValueError) as exc:
            return _fail(getattr(exc, "reason", str(exc)))
        decision = decide(licence, country, now or time.time(), Policy())
        verdict = "allowed" if decision.allowed else f"refused ({decision.reason})"
        extra = f"; replacement {decision.replacement}" if decision.replacement else ""
        print(f"# listener in {country} at {format_instant(now)}: {verdict}{extra}")
    return 0
