"""Every example in the docstrings of the library's core runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import bandpo

CORE_MODULES = sorted(
    info.name for info in pkgutil.iter_modules(bandpo.__path__, "bandpo.") if not info.ispkg
)
"""The operator, the loss and their helpers (integrations and training need optional engines)."""


@pytest.mark.parametrize("name", CORE_MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_the_core_has_examples():
    attempted = sum(doctest.testmod(importlib.import_module(name)).attempted for name in CORE_MODULES)
    assert attempted >= 5
