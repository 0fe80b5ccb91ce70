"""Test helpers shipped with apiguard, re-exported by `apiguard.testing`."""
