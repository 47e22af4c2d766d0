"""Credentials never recorded: the one redaction of URIs (and of every URI inside a config) before anything is
logged, written or printed.

A tracking URI may carry a secret (`https://user:<token>@host`, `...?token=...`, a presigned `X-Amz-Signature`): the
userinfo and the values of secret-looking query parameters become `***`; the rest (scheme, host, path, the other
parameters) stays, so the record still says which store was used. Standard library only: the workflow loads this
file by its path (workflow/rules/common.smk) to redact the config it passes to the steps, and the package's
tracking and provenance modules import it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"
# Query parameter names whose values are secrets (case-insensitive; `-`/`_` are the same).
SECRET_PARAMETER = re.compile(
    r"token|passw|pwd|secret|signature|credential|api_?key|access_?key|private_?key|auth|session|^sig$|^key$|^code$",
    re.IGNORECASE,
)


def redact_uri(uri: str) -> str:
    """`uri` without credentials: userinfo and secret query parameter values replaced by `***`."""
    if not isinstance(uri, str) or ("@" not in uri and "?" not in uri):
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:  # not a URI (e.g. an unbalanced '[' in the host): keep nothing after the scheme
        return uri.split(":", 1)[0] + ":" + MASK if ":" in uri else MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(_redact_parameter(item) for item in parts.query.split("&"))
    head = f"{parts.scheme}:" if parts.scheme else ""
    if uri[len(head):].startswith("//"):  # kept as written: sqlite:///relative.db has an empty host
        head += f"//{netloc}"
    return head + parts.path + (f"?{query}" if "?" in uri else "") + (f"#{parts.fragment}" if parts.fragment else "")


def _redact_parameter(item: str) -> str:
    name, sep, value = item.partition("=")
    if sep and value and SECRET_PARAMETER.search(name.replace("-", "_")):
        return f"{name}={MASK}"
    return item


def redact(value):
    """A copy of `value` (a config, a list, a string) with every string that holds a URI redacted (redact_uri)."""
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item) for item in value)
    if isinstance(value, str) and ("://" in value or value.startswith(("sqlite:", "postgresql:", "mysql:"))):
        return redact_uri(value)
    return value
