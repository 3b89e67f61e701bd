"""legato.config: TOML into frozen dataclasses, errors naming the key path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from legato.config import ConfigError, build, describe, load
from origin.config import OriginConfig
from packager.ladder import DEFAULT_RENDITIONS, LadderConfig

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_load_and_equal_defaults() -> None:
    assert load(LadderConfig, REPO / "config" / "ladder.toml") == LadderConfig()
    assert load(OriginConfig, REPO / "config" / "origin.toml") == dataclasses.replace(OriginConfig(),
                                                                                      store=Path("store"))
    assert LadderConfig().rendition == DEFAULT_RENDITIONS


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LadderConfig().segment_duration = 4.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"segment_duraton": 6.0}, "segment_duraton: unknown key"),
        ({"segment_duration": "6"}, "segment_duration: expected a number"),
        ({"loudness": {"target_lufs": True}}, "loudness.target_lufs: expected a number"),
        ({"loudness": {"ceiling": -1}}, "loudness.ceiling: unknown key"),
        ({"rendition": [{"id": "a", "codec": "aac", "bitrate": 96000}, {"id": "b", "codec": "opus"}]},
         "rendition[1]"),
        ({"rendition": [{"id": "a", "codec": "aac", "bitrate": "96k"}]}, "rendition[0].bitrate: expected an integer"),
        ({"rendition": {"id": "a"}}, "rendition: expected an array"),
        ({"segment_duration": 0.1}, "segment_duration 0.1 outside"),
    ],
)
def test_bad_ladder_names_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build(LadderConfig, data)


def test_bad_file_names_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "origin.toml"
    f.write_text('listen = "127.0.0.1:8080"\n[cache_control]\nsegment_max_age = "long"\n')
    with pytest.raises(ConfigError, match=r"origin\.toml: cache_control\.segment_max_age: expected an integer"):
        load(OriginConfig, f)
    f.write_text("listen = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(OriginConfig, f)
    with pytest.raises(ConfigError, match="no such config file"):
        load(OriginConfig, tmp_path / "missing.toml")


def test_every_setting_has_help() -> None:
    for cls in (LadderConfig, OriginConfig):
        for path, help_text, _ in describe(cls):
            assert help_text, f"{cls.__name__}.{path} has no help"
