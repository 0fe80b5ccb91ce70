"""Every code block on the documentation site runs or is checked, and the site builds strict.

The pages are docs/**/*.md, with `--8<-- "path"` snippet lines expanded as the site
expands them. Per fenced block:

- ```python blocks run, in page order, in one namespace per page: the blocks of a
  page are one program, so a later block may use what an earlier one defined.
  Top-level `await` is allowed (the page runs in an event loop). Each page runs in
  an empty working directory with `APIGUARD_PEPPER` and `INTROSPECTION_SECRET` set,
  and a registry of its own as prometheus_client's default.
  A block whose first line is `# name.py` is also written to that file there, so a
  later block can import it. Whatever the page leaves with an `aclose()` is closed.
- ```console blocks: each `$ apiguard ...` line names a real command and real options.
- ```json blocks parse; ```toml and ```yaml blocks parse.

An HTML comment on the line before a fence changes that block:

- `<!-- test: setup NAME ... -->` runs the named SETUPS below first (an `app`, a
  `store`, ...): what a fragment assumes the reader already has.
- `<!-- test: skip REASON -->` only compiles the block; it is reported as skipped
  with its reason, and MAX_SKIPPED bounds how many there may be.

docs/CONTRIBUTING.md says the same for people writing pages.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

from apiguard.exceptions import AuthError

from .docs_support import (
    ROOT,
    Block,
    cli_lines,
    expand_snippets,
    fenced_blocks,
    refusal_classes,
    unknown_cli_words,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - coverage's `toml` extra installs tomli there
    import tomli as tomllib

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
MAX_SKIPPED = 3

SETUPS = {
    "starlette": "from starlette.applications import Starlette\napp = Starlette()",
    "fastapi": "from fastapi import FastAPI\napp = FastAPI()",
    "store": "from apiguard.keys import open_store\nstore = open_store('memory://')",
    "issuer": "ISSUER = 'https://idp.example'\nAUDIENCE = 'https://api.example'",
    "fake_issuer": "from apiguard.testing import FakeIssuer",
    "key": """
from apiguard.keys import KeyManager, open_store

store = open_store("memory://")
key_id = (await KeyManager(store).create("alice")).record.key_id
""",
    # The names a page showing the KeyStore protocol's signatures uses in them.
    "usage_types": """
from datetime import datetime

from apiguard.keys import UsageBatch, UsageBucket
from apiguard.keys.usage import Granularity
""",
    # A key and a token to explain, as a reader debugging a refusal has them.
    "explain": """
from apiguard.keys import KeyHasher
from apiguard.testing import TEST_PEPPER, FakeIssuer, make_keys

issuer = FakeIssuer("https://login.example.com", audience="https://api.example.com")
introspector = issuer.jwt_introspector()
token = issuer.mint(scope="items:read")
store, issued = await make_keys("billing")
key, hasher = issued["billing"], KeyHasher(TEST_PEPPER)
""",
}


def page_id(page: Path) -> str:
    return str(page.relative_to(DOCS))


def page_blocks(page: Path) -> list[Block]:
    return fenced_blocks(expand_snippets(page.read_text()))


def compiled(block: Block, page: Path) -> Any:
    return compile(
        block.code,
        f"{page_id(page)}:{block.line}",
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
    )


async def run(code: Any, namespace: dict[str, Any]) -> None:
    result = eval(code, namespace)  # noqa: S307 - the documentation's own code
    if inspect.iscoroutine(result):
        await result


def pages_with(language: str) -> list[Path]:
    return [page for page in PAGES if any(b.language == language for b in page_blocks(page))]


@pytest.fixture
def page_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("APIGUARD_PEPPER", "Docs-9f8Kq2ZxW7mLr4Tb6YcN1vHsJ3pQ0uEa")
    monkeypatch.setenv("INTROSPECTION_SECRET", "an introspection secret")
    # Metrics a page makes on prometheus_client's default registry stay with the page.
    monkeypatch.setattr(prometheus_client, "REGISTRY", prometheus_client.CollectorRegistry())
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:  # modules the page wrote and imported
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.mark.anyio
@pytest.mark.parametrize("page", pages_with("python"), ids=page_id)
async def test_python_blocks_run(page: Path, page_dir: Path) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}"}
    skipped = []
    try:
        for block in page_blocks(page):
            if block.language != "python":
                continue
            code = compiled(block, page)
            if block.directive == "skip":
                skipped.append(f"line {block.line}: {block.argument}")
                continue
            if block.directive == "setup":
                for name in block.argument.split():
                    await run(compile_setup(name), namespace)
            else:
                assert block.directive is None, f"line {block.line}: {block.directive}?"
            first = block.code.partition("\n")[0]
            if first.startswith("# ") and first.endswith(".py") and " " not in first[2:]:
                (page_dir / first[2:]).write_text(block.code)
            await run(code, namespace)
    finally:
        for value in list(namespace.values()):
            close = getattr(value, "aclose", None)
            if inspect.iscoroutinefunction(close) and not isinstance(value, type):
                await close()
    if skipped:
        pytest.skip(f"{page_id(page)}: {'; '.join(skipped)}")


def compile_setup(name: str) -> Any:
    assert name in SETUPS, f"no setup {name!r}; there are {sorted(SETUPS)}"
    return compile(SETUPS[name], f"setup {name}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_few_blocks_are_skipped() -> None:
    """A skipped block is documentation no test runs: keep them rare, each with a reason."""
    skips = [
        (page_id(page), block.line, block.argument)
        for page in PAGES
        for block in page_blocks(page)
        if block.directive == "skip"
    ]
    assert all(reason for _, _, reason in skips), skips
    assert len(skips) <= MAX_SKIPPED, skips
    print(f"{len(skips)} skipped block(s): {skips}")  # noqa: T201 - reported with -s


CLI_LINES = [
    (page_id(page), words)
    for page in PAGES
    for words in cli_lines([b.code for b in page_blocks(page) if b.language == "console"])
]


@pytest.mark.parametrize(
    ("page", "words"), CLI_LINES, ids=[f"{p}: {' '.join(w)}" for p, w in CLI_LINES]
)
def test_cli_lines_use_real_commands_and_options(page: str, words: list[str]) -> None:
    unknown = unknown_cli_words(words)
    assert not unknown, f"{page}: {' '.join(words)}: unknown {sorted(unknown)}"


def test_the_cli_check_finds_what_does_not_exist() -> None:
    assert unknown_cli_words(["apiguard", "keys", "create", "--name", "x", "--colour"]) == {
        "--colour"
    }
    assert unknown_cli_words(["apiguard", "keys", "list", "--json"]) == set()
    assert unknown_cli_words(["apiguard", "--version"]) == set()
    with pytest.raises(LookupError, match="no command 'mint'"):
        unknown_cli_words(["apiguard", "keys", "mint"])
    with pytest.raises(LookupError, match="names no command"):
        unknown_cli_words(["apiguard", "keys"])


PARSERS: dict[str, Callable[[str], Any]] = {
    "json": json.loads,
    "toml": tomllib.loads,
    "yaml": yaml.safe_load,
}
DATA_BLOCKS = [
    (page, block) for page in PAGES for block in page_blocks(page) if block.language in PARSERS
]


@pytest.mark.parametrize(
    ("page", "block"),
    DATA_BLOCKS,
    ids=[f"{page_id(p)}:{b.line}" for p, b in DATA_BLOCKS],
)
def test_data_blocks_parse(page: Path, block: Block) -> None:
    assert PARSERS[block.language](block.code) is not None


def test_the_block_reader_sees_directives_and_snippets() -> None:
    text = """Intro.

<!-- test: skip needs a real identity provider -->
```python
x = 1
```

```json
{}
```
--8<-- "benchmarks/README.md"
"""
    first, second, *included = fenced_blocks(expand_snippets(text))
    assert (first.language, first.code, first.line) == ("python", "x = 1\n", 4)
    assert (first.directive, first.argument) == ("skip", "needs a real identity provider")
    assert (second.language, second.directive) == ("json", None)
    assert included, "the snippet's own blocks are on the page too"


def reason_literals() -> set[str]:
    """Every literal reason apiguard logs: `reason="..."` arguments and log formats."""
    found: set[str] = set()
    for source in (ROOT / "src" / "apiguard").rglob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "reason":
                for part in ast.walk(node.value):
                    if isinstance(part, ast.Constant) and isinstance(part.value, str):
                        found.add(part.value.strip(": "))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                # "refused status=503 reason=backend unavailable (%s)"
                found.update(re.findall(r"reason=([a-z][a-z ]*[a-z]) \(", node.value))
    return found


def test_every_logged_reason_is_on_the_error_reference() -> None:
    reasons = reason_literals()
    assert {"malformed", "several credentials", "backend unavailable", "introspection"} <= reasons
    page = (DOCS / "errors.md").read_text()
    missing = sorted(r for r in reasons if f"`{r}`" not in page)
    assert not missing, f"reasons missing from docs/errors.md: {missing}"


def test_a_page_left_out_of_the_nav_or_a_broken_anchor_fails_the_build(tmp_path: Path) -> None:
    """`scripts/docs` builds strict: a forgotten page or a dead link is an error, not a warning."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    (docs / "forgotten.md").write_text("# Forgotten\n\nSee [the start](index.md#no-such-part).\n")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    config["site_dir"] = str(tmp_path / "site")
    config["hooks"] = [str(ROOT / hook) for hook in config["hooks"]]
    config["watch"] = [str(ROOT / path) for path in config["watch"]]
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT / "src")]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    build = subprocess.run(  # noqa: S603 - the script scripts/check runs
        [str(ROOT / "scripts" / "docs"), "-f", str(tmp_path / "mkdocs.yml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "VENV": str(Path(sys.executable).parent.parent)},
    )
    assert build.returncode != 0
    assert 'not included in the "nav" configuration:\n  - forgotten.md\n' in build.stderr
    assert "'index.md' does not contain an anchor '#no-such-part'" in build.stderr


PUBLIC_MODULES = [
    "apiguard",
    "apiguard.keys",
    "apiguard.tokens",
    "apiguard.fastapi",
    "apiguard.testing",
    "apiguard.ratelimit",
    "apiguard.proxies",
    "apiguard.diagnostics",
    "apiguard.events",
    "apiguard.prometheus",
    "apiguard.otel",
]


def test_the_api_reference_has_one_page_per_public_module() -> None:
    """Each page renders one module's `__all__` (mkdocs.yml: `filters: public`)."""
    documented = {}
    for page in sorted((DOCS / "reference").glob("*.md")):
        (module,) = re.findall(r"^::: (\S+)$", page.read_text(), re.MULTILINE)
        documented[module] = page.relative_to(DOCS).as_posix()
    assert sorted(documented) == sorted(PUBLIC_MODULES)
    nav = (ROOT / "mkdocs.yml").read_text()
    for module, path in documented.items():
        assert __import__(module, fromlist=["__all__"]).__all__, module
        assert f"{module}: {path}" in nav


@pytest.mark.parametrize("error", refusal_classes(), ids=lambda cls: cls.__name__)
def test_every_refusal_is_on_the_error_reference(error: type[AuthError]) -> None:
    """Its exception, error code and fixed description, in one row; its status in the tree."""
    page = (DOCS / "errors.md").read_text()
    code = f"`{error.error}`" if error.error else "(none)"
    row = f"| {code} | {error.description} | `{error.__name__}` |"
    assert row in page
    tree_line = re.search(rf"^[│├└─ ]+{error.__name__} +(\d+)", page, re.MULTILINE)
    assert tree_line is not None
    assert int(tree_line[1]) == error.status_code


def test_the_quick_start_is_the_readmes() -> None:
    """The site's front page shows the app the README's quick start runs (tests/test_readme.py)."""
    readme = fenced_blocks((ROOT / "README.md").read_text())
    index = page_blocks(DOCS / "index.md")
    (app,) = [b.code for b in readme if b.code.startswith("# app.py\n")]
    assert app in [b.code for b in index]
