"""Shared fixtures: real sample audio, a real packaged store, a real origin process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
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


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs("2m")``: a real tmpfs of that size (a disk that fills up), unmounted at teardown.

    Mounting needs root; elsewhere the test is skipped with the reason.
    """
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        path = tmp_path / f"tmpfs-{len(mounts)}"
        path.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


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
    legato("package", str(source_track), "--store", str(store), "--track-id", "sunrise", "--protect", "none")
    return store


@pytest.fixture(scope="session")
def packaged_track(packaged_store: Path) -> tuple[Path, str]:
    return packaged_store, "sunrise"



from servers import run_origin


@pytest.fixture(scope="session")
def origin_url(packaged_store: Path) -> Iterator[str]:
    """Base URL of a real `legato origin` process serving `packaged_store` (127.0.0.1, own port)."""
    with run_origin(packaged_store) as url:
        yield url
