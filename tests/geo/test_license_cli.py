"""`legato license set / import / show`: validated, atomic, all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geo.licence import Licence


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with three (catalogued) tracks; the CLI only needs them to exist."""
    store = tmp_path / "store"
    for track in ("song", "song-se", "other"):
        (store / "tracks" / track).mkdir(parents=True)
        (store / "tracks" / track / "track.json").write_text("{}")
    return store


def read(store: Path, track: str) -> Licence:
    return Licence.from_json((store / "licenses" / f"{track}.json").read_bytes(), track=track)


def test_set_writes_a_valid_record_and_says_how_to_purge(cli, store: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("license", "set", "song", "--store", str(store), "--allow", "WW", "--deny", "se",
                 "--from", "2025-01-01", "--until", "2026-01-01T00:00:00Z", "--replacement", "SE=song-se",
                 "--model", "ad-supported", "--country-field", "registered_country", "--refuse-anonymous")
    assert "legato purge --config" in result.stdout and "/licenses/song.json" in result.stdout
    licence = read(store, "song")
    (term,) = licence.terms
    assert term.allow == {"WW"} and term.deny == {"SE"} and term.model == "ad-supported"
    assert licence.replacements == {"SE": "song-se"} and licence.refuse_anonymous
    assert licence.country_field == "registered_country"
    assert not list((store / "licenses").glob(".tmp-*"))
    shown = cli("license", "show", "song", "--store", str(store), "--country", "SE", "--at", "2025-03-01")
    assert json.loads(shown.stdout.split("\n#", 1)[0])["track"] == "song"
    assert "refused (not licensed in territory); replacement song-se" in shown.stdout
    shown = cli("license", "show", "song", "--store", str(store), "--country", "GB", "--at", "2027-01-01")
    assert "refused (window closed)" in shown.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--allow", "GB,UK"], "'UK' is not a territory code"),
    (["--allow", "GB", "--deny", "WW"], "'WW' is not a territory code"),
    (["--allow", "GB", "--from", "2025-02-01", "--until", "2025-01-01"], "window is inverted"),
    (["--allow", "GB", "--from", "2025-02-01T10:00:00"], "has no time zone"),
    (["--allow", "GB", "--replacement", "SE"], "'SE' is not COUNTRY=TRACK"),
    (["--allow", "GB", "--replacement", "SE=missing"], "replacement for SE: unknown track 'missing'"),
    (["--allow", "GB", "--model", "Big Money"], "is not a label"),
])
def test_set_refuses_bad_input_and_writes_nothing(cli, store: Path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    result = cli("license", "set", "song", "--store", str(store), *args, check=False)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (store / "licenses").exists() or not list((store / "licenses").iterdir())


def test_set_unknown_track(cli, store: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("license", "set", "nope", "--store", str(store), "--allow", "GB", check=False)
    assert result.returncode == 1 and "unknown track 'nope'" in result.stderr


def test_set_replaces_atomically(cli, store: Path) -> None:  # type: ignore[no-untyped-def]
    cli("license", "set", "song", "--store", str(store), "--allow", "GB")
    before = (store / "licenses" / "song.json").read_bytes()
    cli("license", "set", "song", "--store", str(store), "--allow", "XX", check=False)
    assert (store / "licenses" / "song.json").read_bytes() == before
    cli("license", "set", "song", "--store", str(store), "--allow", "DE")
    assert read(store, "song").terms[0].allow == {"DE"}


GOOD_CSV = """\
track,allow,deny,from,until,model,replacement,refuse_anonymous,country_field
song,GB IE,,2025-01-01,2025-07-01,subscription,SE=song-se,false,
song,GB,,2025-07-01,,ad-supported,,,
other,WW,SE;NO,,,subscription,,true,registered_country
"""


def test_import(cli, store: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "licences.csv"
    csv.write_text(GOOD_CSV)
    result = cli("license", "import", str(csv), "--store", str(store))
    assert "wrote 2 licence record(s)" in result.stdout
    assert "/licenses/song.json /licenses/other.json" in result.stdout
    song = read(store, "song")
    assert [t.model for t in song.terms] == ["subscription", "ad-supported"]
    assert song.replacements == {"SE": "song-se"}
    other = read(store, "other")
    assert other.refuse_anonymous and other.country_field == "registered_country"
    assert other.terms[0].deny == {"SE", "NO"}


def test_import_lists_every_bad_line_and_writes_nothing(cli, store: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("license", "set", "song", "--store", str(store), "--allow", "GB")
    before = (store / "licenses" / "song.json").read_bytes()
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "track,allow,deny,from,until,model\n"
        "other,WW,,,,subscription\n"                      # line 2: fine on its own
        "song,GB DE,,2025-01-01,2025-12-31,\n"            # line 3: fine
        "song,DE,,2025-06-01,2026-06-01,\n"               # line 4: overlaps line 3 in DE
        "song,FR,,2025-06-01,2025-01-01,\n"               # line 5: inverted
        "ghost,GB,,,,\n"                                  # line 6: unknown track
        "other,GB UK,,,,\n"                               # line 7: unknown code
    )
    result = cli("license", "import", str(csv), "--store", str(store), check=False)
    assert result.returncode == 1
    err = result.stderr
    assert "nothing written" in err
    assert "line 4: window overlaps line 3 for song in DE" in err
    assert "line 5:" in err and "window is inverted" in err
    assert "line 6: unknown track 'ghost'" in err
    assert "line 7: allow: 'UK' is not a territory code" in err
    assert len(err.strip().splitlines()) == 5
    assert "line 2" not in err and "line 3:" not in err, err
    assert (store / "licenses" / "song.json").read_bytes() == before
    assert not (store / "licenses" / "other.json").exists()
    assert not list((store / "licenses").glob(".tmp-*"))


@pytest.mark.parametrize(("text", "message"), [
    ("track,allow,colour\nsong,GB,red\n", "line 1: bad header (unknown column(s) colour"),
    ("allow,model\nGB,x\n", "missing track or allow"),
    ("", "bad header"),
    ("track,allow\n", "no licence rows"),
    ("track,allow\nsong,GB,extra\n", "line 2: more fields than columns"),
    ("track,allow,refuse_anonymous\nsong,GB,maybe\n", "'maybe' is not true/false"),
    ("track,allow,replacement\nsong,GB,SE=song-se\nsong,GB,SE=other\n", "overlaps line 2"),
])
def test_import_bad_files(cli, store: Path, tmp_path: Path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    result = cli("license", "import", str(csv), "--store", str(store), check=False)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_import_conflicting_settings_and_binary_file(cli, store: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    csv = tmp_path / "bad.csv"
    csv.write_text("track,allow,from,until,replacement\nsong,GB,,2025-01-01,SE=song-se\nsong,GB,2025-01-01,,SE=other\n")
    result = cli("license", "import", str(csv), "--store", str(store), check=False)
    assert "line 3: replacements differs from line 2 for song" in result.stderr
    csv.write_bytes(b"\xff\xfe\x00garbage\x00")
    result = cli("license", "import", str(csv), "--store", str(store), check=False)
    assert result.returncode == 1 and "cannot read" in result.stderr
    result = cli("license", "import", str(tmp_path / "none.csv"), "--store", str(store), check=False)
    assert result.returncode == 1 and "no such file" in result.stderr


def test_show_missing_and_invalid(cli, store: Path) -> None:  # type: ignore[no-untyped-def]
    result = cli("license", "show", "song", "--store", str(store), check=False)
    assert result.returncode == 1 and "has no licence record" in result.stderr
    (store / "licenses").mkdir()
    (store / "licenses" / "song.json").write_text('{"track": "song", "terms": [{"allow": ["UK"]}]}')
    result = cli("license", "show", "song", "--store", str(store), check=False)
    assert result.returncode == 1 and "invalid record" in result.stderr and "'UK'" in result.stderr


def test_help_explains(cli) -> None:  # type: ignore[no-untyped-def]
    assert "WW" in cli("license", "--help").stdout
    assert "line numbers" in cli("license", "import", "--help").stdout


def test_shipped_example_csv_imports(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    for track in ("joga", "joga-radio-edit"):
        (store / "tracks" / track).mkdir(parents=True)
        (store / "tracks" / track / "track.json").write_text("{}")
    example = Path(__file__).resolve().parents[2] / "config" / "licenses" / "example.csv"
    cli("license", "import", str(example), "--store", str(store))
    assert read(store, "joga") == Licence.from_json((example.parent / "joga.json").read_bytes())
