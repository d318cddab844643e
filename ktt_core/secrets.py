"""Secrets never echoed: passwords in URLs are masked before any text reaches a user.

Database URLs (``--sql-url``, ``ktt tune --storage``) may hold ``user:password@``. Every
message, log line and metadata file that may contain such a URL goes through
:func:`mask_secrets`; the CLI applies it to every error line as a last guard.
"""
from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@host  (the password is anything up to the last '@' of the authority)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<secret>[^\s/@]*(?:@[^\s/@]*)*)(?=@)")
# key=value pairs that name a secret, as in query strings and DSNs: password=..., token=...
_KEY_SECRET = re.compile(r"(?i)(?P<head>\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)=)"
                         r"(?P<secret>[^\s&;,'\"]+)")


def mask_secrets(text: str) -> str:
    """``text`` with URL passwords and ``password=...``-style values replaced by ``***``."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _KEY_SECRET.sub(lambda m: m.group("head") + MASK, text)


# A whole URL, as SQLAlchemy reads it: the password runs to the last '@' before the query,
# so it may hold a '/', which the free-text rule above cannot tell from a path.
_WHOLE_URL_PASSWORD = re.compile(r"^(?P<head>\s*[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@?#]*:)(?P<secret>[^\s?#]*)(?=@)")


def mask_url(url: str | None) -> str | None:
    """A URL fit to show or store: its password (if any) replaced by ``***``."""
    if url is None:
        return None
    return mask_secrets(_WHOLE_URL_PASSWORD.sub(lambda m: m.group("head") + MASK, str(url), count=1))
