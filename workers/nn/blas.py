"""BLAS threads while training: who may use the cores, the BLAS or the engine.

OpenBLAS's own threading made our matrix products slower, not faster, on a 2-core
machine, so for networks whose products are small the engine holds BLAS to one thread
and uses the threads BLAS was allowed itself (see ``FastNetwork(threads=...)``).

The thread counts are read and set through threadpoolctl (installed with
scikit-learn), which finds every BLAS loaded in the process (OpenBLAS, MKL, BLIS,
FlexiBLAS).  Holding the limit costs nothing per step: it is set once per run.
Measured against the hand-written ctypes calls it replaced, in one process,
interleaved: the same per-step times within noise, and the limit held inside the block
(docs/engine.md#speed).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

from threadpoolctl import ThreadpoolController

from workers.nn.model import NetworkSpec

__all__ = ["SINGLE_THREAD_MAX_FLOPS", "blas_threads_for"]

# Largest per-step matrix product (2 * N * fan_in * width flops) still run single-threaded.
# On a 2-core machine OpenBLAS's own threading made products of this size 1.3-4x *slower*
# than one thread (e.g. 200 x 3072 x 100: 2.2 ms on one thread, 5-8 ms on two, worse when
# the other core is busy), and our networks' products are all far below it.
SINGLE_THREAD_MAX_FLOPS = 2e9


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """The BLAS libraries loaded in this process.  Found once (13 ms with SciPy loaded,
    too long to pay per run); a BLAS loaded later is not limited."""
    return ThreadpoolController().select(user_api="blas")


@contextmanager
def blas_threads_for(spec: NetworkSpec, batch_size: int) -> Iterator[int]:
    """Take over BLAS threading for training this network.

    If the network's per-step matrix products are small (see SINGLE_THREAD_MAX_FLOPS),
    BLAS is set to one thread for the block and the thread count it had -- whatever the
    user allowed it through OPENBLAS_NUM_THREADS / OMP_NUM_THREADS or a thread limiter
    -- is yielded: the number of threads the engine may use itself
    (``FastNetwork(threads=...)``).  Otherwise BLAS is left alone and 1 is yielded.  The
    counts are restored on exit.

    A BLAS thread count is process-wide (OpenBLAS built with pthreads, as NumPy's is):
    other threads calling BLAS meanwhile are limited too.  Without a BLAS threadpoolctl
    can control this does nothing and yields 1.
    """
    widths = (*spec.affine_widths, spec.num_classes)
    largest = max(2.0 * batch_size * fan_in * width for fan_in, width in zip(spec.fan_ins, widths))
    controller = _blas_controller()
    if largest > SINGLE_THREAD_MAX_FLOPS or not controller.lib_controllers:
        yield 1
        return
    allowed = min(lib.num_threads for lib in controller.lib_controllers)
    with controller.limit(limits=1):
        yield max(1, allowed)
