"""Store URLs as they are shown in messages, logs and CLI output: never with a password."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

__all__ = ["hide_password", "redact_url"]

_MASK = "***"
_URL_IN_TEXT = re.compile(r"[^\s'\"]*://[^\s'\"]*")
# Query parameters that carry a password (libpq and SQLAlchemy accept `?password=`).
_SECRET_PARAM = re.compile(r"([?&](?:password|passwd|pwd|pass|secret)=)([^&#\s'\"]*)", re.I)


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password in `url`'s userinfo starts and ends, if it has a non-empty one.

    The userinfo ends at the last '@' before the authority ends. An unescaped '/',
    '?', '#' or '@' in a password makes parsers disagree (SQLAlchemy reads a password
    up to the first '@', urllib a host up to the first '/'); this span covers what
    either would take for the password, and when in doubt it hides more.
    """
    scheme_end = url.find("://")
    start = 0 if scheme_end < 0 else scheme_end + 3  # "user:pw@host" without a scheme, too
    first_at = url.find("@", start)
    if first_at < 0:
        return None
    ends = [i for i in (url.find(c, first_at) for c in "/?#") if i >= 0]
    last_at = url.rfind("@", start, min(ends, default=len(url)))
    colon = url.find(":", start, last_at)
    if colon < 0 or "/" in url[start:colon] or colon + 1 == last_at:
        return None  # no password, or the ':' is in a path
    return colon + 1, last_at


def redact_url(url: str) -> str:
    """`url` with its password (in the userinfo or a `password=` query parameter)
    replaced by `***`; unchanged without one."""
    span = _password_span(url)
    if span is not None:
        url = url[: span[0]] + _MASK + url[span[1] :]
    return _SECRET_PARAM.sub(lambda match: match[1] + _MASK if match[2] else match[0], url)


def hide_password(text: str, url: str) -> str:
    """`text` (a driver's error message, say) without `url`'s password.

    URLs quoted in `text` are redacted, however the driver re-encoded them, and the
    password itself is masked wherever else it appears, as written or percent-decoded.
    """
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match[0]), text)
    span = _password_span(url)
    secrets = [url[span[0] : span[1]]] if span is not None else []
    secrets += [match[2] for match in _SECRET_PARAM.finditer(url) if match[2]]
    public = redact_url(url)
    for written in secrets:
        decoded = unquote(written)
        if decoded in public or len(decoded) < 4:
            # A password that is also the user name, part of the scheme or host
            # (`postgres:postgres@`), or a few letters, is no secret to the rest of
            # the message: masking it there would only garble words like `postgresql`.
            continue
        for form in sorted({written, decoded, quote(decoded, safe="")}, key=len, reverse=True):
            text = re.sub(rf"(?<![\w-]){re.escape(form)}(?![\w-])", _MASK, text)
    return text
