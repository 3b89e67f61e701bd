"""Shared fixtures: real sample audio, a real packaged store, a real origin process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from packager.samples import write_sample

REPO = Path(__file__).resolve().parent.parent
SHARED_TESTDATA = REPO.parent / "shared" / "testdata"


def legato(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the `legato` command as a user would (same interpreter, no shell)."""
    return subprocess.run(
        [sys.executable, "-m", "legato.cli", *args],
        capture_output=True, text=True, check=check, timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def cli():  # type: ignore[no-untyped-def]
    """The `legato` runner above, for tests: ``cli("package", ...)``."""
    return legato


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("samples")


@pytest.fixture(scope="session")
def source_track(sample_dir: Path) -> Path:
    """A 20-second, 44.1 kHz stereo FLAC with tags: the standard test source."""
    return write_sample(sample_dir / "sunrise.flac", 20.0, style="sunrise", title="Sunrise")


@pytest.fixture(scope="session")
def packaged_store(tmp_path_factory: pytest.TempPathFactory, source_track: Path) -> Path:
    """A store with `source_track` packaged under the track id 'sunrise'."""
    store = tmp_path_factory.mktemp("store")
    legato("package", str(source_track), "--store", str(store), "--track-id", "sunrise")
    return store


@pytest.fixture(scope="session")
def packaged_track(packaged_store: Path) -> tuple[Path, str]:
    return packaged_store, "sunrise"


from collections.abc import Iterator

from servers import run_origin


@pytest.fixture(scope="session")
def origin_url(packaged_store: Path) -> Iterator[str]:
    """Base URL of a real `legato origin` process serving `packaged_store` (127.0.0.1, own port)."""
    with run_origin(packaged_store) as url:
        yield url
