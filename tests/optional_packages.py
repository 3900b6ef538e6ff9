"""Optional packages in the tests: a test is skipped only where its package is not installed at all.

``pytest.importorskip`` skips on the ModuleNotFoundError of any module, a missing dependency of an
installed package included (pytest < 9.1: on any ImportError). An installed package that no longer
imports (a dependency missing or clashing after an upgrade) would then turn its tests into skips, and
the suite, CI's included, would pass without running them. CI installs every package the tests use,
so there such a failure must be an error, which `import_if_installed` makes it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import pytest


def import_if_installed(name: str) -> ModuleType:
    """The module ``name``, imported. Skips (module level too) only where its top-level package is not
    installed (``importlib.util.find_spec`` finds nothing, without running it); an installed package
    whose import fails raises that error, so the test errors instead of being skipped."""
    package = name.partition(".")[0]
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed", allow_module_level=True)
    return importlib.import_module(name)
