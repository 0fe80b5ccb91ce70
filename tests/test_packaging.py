from __future__ import annotations

import ast
import functools
import re
import sys
from importlib.metadata import distributions, metadata, requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import apiguard

SRC = Path(apiguard.__file__).parent
ROOT = Path(__file__).resolve().parent.parent
# The name on the package index; `apiguard` there is an unrelated project.
DISTRIBUTION = "apiguard-asgi"
# Modules that exist to use an optional package, named by the extras that install it.
OPTIONAL: dict[str, str] = {
    "fastapi/__init__.py": "fastapi",
    "fastapi/_dependencies.py": "fastapi",
    "fastapi/_guard.py": "fastapi",
    "fastapi/_openapi.py": "fastapi",
    "fastapi/_route.py": "fastapi",
    "keys/redis.py": "redis",
    "keys/sql.py": "sqlite",
    "keys/_sql_usage.py": "sqlite",
    "ratelimit/_pipeline.py": "ratelimit,redis",
    "ratelimit/_windows.py": "ratelimit",
    "ratelimit/failures.py": "ratelimit",
    "ratelimit/policy.py": "ratelimit",
    "ratelimit/storage.py": "ratelimit",
    "tokens/shared_cache.py": "redis",
}
# The contract suite and test helpers run inside the user's own pytest; the fake
# issuer's `cryptography` comes with the `pyjwt[crypto]` requirement.
UNDECLARED = {"testing.py", "pytest_plugin.py", "_testkit/issuer.py"}


def top_level_imports(path: Path) -> set[str]:
    """Third-party names imported when the module loads (not lazily, not for typing)."""
    names: set[str] = set()
    body = ast.parse(path.read_text()).body
    # Guarded imports (`try: import x except ImportError`) still need their package.
    body += [n for t in body if isinstance(t, ast.Try) for n in t.body]
    for node in body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "apiguard"}


@functools.cache
def providers() -> dict[str, set[str]]:
    """Import name -> distributions installing it, read from each one's file list.

    (`importlib.metadata.packages_distributions` reads only `top_level.txt` on 3.10.)
    """
    found: dict[str, set[str]] = {}
    for dist in distributions():
        for file in dist.files or []:
            top = file.parts[0].removesuffix(".py")
            if top.isidentifier():
                found.setdefault(top, set()).add(canonicalize_name(dist.metadata["Name"]))
    return found


def declared(extra: str | None = None) -> set[str]:
    found: set[str] = set()
    for line in requires(DISTRIBUTION) or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if (extra is None and marker is None) or (
            extra is not None and marker is not None and marker.evaluate({"extra": extra})
        ):
            found.add(canonicalize_name(requirement.name))
    return found


MODULES = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("module", [m for m in MODULES if m not in UNDECLARED], ids=str)
def test_every_import_is_a_declared_dependency(module: str) -> None:
    """Installing apiguard (with the module's extra) installs everything it imports."""
    installed_by = providers()
    needed = {
        dist for name in top_level_imports(SRC / module) for dist in installed_by.get(name, {name})
    }
    extras = OPTIONAL.get(module, "")
    available = declared().union(*(declared(extra) for extra in extras.split(",") if extra))
    assert needed <= available


def test_the_distribution_is_installed_under_its_own_name() -> None:
    """`apiguard-asgi` installs the `apiguard` package, at the version it declares."""
    assert version(DISTRIBUTION) == apiguard.__version__
    assert metadata(DISTRIBUTION)["Name"] == DISTRIBUTION
    # The dev group installs the project's own extras by that name.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.findall(r'"(apiguard[\w-]*)\[', pyproject) == [DISTRIBUTION]


# 'apiguard...[extra,...]' or '.[extra]' (pip install -e), quoted, in messages and docs.
_INSTALL = re.compile(r"'(apiguard[\w.-]*|\.)\[([\w,]+)\]")


@pytest.mark.parametrize(
    "path",
    [*sorted(SRC.rglob("*.py")), ROOT / "README.md"],
    ids=lambda p: str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p.name),
)
def test_install_lines_name_this_distribution_and_its_extras(path: Path) -> None:
    """Every install line names `apiguard-asgi` (or the checkout) and extras it declares."""
    extras = set(metadata(DISTRIBUTION).get_all("Provides-Extra") or [])
    for name, wanted in _INSTALL.findall(path.read_text()):
        assert name in {DISTRIBUTION, "."}, f"{path.name}: pip install {name}[{wanted}]"
        assert set(wanted.split(",")) <= extras, f"{path.name}: unknown extra in {wanted}"
