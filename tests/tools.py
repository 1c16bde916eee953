"""System tools some tests need (a browser, proxies, a second TTS), found or reported alike.

On a developer's machine a missing tool skips only the tests that need it, with one line
naming it and how to get it (``make test`` installs them itself when it runs as root with
apt: ``.ci/system-deps``). Under CI (``CI=true``) nothing may be skipped: a missing tool
fails those tests instead.
"""

from __future__ import annotations

import os
import shutil

import pytest

SBIN = ("/usr/sbin", "/sbin")  # nginx and haproxy live there; a user's PATH may lack it


def which(tool: str) -> str | None:
    """``tool``'s path on PATH or in sbin, else ``None``."""
    return shutil.which(tool) or shutil.which(tool, path=os.pathsep.join(SBIN))


def on_ci() -> bool:
    return os.environ.get("CI") == "true"


def missing_reason(tool: str, package: str, what: str) -> str:
    return (
        f"{tool} not found: {what} skipped (install it: `sudo apt-get install {package}`,"
        " or run `make test` as root)"
    )


NEEDED: dict[str, str] = {}  # tool -> the reason its tests would skip


def needs(tool: str, *, package: str | None = None, what: str) -> pytest.MarkDecorator:
    """A mark for tests that need ``tool``: skipped when it is missing.

    Under CI the run stops before any test instead (tests/conftest.py), naming every tool
    that is missing.
    """
    reason = missing_reason(tool, package or tool, what)
    found = which(tool) is not None
    if not found:
        NEEDED[tool] = reason
    return pytest.mark.skipif(not found and not on_ci(), reason=reason)


def require(tool: str, *, package: str | None = None, what: str) -> None:
    """Inside a test: skip (or fail on CI) now when ``tool`` is missing."""
    if which(tool) is not None:
        return
    reason = missing_reason(tool, package or tool, what)
    if on_ci():
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)
