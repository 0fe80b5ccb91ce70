"""Properties of the parsers and builders that read attacker input, checked by Hypothesis.

Each test states a property for every input of a family, not for a few chosen
ones; the `apiguard` profile (tests/conftest.py) makes the examples the same on
every run, and the example count of each test is the `max_examples` beside it
(docs/robustness.md adds them up).
"""

from __future__ import annotations

import base64
import json
import re
import string
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from apiguard import InvalidCredentials, InvalidRequest, InvalidToken
from apiguard._challenge import build_challenge
from apiguard._credentials import read_bearer, read_headers, read_query
from apiguard.exceptions import ConfigurationError
from apiguard.keys.format import (
    BASE62,
    CHECKSUM_LENGTH,
    KEY_ID_LENGTH,
    SECRET_LENGTH,
    ParsedKey,
    format_key,
    generate_key,
    parse_key,
)
from apiguard.policies import parse_requirement, route_path, validate_scopes
from apiguard.tokens import TokenInfo
from apiguard.tokens.info import MAX_SCOPES, scopes_from_claims
from apiguard.tokens.jwks import _segment, looks_like_jwt
from apiguard.types import Scope

# --- strategies -------------------------------------------------------------------

prefixes = st.from_regex(r"[a-z][a-z0-9]{1,15}", fullmatch=True)
key_ids = st.text(BASE62, min_size=KEY_ID_LENGTH, max_size=KEY_ID_LENGTH)
secrets_ = st.text(BASE62, min_size=SECRET_LENGTH, max_size=SECRET_LENGTH)
# RFC 9110 §5.6.2: tchar.
TCHAR = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
tokens = st.text(TCHAR, min_size=1, max_size=20)
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_CHARS = "".join(chr(c) for c in [0x21, *range(0x23, 0x5C), *range(0x5D, 0x7F)])
scope_tokens = st.text(SCOPE_CHARS, min_size=1, max_size=12)
# Header bytes as a server passes them: any byte but CR, LF and NUL in the value.
header_values = st.binary(max_size=80).map(lambda b: bytes(c for c in b if c not in b"\r\n\0"))


# --- API keys: keys/format.py -----------------------------------------------------


@settings(max_examples=300)
@given(prefixes, key_ids, secrets_)
def test_key_format_round_trip(prefix: str, key_id: str, secret: str) -> None:
    """Every well-formed key parses back to its parts, and only with its own prefix."""
    value = format_key(prefix, key_id, secret)
    assert parse_key(value, prefixes=[prefix]) == ParsedKey(prefix, key_id, secret)
    assert len(value) == len(prefix) + 2 + KEY_ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH


@settings(max_examples=500)
@given(prefixes, key_ids, secrets_, st.data())
def test_key_any_single_character_change_is_refused(
    prefix: str, key_id: str, secret: str, data: st.DataObject
) -> None:
    """CRC32 catches every one-character substitution (a burst shorter than 32 bits),
    and the fixed layout every deletion and insertion: no such key reaches the store."""
    value = format_key(prefix, key_id, secret)
    index = data.draw(st.integers(0, len(value) - 1), label="index")
    replacement = data.draw(st.characters().filter(lambda c: c != value[index]), label="char")
    edit = data.draw(st.sampled_from(["substitute", "delete", "insert"]), label="edit")
    if edit == "substitute":
        changed = value[:index] + replacement + value[index + 1 :]
    elif edit == "delete":
        changed = value[:index] + value[index + 1 :]
    else:
        changed = value[:index] + replacement + value[index:]
    with pytest.raises(InvalidCredentials):
        parse_key(changed, prefixes=[prefix])


@settings(max_examples=300)
@given(st.text(max_size=120) | st.text(BASE62 + "_", max_size=120))
def test_parse_key_refuses_anything_else_as_invalid_credentials(value: str) -> None:
    """Arbitrary text is refused with `InvalidCredentials` (401), never another error,
    and the refusal holds no part of the value."""
    try:
        parsed = parse_key(value)
    except InvalidCredentials as exc:
        reason = exc.reason
    else:  # pragma: no cover - a random checksum matches once in 2**32
        assert format_key(parsed.prefix, parsed.key_id, parsed.secret) == value
        return
    assert reason in {"malformed", "unknown prefix", "bad checksum"}


def test_generated_keys_parse() -> None:
    key = generate_key()
    assert parse_key(key.value) == ParsedKey(key.prefix, key.key_id, key.secret)


# --- credential headers: _credentials.py ------------------------------------------

NAMES = frozenset({b"x-api-key", b"authorization"})


def _scope(headers: list[tuple[bytes, bytes]], query: bytes = b"") -> Scope:
    return {"type": "http", "headers": headers, "query_string": query, "path": "/"}


header_names = st.sampled_from([b"x-api-key", b"authorization", b"x-other", b"cookie"])


@settings(max_examples=300)
@given(st.lists(st.tuples(header_names, header_values), max_size=6))
def test_read_headers_finds_the_one_credential_or_refuses_two(
    headers: list[tuple[bytes, bytes]],
) -> None:
    """RFC 9110 §5.3 / RFC 6750 §3.1: one credential header is read; two are refused."""
    sent = [value for name, value in headers if name in NAMES]
    if len(sent) > 1:
        with pytest.raises(InvalidRequest):
            read_headers(_scope(headers), NAMES)
    else:
        assert read_headers(_scope(headers), NAMES) == (sent[0] if sent else None)


@settings(max_examples=300)
@given(
    st.lists(st.booleans(), min_size=6, max_size=6).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip("bearer", upper, strict=True))
    ),
    st.integers(1, 4),
    st.binary(min_size=1, max_size=60).map(lambda b: b.lstrip(b" ") or b"t"),
)
def test_read_bearer_takes_the_token_after_a_case_insensitive_scheme(
    scheme: str, spaces: int, token: bytes
) -> None:
    """RFC 9110 §11.1: the scheme is case-insensitive; RFC 6750 §2.1: `Bearer 1*SP token`."""
    value = scheme.encode() + b" " * spaces + token
    assert read_bearer(_scope([(b"authorization", value)])) == token


@settings(max_examples=300)
@given(header_values)
def test_read_bearer_on_any_authorization_value(value: bytes) -> None:
    """Any header value gives a non-empty token, `None` (another scheme), or 400."""
    try:
        token = read_bearer(_scope([(b"authorization", value)]))
    except InvalidRequest:
        assert value.partition(b" ")[0].lower() == b"bearer"
        return
    if token is None:
        assert value.partition(b" ")[0].lower() != b"bearer"
    else:
        assert token
        assert not token.startswith(b" ")
        assert value.endswith(token)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["api_key", "x", "a"]), st.text(max_size=8)), max_size=5))
@example([("api_key", "\u20ac")])  # percent-encoded UTF-8 beyond latin-1
def test_read_query_finds_the_one_parameter_or_refuses_two(pairs: list[tuple[str, str]]) -> None:
    """The key's bytes as sent (percent-decoded), or 400 for two."""
    query = urlencode(pairs).encode()
    sent = [v.encode() for k, v in pairs if k == "api_key"]
    if len(sent) > 1:
        with pytest.raises(InvalidRequest):
            read_query(_scope([], query), "api_key")
    else:
        assert read_query(_scope([], query), "api_key") == (sent[0] if sent else None)


# --- JOSE header pre-parsing: tokens/jwks.py --------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_jose_header_segment_round_trip(header: dict[str, Any]) -> None:
    """A JSON object header, base64url without padding (RFC 7515 §2), decodes to itself."""
    token = f"{_b64(json.dumps(header).encode())}.e30.c2ln"
    assert _segment(token, 0, "malformed header") == header


@settings(max_examples=500)
@given(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=200))
@example("W" * 100)  # '[[[...' deep-ish nesting
@example(_b64(b"[" * 5000))  # too deep for the JSON decoder: RecursionError
@example(_b64(b"\xff\xfe"))  # not UTF-8
def test_jose_header_segment_of_any_base64url_text(part: str) -> None:
    """Any segment decodes to a JSON object or is `InvalidToken` (401), nothing else."""
    try:
        value: object = _segment(f"{part}.e30.c2ln", 0, "malformed header")
    except InvalidToken as exc:
        value = exc.reason
    assert isinstance(value, dict) or value == "malformed header"


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_looks_like_jwt_only_for_compact_jws(token: str) -> None:
    """RFC 7515 §7.1: three base64url parts, the first a JSON object (`eyJ`)."""
    if looks_like_jwt(token):
        parts = token.split(".")
        assert len(parts) == 3
        assert all(re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in parts)
        assert token.startswith("eyJ")


# --- scopes: policies.py, tokens/info.py ------------------------------------------


@settings(max_examples=300)
@given(st.lists(st.text(max_size=8), max_size=5))
def test_validate_scopes_accepts_exactly_rfc6749_scope_tokens(scopes: list[str]) -> None:
    """RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )."""
    valid = all(s and all(c in SCOPE_CHARS for c in s) for s in scopes)
    if valid:
        assert validate_scopes(scopes) == frozenset(scopes)
    else:
        with pytest.raises(ConfigurationError):
            validate_scopes(scopes)


@settings(max_examples=300)
@given(
    st.lists(
        st.lists(scope_tokens.filter(lambda s: "|" not in s), min_size=1, max_size=4),
        min_size=1,
        max_size=4,
    )
)
def test_scope_requirement_round_trip(alternatives: list[list[str]]) -> None:
    """`"a b | c"` parses to the alternatives it was written from."""
    text = " | ".join(" ".join(alternative) for alternative in alternatives)
    assert parse_requirement(text) == tuple(frozenset(a) for a in alternatives)


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(max_size=60),
        st.lists(st.text(max_size=8) | st.integers(), max_size=10),
        json_values,
    )
)
def test_scopes_from_any_claim_value(value: Any) -> None:
    """A `scope` claim of any shape yields at most MAX_SCOPES non-empty scopes without spaces."""
    scopes = scopes_from_claims(
        {"scope": value, "nested": {"roles": value}}, ["scope", "nested.roles"]
    )
    assert len(scopes) <= MAX_SCOPES
    for scope in scopes:
        assert isinstance(scope, str)
        assert scope
        assert " " not in scope
    if isinstance(value, str):
        assert scopes == frozenset(value.split())


@settings(max_examples=500)
@given(
    st.dictionaries(
        st.sampled_from(["aud", "exp", "iat", "sub", "client_id", "scope", "cnf", "iss", "x"]),
        json_values | st.floats(allow_nan=True),
    )
)
@example({"aud": 4102444800})
def test_token_info_from_any_claims(claims: dict[str, Any]) -> None:
    """An introspection answer or verified JWT of any shape is a `TokenInfo` or a 401."""
    reason: str | None = None
    try:
        info = TokenInfo.from_claims({"active": True, **claims})
    except InvalidToken as exc:
        reason = exc.reason
    if reason is not None:
        assert reason == "malformed time claim"
        return
    assert all(isinstance(a, str) for a in info.audience)
    assert all(isinstance(s, str) for s in info.scopes)


def test_scopes_from_claims_are_capped() -> None:
    scopes = scopes_from_claims({"scope": " ".join(f"s{i}" for i in range(1000))}, ["scope"])
    assert len(scopes) == MAX_SCOPES


# --- path normalization: policies.route_path --------------------------------------


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, then empty segments collapsed, as routers and StaticFiles resolve."""
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    trailing = "/" if path.endswith(("/", "/.", "/..")) and out else ""
    return "/" + "/".join(out) + trailing


paths = st.lists(
    st.sampled_from(["", ".", "..", "public", "private", "x", ".hidden", "...", "a.b"]),
    min_size=1,
    max_size=6,
).map(lambda segments: "/" + "/".join(segments))


@settings(max_examples=500)
@given(paths, st.sampled_from(["", "/app", "/app/"]))
def test_route_path_accepts_only_paths_in_normal_form(path: str, root: str) -> None:
    """A path accepted for prefix matching names what the router resolves it to
    (RFC 3986 §5.2.4): no exclusion or rule can be reached around."""
    full = (root.rstrip("/") + path) if root else path
    reason: str | None = None
    try:
        matched = route_path({"type": "http", "path": full, "root_path": root.rstrip("/")})
    except InvalidRequest as exc:
        reason = exc.reason
    if reason is not None:
        assert reason == "path not in normal form"
        assert remove_dot_segments(path) != path
        return
    assert matched == path
    assert remove_dot_segments(matched) == matched or matched.endswith("/")
    for prefix in ("/public/", "/private/"):
        assert matched.startswith(prefix) == remove_dot_segments(matched).startswith(prefix)


# --- WWW-Authenticate: _challenge.build_challenge --------------------------------

_TOKEN = rf"[{re.escape(TCHAR)}]+"
# RFC 9110 §5.6.4, without obs-text: qdtext and quoted-pair.
_QUOTED = r'"((?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*)"'
_PARAM = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*(?:({_TOKEN})|{_QUOTED})")
_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


def parse_challenge(text: str) -> tuple[str, list[tuple[str, str]]]:
    """A strict parser of one RFC 9110 §11.6.1 challenge with auth-params.

    challenge = auth-scheme [ 1*SP #auth-param ];
    auth-param = token BWS "=" BWS ( token / quoted-string ).
    """
    scheme = re.match(_TOKEN, text)
    assert scheme is not None, text
    position = scheme.end()
    params: list[tuple[str, str]] = []
    if position == len(text):
        return scheme.group(), params
    spaces = re.compile(r" +").match(text, position)
    assert spaces is not None, text
    position = spaces.end()
    while True:
        param = _PARAM.match(text, position)
        assert param is not None, (text, position)
        name, token, quoted = param.groups()
        value = token if token is not None else re.sub(r"\\(.)", r"\1", quoted)
        params.append((name, value))
        position = param.end()
        if position == len(text):
            return scheme.group(), params
        separator = _SEPARATOR.match(text, position)
        assert separator is not None, (text, position)
        position = separator.end()


def _kept(value: str) -> str:
    # RFC 6750 §3: the characters a quoted value keeps.
    return "".join(
        c for c in value if c in "\x20\x21" or "\x23" <= c <= "\x5b" or "\x5d" <= c <= "\x7e"
    )


@settings(max_examples=500)
@given(
    tokens,
    st.none() | st.text(max_size=30),
    st.none() | st.text(max_size=30),
    st.none() | st.text(max_size=60),
    st.lists(scope_tokens, max_size=4),
    st.lists(st.tuples(tokens, st.text(max_size=30)), max_size=3),
)
@example("Bearer", 'a"b\\c', "invalid_token", 'x"\r\nSet-Cookie: a=b\\', [], [])
def test_challenge_is_always_a_valid_rfc9110_challenge(
    scheme: str,
    realm: str | None,
    error: str | None,
    description: str | None,
    scopes: list[str],
    extra: list[tuple[str, str]],
) -> None:
    """Whatever the values (a realm from configuration, a description naming request
    data), the header is one RFC 9110 §11.6.1 challenge: no CR, LF or control
    character, no quote or backslash from the input, and it parses back to its params."""
    header = build_challenge(
        scheme, realm, error=error, description=description, scope=scopes, extra=extra
    )
    assert header.isascii()
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in header)
    expected: list[tuple[str, str]] = []
    if realm is not None:
        expected.append(("realm", _kept(realm)))
    if scopes:
        expected.append(("scope", _kept(" ".join(scopes))))
    if error is not None:
        expected.append(("error", _kept(error)))
        if description:
            expected.append(("error_description", _kept(description)))
    expected.extend((name, _kept(value)) for name, value in extra)
    assert parse_challenge(header) == (scheme, expected)


@pytest.mark.parametrize(
    "header",
    [
        'Bearer realm="a"b"',
        'Bearer realm="a\r\nb"',
        "Bearer realm=a b",
        'Bearer realm="a",',
        "Bearer  , realm=x",
        'Bearer realm="\\"',
    ],
)
def test_the_strict_challenge_parser_refuses_invalid_challenges(header: str) -> None:
    """The parser above is strict enough to catch a broken challenge."""
    with pytest.raises(AssertionError):
        parse_challenge(header)


def test_the_strict_challenge_parser_reads_quoted_pairs() -> None:
    assert parse_challenge('Basic realm="a\\"b", charset=UTF-8') == (
        "Basic",
        [("realm", 'a"b'), ("charset", "UTF-8")],
    )
