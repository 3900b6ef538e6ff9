"""Builds bandpo's optional C extension, the native CPU kernels; everything else is in pyproject.toml.

``src/bandpo/cpu_kernels.c`` becomes the extension module ``bandpo._cpu_kernels`` (loaded with ctypes
by ``bandpo/cpu_kernels.py``) in every kind of install: ``pip install .``, ``pip install -e .`` (built
in place, next to the source) and ``pip wheel .``. The flags are portable (no ``-march=native``: the C
file dispatches on the CPU at run time). ``-fopenmp`` is tried first, then a single-threaded build.
Where neither builds (no C compiler, a compiler error, ``CC=false``), the install still succeeds
with a warning (shown by ``pip install -v``), and bandpo computes the bounds with PyTorch's kernels.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

FLAGS = ["-O3", "-ffp-contract=fast", "-fno-math-errno"]
"""For GCC-like compilers; -ffp-contract=fast lets the polynomials use fused multiply-adds."""
OPENMP = ["-fopenmp"]
"""Compile and link flag. The library then needs libgomp.so.1, which resolves to the copy PyTorch has
already loaded (bandpo/cpu_kernels.py loads the extension after importing torch)."""
BUILD_ERRORS = (CCompilerError, CompileError, ExecError, LinkError, PlatformError, OSError, ValueError)

SOURCE = "src/bandpo/cpu_kernels.c"
SOURCE_SHA256 = hashlib.sha256((Path(__file__).resolve().parent / SOURCE).read_bytes()).hexdigest()
"""Compiled into the library: bandpo.cpu_kernels refuses a library built from another version of the
source (an in-place build left behind by a ``git pull``, until ``pip install -e .`` runs again)."""

# The module only holds C functions called through ctypes: one build serves every CPython >= 3.11
# (not the free-threaded builds, which have no stable ABI).
LIMITED_API = not sysconfig.get_config_var("Py_GIL_DISABLED")


class OptionalBuildExt(build_ext):
    """build_ext that tries OpenMP, then no OpenMP, and turns a failed build into a warning."""

    def build_extension(self, ext: Extension) -> None:
        gcc_like = self.compiler.compiler_type in ("unix", "cygwin", "mingw32")
        attempts = [FLAGS + OPENMP, FLAGS] if gcc_like else [[]]
        failures = []
        for flags in attempts:
            ext.extra_compile_args = flags
            ext.extra_link_args = [flag for flag in flags if flag in OPENMP]
            try:
                super().build_extension(ext)
            except BUILD_ERRORS as error:
                failures.append(f"{' '.join(flags) or 'default flags'}: {type(error).__name__}: {error}")
                continue
            if failures:
                print(f"bandpo: built {ext.name} without OpenMP (single-threaded kernels):\n  {failures[0]}", file=sys.stderr)
            return
        message = (
            f"WARNING: bandpo: building the optional extension {ext.name} (the native CPU kernels) "
            "failed; bandpo installs without it and computes the bounds with PyTorch's kernels "
            "(band(kernel='native') raises NativeKernelError). Reinstall with a working C compiler "
            "(gcc or clang, or $CC) to get them. The attempts:\n  " + "\n  ".join(failures)
        )
        print(message, file=sys.stderr, flush=True)

    def copy_file(self, infile: str, outfile: str, *args: object, **kwargs: object) -> tuple[str, bool]:
        """The in-place copy (``pip install -e``) as a new file renamed over the old one: the dev and
        the integrations venvs share it, and a process that has the old library loaded keeps an
        intact mapping of it (overwriting a loaded library in place can crash that process)."""
        if self.dry_run:
            return super().copy_file(infile, outfile, *args, **kwargs)
        partial = f"{outfile}.{os.getpid()}.partial"
        try:
            _, copied = super().copy_file(infile, partial, *args, **kwargs)
            os.replace(partial, outfile)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return outfile, copied


setup(
    ext_modules=[
        Extension(
            "bandpo._cpu_kernels",
            sources=[SOURCE],
            define_macros=[("BANDPO_PYTHON_EXTENSION", "1"), ("BANDPO_SOURCE_SHA256", f'"{SOURCE_SHA256}"')]
            + ([("Py_LIMITED_API", "0x030B0000")] if LIMITED_API else []),
            py_limited_api=LIMITED_API,
            optional=True,  # also tells an in-place (editable) build not to copy a missing file
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp311"}} if LIMITED_API else {},
)
