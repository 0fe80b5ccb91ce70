from __future__ import annotations

import textwrap

import pytest

from apiguard.testing import KeyStoreContract, make_record

pytest_plugins = ["pytester"]


def test_make_record_is_the_same_whenever_it_is_called() -> None:
    """Equal arguments give equal records: no field is stamped with the current time."""
    assert make_record("N" * 12) == make_record("N" * 12)
    assert make_record().created_at == make_record().created_at


def test_contract_suite_runs_from_a_users_test_file(pytester: pytest.Pytester) -> None:
    """As the README shows it: asyncio only (trio is installed here), all green on SQLite."""
    pytester.makepyfile(
        test_my_store=textwrap.dedent(
            """
            import pytest
            from apiguard.keys import open_store
            from apiguard.testing import KeyStoreContract


            class TestMyStore(KeyStoreContract):
                @pytest.fixture
                async def store(self, tmp_path):
                    store = open_store(f"sqlite:///{tmp_path}/keys.db")
                    yield store
                    await store.aclose()
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-W", "error", "-v")
    contract = [name for name in dir(KeyStoreContract) if name.startswith("test_")]
    result.assert_outcomes(passed=len(contract))
    assert len(contract) >= 11
    assert "trio" not in result.stdout.str()


def test_a_store_without_usage_counts_passes_with_the_usage_tests_skipped(
    pytester: pytest.Pytester,
) -> None:
    """A store written before `UsageStore` still passes; the skips say what is missing."""
    pytester.makepyfile(
        test_old_store=textwrap.dedent(
            """
            import pytest
            from apiguard.keys import MemoryKeyStore
            from apiguard.testing import KeyStoreContract


            class OldStore:
                def __init__(self):
                    self.inner = MemoryKeyStore()

                def __getattr__(self, name):
                    if name in ("add_usage", "usage"):
                        raise AttributeError(name)
                    return getattr(self.inner, name)


            class TestOldStore(KeyStoreContract):
                @pytest.fixture
                def store(self):
                    return OldStore()
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-W", "error", "-rs")
    contract = [name for name in dir(KeyStoreContract) if name.startswith("test_")]
    usage_tests = [name for name in contract if name.startswith("test_usage_")]
    assert len(usage_tests) == 4
    result.assert_outcomes(passed=len(contract) - 4, skipped=4)
    result.stdout.fnmatch_lines(["*the store keeps no request counts*UsageStore*"])
