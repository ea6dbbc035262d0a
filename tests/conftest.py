"""Shared test setup: a private cache folder, and one CPU thread.

Tests use tiny models, for which torch's thread pool costs far more than it gives; on a busy
2-core machine two threads made tiny matmuls ~100× slower. Subprocesses inherit the variables.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _test_environment(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("WML_CACHE_DIR", str(tmp_path_factory.mktemp("wml-cache")))
    mp.setenv("TOKENIZERS_PARALLELISM", "false")
    mp.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """One learnable toy corpus for every end-to-end test, so its tokenizer is trained once."""
    from run_helpers import toy_corpus

    return toy_corpus(tmp_path_factory.mktemp("corpus") / "toy.txt", sentences=1500)
