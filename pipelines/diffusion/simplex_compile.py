"""Compile the simplex noise function with ``torch.compile``, or leave it uncompiled on a CPU without a C++ compiler.

``compiled(noise3, device)`` returns ``noise3`` compiled by Inductor, which fuses it into one
loop over the points: vectorised C++ on the CPU and a Triton kernel on CUDA. Callers pass the
same number of points in every call (``simplex_torch.fractal_noise`` pads its last chunk), and
the lengths of the seed tables are marked dynamic, so one compiled kernel serves every batch
and image size. Inductor stores the kernel in its on-disk cache (``TORCHINDUCTOR_CACHE_DIR``,
by default ``/tmp/torchinductor_<user>``). The cache key includes PyTorch's CPU thread count,
so each thread count compiles once per machine.

Measured on a shared 2-core Xeon (AVX-512, PyTorch 2.14.1, g++) with other jobs running
(load average 4 to 5): the first compile on the machine took 90 to 110 s, half of it in g++.
Later processes loaded the kernel from the cache, and their first call took 3 to 10 s.

On the CPU, Inductor needs a C++ compiler (``$CXX``, else ``g++``). Without one, ``compiled``
logs a warning once per process and returns None, and callers run ``noise3`` uncompiled,
which gives the same noise several times more slowly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

_LOGGER = logging.getLogger(__name__)


@functools.cache
def cpu_compiler() -> str | None:
    """Return the C++ compiler that Inductor uses for CPU kernels, or None (with a warning, once) when it finds none."""
    # Imported here because importing Inductor took about 2 s, which processes that never
    # compile should not pay.
    from torch._inductor import config
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        return get_cpp_compiler()
    except InvalidCxxCompiler:
        names = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
        tried = ", ".join(str(name) for name in names if name is not None)
        _LOGGER.warning(
            "no C++ compiler found for torch.compile (tried %s), so simplex noise on the CPU runs uncompiled and "
            "several times slower; install g++ or set CXX to a C++ compiler",
            tried,
        )
        return None


def compiled(function: Callable[..., torch.Tensor], device: torch.device) -> Callable[..., torch.Tensor] | None:
    """Return ``function(x, y, z, sample, tables)`` compiled for ``device``, or None on a CPU without a C++ compiler."""
    if device.type == "cpu" and cpu_compiler() is None:
        return None
    return functools.partial(_call_with_dynamic_tables, _compile(function))


@functools.cache
def _compile(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    return torch.compile(function)


def _call_with_dynamic_tables(compiled_function: Callable[..., torch.Tensor], *arguments: Any) -> torch.Tensor:
    """Call ``compiled_function`` with the lengths of its tables marked dynamic, so that a new number of seeds needs no new compile."""
    tables = arguments[-1]
    torch._dynamo.mark_dynamic(tables.perm, 0)
    torch._dynamo.mark_dynamic(tables.gradients, 0)
    return compiled_function(*arguments)
