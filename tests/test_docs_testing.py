"""docs/testing.md's files, run with pytest as their reader would run them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

DOC = (Path(__file__).resolve().parent.parent / "docs" / "testing.md").read_text()
BLOCK = re.compile(r"^```python\n# (\S+\.py)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_documented_test_file_passes(pytester: pytest.Pytester) -> None:
    files = {name: code for name, code in BLOCK.findall(DOC)}
    assert set(files) == {"conftest.py", "app.py", "test_app.py"}
    for name, code in files.items():
        pytester.path.joinpath(name).write_text(code)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-W", "error")
    result.assert_outcomes(passed=3)


def test_the_helper_table_names_every_helper() -> None:
    import apiguard.testing

    table = DOC.split("## The pytest plugin")[0]
    for name in apiguard.testing.__all__:
        assert f"`{name}" in table, name
