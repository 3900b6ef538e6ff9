"""Every example in the docstrings of the library's core runs and prints what it shows.

Each core module is either in ``WITH_EXAMPLES`` (and must keep at least one example) or in
``WITHOUT_EXAMPLES`` (and has none yet); a new module must be put in one of the two.
"""

import doctest
import importlib
import pkgutil

import pytest

import bandpo

CORE_MODULES = sorted(
    info.name for info in pkgutil.iter_modules(bandpo.__path__, "bandpo.") if not info.ispkg
)
"""The operator, the loss and their helpers (integrations and training need optional engines)."""

WITH_EXAMPLES = ("bandpo.band", "bandpo.checks", "bandpo.divergences", "bandpo.grpo", "bandpo.numerics")
WITHOUT_EXAMPLES = (
    "bandpo._cpu_kernels",  # the compiled extension (absent when not built): no docstrings of its own
    "bandpo.aggregation",
    "bandpo.cpu_kernels",
    "bandpo.loss",
    "bandpo.metrics",
    "bandpo.room",
    "bandpo.rules",
    "bandpo.shrink",
)


def examples(name: str) -> doctest.TestResults:
    return doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)


def test_every_core_module_is_listed_once():
    listed = WITH_EXAMPLES + WITHOUT_EXAMPLES
    assert len(set(listed)) == len(listed)
    assert set(CORE_MODULES) - set(listed) == set(), "put each new module in WITH_EXAMPLES or WITHOUT_EXAMPLES"
    assert set(WITH_EXAMPLES) <= set(CORE_MODULES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
    result = examples(name)
    assert result.attempted >= 1, f"{name} is listed for doctests but has no example"
    assert result.failed == 0


@pytest.mark.parametrize("name", [name for name in WITHOUT_EXAMPLES if name in CORE_MODULES])
def test_a_module_listed_without_examples_has_none(name):
    """Adding an example moves the module to WITH_EXAMPLES, so that it is run and kept."""
    assert examples(name).attempted == 0, f"{name} has examples now: move it to WITH_EXAMPLES"
