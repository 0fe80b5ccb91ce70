"""Run one harness under atheris: `python -m fuzz.<harness> [libFuzzer options] [corpus...]`."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

# Coverage feedback comes from these packages only: instrumenting every loaded module
# (atheris.instrument_all) takes a minute at start-up for httpx, cryptography and
# Starlette, whose branches the harnesses do not aim at.
INSTRUMENTED = ("apiguard", "fuzz")


def _functions(module: types.ModuleType) -> list[Any]:
    found: list[Any] = []
    for value in vars(module).values():
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            found.append(value)
        elif isinstance(value, type) and value.__module__ == module.__name__:
            for member in vars(value).values():
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    found.extend(f for f in (member.fget, member.fset) if f is not None)
                    continue
                if isinstance(member, types.FunctionType):
                    found.append(member)
    return found


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Instrument apiguard and the harnesses, then fuzz."""
    import atheris

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in INSTRUMENTED or name == "__main__":
            for function in _functions(module):
                atheris.instrument_func(function)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
