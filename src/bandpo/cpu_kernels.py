"""Hand-written CPU kernels for the bounds of ``kl``, ``tv`` and ``chi2`` in float32.

On a CPU the Band operator is compute-bound: the kl solver evaluates exp and log a dozen times
per token. The kernels built by ``torch.compile`` call SLEEF's exp and log (two to three times
the cost of the MKL ones eager PyTorch uses, measured) and run one dependency chain per vector
at a time. ``cpu_kernels.c`` evaluates exp and log with short polynomials and interleaves
independent chains, which makes kl several times faster than the fused kernel on a CPU
(``benchmarks/band_speed.py`` measures it; ``benchmarks/results/cpu/band_speed.txt``).

``cpu_kernels.c`` is compiled when bandpo is installed (``setup.py``; ``pip install``, ``pip
install -e`` and ``pip wheel`` alike) into the extension module ``bandpo._cpu_kernels``, which
this module loads with ctypes; nothing is compiled at run time. The build is portable: on x86-64
the hot loop is compiled for AVX-512F, for AVX2 with FMA and for the x86-64 baseline, and each call
runs the widest one the CPU supports (``instruction_sets()``), so a wheel built on one machine runs
on any other. The extension is optional: where it did not build (no C compiler at install time, a
compiler error), ``available()`` is False, ``band(kernel="auto")`` uses PyTorch's kernels, and
``kernel="native"`` raises NativeKernelError saying how to get it.

Built with OpenMP (where the compiler supports ``-fopenmp``; else single-threaded), the kernels
run on the process's OpenMP thread pool. The extension asks for ``libgomp.so.1`` by that name, and
PyTorch's Linux wheels load their own copy under the same name before this module loads the
extension (``import torch`` comes first), so the dynamic loader reuses PyTorch's libgomp rather
than loading a second one: the kernels share PyTorch's workers instead of competing with their
idle spinning for the cores.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import math
from pathlib import Path

import torch
from torch import Tensor

from bandpo.divergences import CHI2, KL, TV, Divergence, kl_halley_steps

EXTENSION = "bandpo._cpu_kernels"
"""The extension module that holds the kernels (built from ``cpu_kernels.c`` by ``setup.py``)."""
SOURCE = Path(__file__).with_name("cpu_kernels.c")
"""The kernels' source: present in a checkout (and an editable install), not in a wheel."""
INSTRUCTION_SETS = ("baseline", "avx2+fma", "avx512f")
"""The variants of the kernels' loop, numbered as in ``cpu_kernels.c``; all but the baseline (the
target's default instructions: SSE2 on x86-64) exist only in x86-64 builds by GCC or Clang."""
PARALLEL_MIN_TOKENS = 1 << 14
"""Smaller inputs run on the calling thread: waking the thread pool costs more than it saves."""
NOT_BUILT = (
    "bandpo's CPU kernels were not built: the extension module bandpo._cpu_kernels is missing, "
    "because no working C compiler was found when bandpo was installed (`pip install -v` shows the "
    "reason). kernel='auto' uses PyTorch's kernels instead. To get the native kernels, reinstall "
    "bandpo from source where a C compiler (gcc or clang; $CC) is available: in a checkout, "
    "`pip install -e .`; else `pip install --force-reinstall --no-deps --no-cache-dir --no-binary "
    "bandpo bandpo` (--no-cache-dir: not the wheel pip built and cached without them)."
)
"""NativeKernelError's message where the extension is missing."""
CALL_ERRORS = {
    -1: "unknown divergence",
    -2: "kl step count other than 2 or 3",
    -3: "instruction set not in this build or not supported by this CPU",
}
"""What the C entry's nonzero returns mean."""

logger = logging.getLogger(__name__)


class NativeKernelError(RuntimeError):
    """The C kernels were not built at install time, do not load, or refused a call."""


def divergence_code(divergence: Divergence) -> int | None:
    """The kernel's number for a built-in divergence it implements (identity, not name: a user
    divergence called "kl" is a different function)."""
    for code, implemented in enumerate((KL, TV, CHI2)):
        if divergence is implemented:
            return code
    return None


def check_supported(log_p: Tensor, divergence: Divergence) -> None:
    """ValueError unless the kernels compute ``divergence`` for ``log_p``."""
    if not supports(log_p, divergence):
        raise ValueError(
            "kernel='native' computes kl, tv and chi2 for float32, bfloat16 or float16 CPU tensors "
            f"outside torch.compile; got divergence {divergence.name!r}, {log_p.dtype} on {log_p.device}"
        )


def supports(log_p: Tensor, divergence: Divergence) -> bool:
    """Whether the kernels compute ``divergence`` for ``log_p`` (float32 on the CPU, eager)."""
    return (
        divergence_code(divergence) is not None
        and log_p.device.type == "cpu"
        and log_p.dtype == torch.float32
        and not torch.compiler.is_compiling()
    )


@functools.cache
def load() -> ctypes.CDLL:
    """The kernels built at install time; NativeKernelError where they were not built or do not load."""
    spec = importlib.util.find_spec(EXTENSION)  # locates the file without running it
    if spec is None or not spec.origin:
        raise NativeKernelError(NOT_BUILT)
    try:
        library = ctypes.CDLL(spec.origin)
    except OSError as error:
        raise NativeKernelError(f"bandpo's CPU kernels ({spec.origin}) do not load: {error}") from error
    library.bandpo_source_sha256.argtypes = []
    library.bandpo_source_sha256.restype = ctypes.c_char_p
    built_from = library.bandpo_source_sha256().decode()
    if SOURCE.exists() and built_from != hashlib.sha256(SOURCE.read_bytes()).hexdigest():
        raise NativeKernelError(
            f"bandpo's CPU kernels ({spec.origin}) were built from another version of {SOURCE}: "
            "rebuild them with `pip install -e .` in the checkout (or reinstall bandpo)"
        )
    entry = library.bandpo_band_f32
    entry.argtypes = [ctypes.c_int, *[ctypes.c_void_p] * 3, ctypes.c_int64]
    entry.argtypes += [ctypes.c_float] * 2 + [ctypes.c_int] * 3
    entry.restype = ctypes.c_int
    library.bandpo_instruction_sets.argtypes = []
    library.bandpo_instruction_sets.restype = ctypes.c_int
    library.bandpo_openmp.argtypes = []
    library.bandpo_openmp.restype = ctypes.c_int
    return library


@functools.cache
def available() -> bool:
    """Whether the kernels load; logs why not, once."""
    try:
        load()
    except NativeKernelError as error:
        logger.warning("bandpo: CPU kernels unavailable, using PyTorch ones (%s)", error)
        return False
    return True


def instruction_sets() -> tuple[str, ...]:
    """The variants of the kernels this build has and this CPU runs, widest (the one used) first."""
    sets = load().bandpo_instruction_sets()
    return tuple(name for bit, name in reversed(list(enumerate(INSTRUCTION_SETS))) if sets >> bit & 1)


def openmp() -> bool:
    """Whether the kernels were built with OpenMP (else they run on the calling thread only)."""
    return bool(load().bandpo_openmp())


def ratio_bounds(
    log_p: Tensor,
    delta: float,
    divergence: Divergence,
    upper_max: float | None,
    instruction_set: str | None = None,
) -> tuple[Tensor, Tensor]:
    """(lower, upper) for float32 CPU log-probabilities, as ``divergence.ratio_bounds`` computes
    them (log p > 0 read as 0, NaN kept), with the upper bound capped at ``upper_max``.
    ``instruction_set``: one of ``instruction_sets()`` (default: the widest)."""
    check_supported(log_p, divergence)
    if instruction_set is not None and instruction_set not in INSTRUCTION_SETS:
        raise ValueError(f"instruction_set must be one of {INSTRUCTION_SETS} or None, got {instruction_set!r}")
    isa = -1 if instruction_set is None else INSTRUCTION_SETS.index(instruction_set)
    log_p = log_p.contiguous()
    lower, upper = torch.empty_like(log_p), torch.empty_like(log_p)
    threads = torch.get_num_threads() if log_p.numel() >= PARALLEL_MIN_TOKENS else 1
    status = load().bandpo_band_f32(
        divergence_code(divergence),
        log_p.data_ptr(),
        lower.data_ptr(),
        upper.data_ptr(),
        log_p.numel(),
        delta,
        math.inf if upper_max is None else upper_max,
        kl_halley_steps(torch.float32),
        threads,
        isa,
    )
    if status != 0:
        raise NativeKernelError(f"bandpo_band_f32 returned {status} ({CALL_ERRORS.get(status, 'unknown')})")
    return lower, upper
