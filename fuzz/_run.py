"""Run one harness under atheris: `python -m fuzz.<harness> [libFuzzer options] [corpus...]`."""

from __future__ import annotations

import sys
from collections.abc import Callable


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Instrument everything loaded (apiguard and its dependencies), then fuzz."""
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
