"""A small client of the predictor's HTTP API (what ``flowlearn predict`` calls)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify the predictor's certificate against the system's CAs and, when given,
    ``ca_file``, whose certificates are trusted as they are: the predictor's own
    self-signed certificate (``predictor.tls_cert_file``) works."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
        # A certificate in ca_file anchors trust itself, without the root that signed it.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def predict(
    url: str,
    model_id: str,
    instances: list[Any],
    timeout: float = 5.0,
    *,
    token: str | None = None,
    ca_file: str | None = None,
) -> dict[str, Any]:
    """POST ``instances`` to ``{url}/v1/models/{model_id}:predict``; the answer as a dict.

    ``token`` goes as ``Authorization: Bearer``; an ``https`` URL is verified as
    :func:`tls_context` says. An HTTP error answers ``{"error": message, "status": code}``;
    a predictor that cannot be reached within ``timeout`` seconds answers
    ``{"error": ..., "status": None}``.
    """
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"{url.rstrip('/')}/v1/models/{model_id}:predict",
        method="POST",
        data=json.dumps({"instances": instances}).encode(),
        headers=headers,
    )
    context = tls_context(ca_file) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
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
