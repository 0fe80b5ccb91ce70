"""The fuzz harnesses' seed corpora, replayed on every Python (no fuzzer needed).

`scripts/fuzz` runs the harnesses under atheris on the main interpreter; this test
keeps every harness importable and every seed (and every input a past run made
fail, once added to `fuzz/corpus/`) passing everywhere the suite runs.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

CORPUS = Path(__file__).parent.parent / "fuzz" / "corpus"
HARNESSES = sorted(path.name for path in CORPUS.iterdir())


def test_every_harness_has_a_corpus() -> None:
    modules = {p.stem for p in CORPUS.parent.glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(HARNESSES)


@pytest.mark.parametrize("harness", HARNESSES)
def test_seed_corpus_passes(harness: str) -> None:
    module = importlib.import_module(f"fuzz.{harness}")
    seeds = sorted((CORPUS / harness).iterdir())
    assert seeds
    for seed in seeds:
        module.test_one_input(seed.read_bytes())
