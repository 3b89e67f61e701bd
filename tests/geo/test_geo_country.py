"""geo.country against MaxMind's own test databases (tests/data/maxmind, README there)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from geo.country import CountryDB, CountryInfo, GeoDBError, bundled_geolite2

DATA = Path(__file__).resolve().parents[1] / "data" / "maxmind"
CITY = DATA / "GeoIP2-City-Test.mmdb"
COUNTRY = DATA / "GeoIP2-Country-Test.mmdb"
LITE = DATA / "GeoLite2-Country-Test.mmdb"
ANON = DATA / "GeoIP2-Anonymous-IP-Test.mmdb"
BROKEN = sorted(p.name for p in DATA.glob("*.mmdb") if "Broken" in p.name or "Invalid" in p.name
                or p.name.startswith("libmaxminddb-"))


@pytest.mark.parametrize("path", [CITY, COUNTRY, LITE], ids=lambda p: p.name)
def test_known_answers(path: Path) -> None:
    with CountryDB(path) as db:
        assert db.lookup("81.2.69.160") == CountryInfo("GB", "US")
        assert db.lookup("2.125.160.216") == CountryInfo("GB", "FR")
        assert db.lookup("216.160.83.56") == CountryInfo("US", "GB")
        assert db.lookup("89.160.20.112") == CountryInfo("SE", "DE")
        assert db.lookup("202.196.224.1") == CountryInfo("PH", "PH", "US")
        assert db.lookup("2001:218::1") == CountryInfo("JP", "JP")
        assert db.lookup("8.8.8.8") is None
        assert db.lookup("214.1.1.1") is None  # anycast: a record, but no country
        assert db.lookup("::ffff:81.2.69.160") == CountryInfo("GB", "US")


def test_fields() -> None:
    info = CountryInfo("PH", "PH", "US")
    assert [info.field(f) for f in ("country", "registered_country", "represented_country")] == ["PH", "PH", "US"]


def test_anonymous_database() -> None:
    with CountryDB(CITY, ANON) as db:
        assert db.lookup("81.2.69.160") == CountryInfo("GB", "US", None, True)
        assert db.lookup("1.2.3.4") == CountryInfo(None, None, None, True)  # a VPN the city DB does not know
        assert db.lookup("65.1.2.3") == CountryInfo(None, None, None, True)  # Tor
        assert db.lookup("89.160.20.112") == CountryInfo("SE", "DE")


@pytest.mark.parametrize("name", BROKEN)
def test_broken_databases_refused_at_open(name: str) -> None:
    with pytest.raises(GeoDBError) as err:
        CountryDB(DATA / name)
    assert str(DATA / name) in str(err.value)
    assert "Traceback" not in str(err.value)


def test_broken_double_format_is_caught_by_the_probes_not_at_request_time() -> None:
    # it opens, and 8.8.8.8 would even look up fine: only decoding its records fails
    with pytest.raises(GeoDBError, match="cannot be decoded"):
        CountryDB(DATA / "GeoIP2-City-Test-Broken-Double-Format.mmdb")


def test_wrong_layout_and_missing_file() -> None:
    with pytest.raises(GeoDBError, match="'GeoIP2-Anonymous-IP' is not a GeoIP2/GeoLite2 Country or City"):
        CountryDB(ANON)
    with pytest.raises(GeoDBError, match="not a GeoIP2/GeoLite2 anonymous-IP database"):
        CountryDB(CITY, COUNTRY)
    with pytest.raises(GeoDBError, match="no such file"):
        CountryDB(DATA / "nope.mmdb")


def test_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(GeoDBError, match="not a readable MaxMind DB"):
        CountryDB(junk)
    truncated = tmp_path / "truncated.mmdb"
    truncated.write_bytes(CITY.read_bytes()[:5000])
    with pytest.raises(GeoDBError):
        CountryDB(truncated)


def _replace(src: Path, dst: Path) -> None:
    """Install ``src`` at ``dst`` the way geoipupdate does: a new file renamed over the old."""
    tmp = dst.with_suffix(".new")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_reload_on_change_and_bad_replacement_keeps_the_old(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    live = tmp_path / "geo.mmdb"
    shutil.copyfile(CITY, live)
    db = CountryDB(live, poll_interval=10)
    try:
        assert db.lookup("2001:218::1") == CountryInfo("JP", "JP")
        assert db.reload_if_changed(now=100.0) is False  # unchanged
        _replace(DATA / "GeoIP2-City-Test-Broken-Double-Format.mmdb", live)
        assert db.reload_if_changed(now=105.0) is False  # not polled yet (every 10 s)
        with caplog.at_level(logging.ERROR, logger="legato.geo"):
            assert db.reload_if_changed(now=111.0) is False
        assert "not reloaded" in caplog.text and "cannot be decoded" in caplog.text
        assert db.lookup("81.2.69.160") == CountryInfo("GB", "US")  # the old database still answers
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="legato.geo"):
            assert db.reload_if_changed(now=122.0) is False
        assert caplog.text == ""  # the same bad file is not reported on every poll
        _replace(LITE, live)
        assert db.reload_if_changed(now=133.0) is True
        assert db.database_type == "GeoLite2-Country"
        assert db.reloads == 1
        live.unlink()
        assert db.reload_if_changed(now=144.0) is False  # gone: keep what we have
        assert db.lookup("89.160.20.112") == CountryInfo("SE", "DE")
    finally:
        db.close()


def test_forced_reload_sighup(tmp_path: Path) -> None:
    live = tmp_path / "geo.mmdb"
    shutil.copyfile(CITY, live)
    with CountryDB(live) as db:
        assert db.reload() is True
        assert db.database_type == "GeoIP2-City"
        junk = tmp_path / "junk"
        junk.write_bytes(b"garbage")
        os.replace(junk, live)
        assert db.reload() is False
        assert db.lookup("81.2.69.160") == CountryInfo("GB", "US")


def test_overwritten_in_place_fails_closed_and_is_reread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    live = tmp_path / "geo.mmdb"
    shutil.copyfile(CITY, live)
    with CountryDB(live) as db:
        db.reload_if_changed(now=0.0)
        data = bytearray(CITY.read_bytes())
        data[:4000] = bytes(4000)  # same size, search tree zeroed, written into the mapped file
        with live.open("r+b") as fh:
            fh.write(data)
        with caplog.at_level(logging.ERROR, logger="legato.geo"):
            assert db.lookup("81.2.69.160") is None  # unknown (fail closed), not an exception
        assert "overwritten in place" in caplog.text
        shutil.copyfile(COUNTRY, tmp_path / "new")
        os.replace(tmp_path / "new", live)
        assert db.reload_if_changed(now=1.0) is True  # polled at once after the bad answer
        assert db.lookup("81.2.69.160") == CountryInfo("GB", "US")


def test_bundled_geolite2_for_the_demo() -> None:
    path = bundled_geolite2()
    assert path is not None, "maxminddb-geolite2 (setup.cfg) is not installed"
    with CountryDB(path) as db:
        assert db.database_type == "GeoLite2-City"
        info = db.lookup("81.2.69.160")
        assert info is not None and info.country == "GB"
