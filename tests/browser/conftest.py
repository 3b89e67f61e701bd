"""Fixtures for the real-browser player tests: the test page server and one Chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_harness import Browser, PageServer, missing_prerequisites


@pytest.fixture(scope="session")
def browser_prerequisites() -> None:
    missing = missing_prerequisites()
    if missing:
        pytest.fail(
            "browser tests need " + ", ".join(missing) + "; `make test` installs them",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def page_url(browser_prerequisites: None) -> Iterator[str]:
    """Base URL of the test page and the player libraries (127.0.0.1, its own port)."""
    with PageServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def browser(browser_prerequisites: None) -> Iterator[Browser]:
    session = Browser()
    try:
        yield session
    finally:
        session.close()
