"""Test-session settings: no network, and a fresh cache for bandpo's compiled CPU kernels, so that
every run proves they build on this machine."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_kernel_cache(tmp_path_factory):
    os.environ["BANDPO_CACHE_DIR"] = str(tmp_path_factory.mktemp("bandpo-cache"))
    yield
