"""Hand-written CPU kernels for the bounds of ``kl``, ``tv`` and ``chi2`` in float32.

On a CPU the Band operator is compute-bound: the kl solver evaluates exp and log a dozen times
per token. The kernels built by ``torch.compile`` call SLEEF's exp and log (two to three times
the cost of the MKL ones eager PyTorch uses, measured) and run one dependency chain per vector
at a time. ``cpu_kernels.c`` evaluates exp and log with short polynomials and interleaves
independent chains, which makes kl several times faster than the fused kernel on a CPU
(``benchmarks/band_speed.py`` measures it; ``benchmarks/results/cpu/band_speed.txt``).

The library is compiled on first use with the system C compiler (``$CC``, else ``cc``, ``gcc``
or ``clang``) for the machine at hand (``-march=native`` where the compiler accepts it) and kept
in ``$BANDPO_CACHE_DIR`` (default ``~/.cache/bandpo``) under a name derived from the source, the
compiler, its flags and the CPU, so that a shared home directory serves different machines. With
OpenMP the library runs on the process's OpenMP thread pool: PyTorch's own where PyTorch brought
libgomp, so that the kernel does not compete with PyTorch's idle-spinning workers for the cores.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from bandpo.divergences import CHI2, KL, TV, Divergence, kl_halley_steps

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ("-O3", "-ffp-contract=fast", "-fno-math-errno", "-fPIC", "-shared")
OPTIONAL_FLAGS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())
"""Tried in this order: a compiler without OpenMP builds a single-threaded library."""
PARALLEL_MIN_TOKENS = 1 << 14
"""Smaller inputs run on the calling thread: waking the thread pool costs more than it saves."""

logger = logging.getLogger(__name__)


class NativeKernelError(RuntimeError):
    """The C kernels could not be built or loaded (no compiler, a compiler error, ...)."""


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


def _cache_dir() -> Path:
    configured = os.environ.get("BANDPO_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bandpo"


def _compiler() -> list[str]:
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise NativeKernelError("no C compiler found: install gcc or clang, or set CC")


def _cpu_identity() -> str:
    # -march=native code can crash on another CPU model: the cache key names the CPU's features.
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(dict.fromkeys(wanted)) or f"{platform.machine()} {platform.processor()}"


def _compile(command: list[str], target: Path) -> str | None:
    """Compile to ``target`` (atomically, so that concurrent processes never load half a file);
    the compiler's complaint on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(handle)
    try:
        try:
            result = subprocess.run(
                [*command, "-o", partial], capture_output=True, text=True, timeout=300, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:  # no such compiler, a hung one
            return str(error)
        if result.returncode != 0:
            return (result.stderr or result.stdout).strip()[-2000:] or f"exit status {result.returncode}"
        os.replace(partial, target)
        return None
    finally:
        if os.path.exists(partial):
            os.remove(partial)


@functools.cache
def load() -> ctypes.CDLL:
    """The compiled kernels, built on the first call; NativeKernelError if that fails."""
    compiler = _compiler()
    source, cpu = SOURCE.read_bytes(), _cpu_identity().encode()
    complaints = []
    for optional in OPTIONAL_FLAGS:
        command = [*compiler, *FLAGS, *optional, str(SOURCE)]
        key = hashlib.sha256(b"\0".join([source, " ".join(command).encode(), cpu]))
        target = _cache_dir() / f"cpu_kernels-{key.hexdigest()[:20]}.so"
        complaint = None if target.exists() else _compile(command, target)
        if complaint is None:
            library = ctypes.CDLL(str(target))
            entry = library.bandpo_band_f32
            entry.argtypes = [ctypes.c_int, *[ctypes.c_void_p] * 3, ctypes.c_long]
            entry.argtypes += [ctypes.c_float] * 2 + [ctypes.c_int] * 2
            entry.restype = ctypes.c_int
            return library
        complaints.append(f"{shlex.join(command)}:\n{complaint}")
    raise NativeKernelError("building bandpo's CPU kernels failed:\n" + "\n".join(complaints))


@functools.cache
def available() -> bool:
    """Whether the kernels load; logs why not, once."""
    try:
        load()
    except (NativeKernelError, OSError) as error:  # OSError: the library does not load
        logger.warning("bandpo: CPU kernels unavailable, using PyTorch ones (%s)", error)
        return False
    return True


def ratio_bounds(
    log_p: Tensor, delta: float, divergence: Divergence, upper_max: float | None
) -> tuple[Tensor, Tensor]:
    """(lower, upper) for float32 CPU log-probabilities, as ``divergence.ratio_bounds`` computes
    them (log p > 0 read as 0, NaN kept), with the upper bound capped at ``upper_max``."""
    check_supported(log_p, divergence)
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
    )
    if status != 0:
        raise NativeKernelError(f"bandpo_band_f32 returned {status}")
    return lower, upper
