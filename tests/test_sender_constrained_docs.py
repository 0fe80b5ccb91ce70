"""docs/sender-constrained.md: its code runs and it names every option there is."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette

from apiguard import DPoPAuth, ProtectedResourceMetadata
from apiguard.tokens import ClientCertificates, DPoPNonces, MemoryReplayStore, RedisReplayStore

from .token_support import TableIntrospector

PAGE = (Path(__file__).resolve().parent.parent / "docs" / "sender-constrained.md").read_text()
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[str]:
    return [match[2] for match in BLOCK.finditer(PAGE) if match[1] == "python"]


def keyword_names(function: Callable[..., Any]) -> set[str]:
    skip = {"self", "clock", "client_options", "client"}
    return set(inspect.signature(function).parameters) - skip


@pytest.mark.parametrize(
    ("owner", "names"),
    [
        ("DPoPAuth", keyword_names(DPoPAuth.__init__)),
        ("ClientCertificates", keyword_names(ClientCertificates.__init__)),
        ("ProtectedResourceMetadata", keyword_names(ProtectedResourceMetadata.__init__)),
        ("DPoPNonces", keyword_names(DPoPNonces.__init__)),
        ("MemoryReplayStore", keyword_names(MemoryReplayStore.__init__)),
        ("RedisReplayStore", keyword_names(RedisReplayStore.from_url)),
    ],
)
def test_every_option_is_documented(owner: str, names: set[str]) -> None:
    spans = re.findall(r"`([^`]+)`", BLOCK.sub("", PAGE))
    missing = {n for n in names if not any(re.search(rf"\b{n}\b", span) for span in spans)}
    assert not missing, f"{owner} options missing from the page: {sorted(missing)}"


def test_examples_run() -> None:
    """The examples build a working configuration (nothing is contacted until a request)."""
    namespace: dict[str, Any] = {"app": Starlette(), "introspector": TableIntrospector()}
    for code in python_blocks():
        exec(compile(code, "docs/sender-constrained.md", "exec"), namespace)  # noqa: S102
    assert isinstance(namespace["dpop"], DPoPAuth)
    assert namespace["metadata"].url == (
        "https://api.example/.well-known/oauth-protected-resource/items"
    )
