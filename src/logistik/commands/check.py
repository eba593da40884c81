"""`logistik check`: asks a running logistik's /readyz and says, in one line, what is wrong."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import click

from logistik.commands.console import EXIT_ERROR, optional_config


def readiness(base_url: str, timeout_s: float) -> tuple[bool, str]:
    """Whether the logistik at base_url is ready, and one line saying so or why not."""
    url = base_url.rstrip("/") + "/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"not ready: cannot reach {url}: {reason}"
    try:
        result = json.loads(body)
        checks = result["checks"]
    except (ValueError, KeyError, TypeError):
        return False, f"not ready: {url} did not answer as logistik does"
    if result.get("ready"):
        return True, "ready"
    failing = [f"{name}: {c.get('detail')}" for name, c in checks.items() if not c.get("ok")]
    return False, "not ready: " + "; ".join(failing)


@click.command()
@click.option("--url", help="Base URL of a running logistik (default: the config's web host/port).")
@click.option("--config", "config_file", metavar="FILE", help="YAML config naming the web port.")
@click.option("--timeout-s", type=float, default=5.0, show_default=True)
def check(url: str | None, config_file: str | None, timeout_s: float) -> None:
    """Exit 0 when a running logistik is ready (/readyz), 1 when it is not: for orchestrators.

    \b
    Example:
      logistik check --url http://127.0.0.1:5656 && echo ready
    """
    if url is None:
        web = optional_config(config_file).web
        url = f"http://{web.host}:{web.port}"
    ready, line = readiness(url, timeout_s)
    click.echo(line, err=not ready)
    sys.exit(0 if ready else EXIT_ERROR)
