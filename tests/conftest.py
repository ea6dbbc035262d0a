"""Shared test setup: a private cache folder, so tests never touch ~/.cache/wml."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("WML_CACHE_DIR", str(tmp_path_factory.mktemp("wml-cache")))
    mp.setenv("TOKENIZERS_PARALLELISM", "false")
    yield
    mp.undo()
