"""The system packages the tests need, and the one command that installs the missing ones."""

from __future__ import annotations

import glob
import os
import shutil

CHROMIUM = os.environ.get("LK_TEST_CHROMIUM", "/usr/bin/chromium")


def missing_packages() -> list[str]:
    """Debian/Ubuntu packages of the services the tests start that this machine lacks."""
    missing = []
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb") and not shutil.which("initdb"):
        missing.append("postgresql")
    if not shutil.which("redis-server"):
        missing.append("redis-server")
    if not os.path.exists(CHROMIUM):
        missing.append("chromium")
    if not shutil.which("java"):
        missing.append("openjdk-17-jre-headless")
    if not shutil.which("mvn"):
        missing.append("maven")
    return missing


def install_hint(*packages: str) -> str:
    """The command that installs packages (every missing one when none are named)."""
    wanted = packages or tuple(missing_packages())
    return f"sudo apt-get install {' '.join(wanted)}"


def needs(what: str, *packages: str) -> str:
    """One line saying what a test needs and how to install it."""
    return f"{what} not found: install it with `{install_hint(*packages)}` (.ci/run does)"
