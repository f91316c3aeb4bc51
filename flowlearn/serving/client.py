"""A small client of the predictor's HTTP API (what ``flowlearn predict`` calls)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def predict(url: str, model_id: str, instances: list[Any], timeout: float = 5.0) -> dict[str, Any]:
    """POST ``instances`` to ``{url}/v1/models/{model_id}:predict``; the answer as a dict.

    An HTTP error answers ``{"error": message, "status": code}``; a predictor that cannot be
    reached within ``timeout`` seconds answers ``{"error": ..., "status": None}``.
    """
    req = urllib.request.Request(
        f"{url.rstrip('/')}/v1/models/{model_id}:predict",
        method="POST",
        data=json.dumps({"instances": instances}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read() or b"{}").get("error", str(exc))
        except ValueError:
            message = str(exc)
        return {"error": message, "status": exc.code}
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return {"error": f"predictor at {url} unreachable: {exc}", "status": None}
