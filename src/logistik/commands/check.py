"""`logistik check`: asks a running logistik's /readyz and says, in one line, what is wrong."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


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
