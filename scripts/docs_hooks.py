"""MkDocs hooks for the documentation site (mkdocs.yml: `hooks`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# `--8<-- "benchmarks/README.md"` alone on a line: that file of the repository, here.
INCLUDE = re.compile(r'^--8<-- "([^"]+)"[ \t]*$', re.MULTILINE)
# A link written from a file outside docs/ to a page in it: `](../docs/page.md#part)`
# from benchmarks/, `](docs/page.md)` from the repository's root (SECURITY.md).
_INTO_DOCS = re.compile(r"\]\((?:\.\./)*docs/")


def include(markdown: str) -> str:
    """The page with its `--8<--` lines replaced by the files they name, whose links
    into docs/ are made relative to the site's pages."""
    return INCLUDE.sub(lambda match: _INTO_DOCS.sub("](", (ROOT / match[1]).read_text()), markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return include(markdown)
