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
