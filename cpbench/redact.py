"""Secrets out of everything cpbench writes: URLs, options, free text.

One redactor for the whole tool: the target URL and every scraped ``/metrics`` URL lose
``user:password@`` and the values of key/token/secret query parameters wherever they are
stored (results metadata, summary, manifest, monitor data, reports, log lines); option values
whose names look secret, ``Bearer`` tokens and the values of secret-named environment
variables are replaced by ``<redacted>``.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

REDACTED = "<redacted>"
# Names (of query parameters, options, environment variables) whose values are secrets.
# Whole name segments only, so `max_tokens` and `output_tokens` are not taken for secrets.
SECRET_NAME = re.compile(r"(^|[_.-])(api-?key|apikey|key|token|secret|passw(or)?d|auth|"
                         r"authorization|credentials?|signature|sig|cookie)($|[_.-])", re.I)
_BEARER = re.compile(r"\b(Bearer|Basic|Token)\s+[^\s\"',;]+", re.I)
_MIN_SECRET_LEN = 6


def redact_url(url: str | None) -> str | None:
    """``url`` without ``user:password@`` and without secret-named query parameters.

    Parameters named like a key, token, secret, password or signature keep their name with
    the value ``<redacted>`` (so a reader sees one was given); the rest are kept as they were.
    Text that does not parse as a URL is returned unchanged.

    >>> redact_url("http://bob:pw@host:8000/v1?api_key=sk-1&x=2")
    'http://host:8000/v1?api_key=<redacted>&x=2'
    """
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError:
        return url
    try:
        port = parts.port
    except ValueError:      # a port out of range: the rest is still redacted
        port = None
    netloc = parts.netloc
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
        if host is not None and not netloc:
            netloc = host + (f":{port}" if port else "")
    query = parts.query
    if query:
        # Piece by piece, so the parameters that stay keep their exact original spelling.
        pieces = []
        for piece in query.split("&"):
            name = urllib.parse.unquote_plus(piece.split("=", 1)[0])
            pieces.append(f"{piece.split('=', 1)[0]}={REDACTED}"
                          if SECRET_NAME.search(name) else piece)
        query = "&".join(pieces)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _env_secrets() -> list[str]:
    values = [v for k, v in os.environ.items()
              if SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN]
    return sorted(set(values), key=len, reverse=True)


def scrub(value: Any, *, secrets: list[str] | None = None, name: str = "") -> Any:
    """A JSON-able copy of ``value`` with secrets removed (see the module docstring)."""
    secrets = _env_secrets() if secrets is None else secrets
    if name and SECRET_NAME.search(name) and value not in (None, False, True, "", [], {}):
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): scrub(v, secrets=secrets, name=str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [scrub(v, secrets=secrets) for v in items]
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return value
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str):
        text = getattr(text, "__name__", None) or repr(text)
    if "://" in text:
        text = re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"']+",
                      lambda m: redact_url(m.group(0)) or "", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text
