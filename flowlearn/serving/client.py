"""A small client of the predictor's HTTP API (what ``flowlearn predict`` uses)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def predict(url: str, model_id: str, instances: list[Any], timeout: float = 5.0
            ) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/v1/models/{model_id}:predict", method="POST",
        data=json.dumps({"instances": instances}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer: dict[str, Any] = json.loads(resp.read())
            return answer
    except urllib.error.HTTPError as exc:
        return {"error": json.loads(exc.read() or b"{}").get("error", str(exc)),
                "status": exc.code}
