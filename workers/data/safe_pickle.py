"""Load pickles that may hold only plain data and NumPy arrays, and never run code.

A pickle is a small program: its GLOBAL / STACK_GLOBAL opcodes import any callable
by name and REDUCE calls it, so ``pickle.load`` on a tampered dataset file can run
``os.system(...)``. ``load_numpy_pickle`` resolves globals through an exact allowlist
instead, so a file that names anything else stops at that opcode, before any call.

What the allowlist holds, and why. The CIFAR-10 "python version" batches were written
by Python 2 cPickle, protocol 2. Besides plain opcodes (dict, list, int, byte string)
they reference exactly three globals, the ones ``ndarray.__reduce__`` emits:

- ``numpy.core.multiarray._reconstruct``: builds an empty array of a given class;
- ``numpy.ndarray``: the class passed to it (its ``__setstate__`` then fills the data);
- ``numpy.dtype``: builds the element type (``dtype('u1')``) and its ``__setstate__``.

NumPy >= 2 writes the first as ``numpy._core.multiarray._reconstruct``, so both
spellings are accepted. Both resolve to the function itself, never through an import
or attribute walk of the module, so a dotted name cannot reach anything else.

Not admitted: ``_codecs.encode``. Python 3 uses it to write ``bytes`` at protocol 2,
but Python 2 wrote its ``str`` as BINSTRING opcodes, so real CIFAR batches never
reference it; leaving it out keeps the allowlist to what real files need.
Every value built from the allowed names is inert data (an array or a dtype);
what it contains is checked by the caller.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

import numpy as np

__all__ = ["ForbiddenGlobal", "ALLOWED_GLOBALS", "load_numpy_pickle"]

# The function ndarray.__reduce__ names, taken from NumPy itself rather than imported
# by module path (numpy.core is a deprecated alias in NumPy 2).
_RECONSTRUCT = np.empty(0).__reduce__()[0]

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
"""(module, name) -> object: the only globals a pickle may name."""


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside ``ALLOWED_GLOBALS``; nothing was called."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        super().__init__(
            f"refuses to load global {module}.{name}: only NumPy array reconstruction "
            f"({', '.join(sorted({f'{m}.{n}' for m, n in ALLOWED_GLOBALS}))}) is allowed"
        )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Called for every GLOBAL, STACK_GLOBAL, INST and OBJ opcode, i.e. for every
        # way a pickle can obtain a callable. Never delegate to super().find_class:
        # it imports modules and walks dotted names.
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent IDs are not supported")


def load_numpy_pickle(file: BinaryIO | bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle `file` (a binary file object or the pickle's bytes), admitting only
    the globals in ``ALLOWED_GLOBALS``.

    Args:
        file: an open binary file, or the pickled bytes.
        encoding: how Python 2 ``str`` objects are decoded. The default "bytes"
            keeps them as bytes, which is what NumPy array payloads need and what
            the CIFAR-10 documentation prescribes.

    Raises:
        ForbiddenGlobal: the pickle names any other global (nothing was executed).
        pickle.UnpicklingError, EOFError, ValueError, TypeError, ...: a truncated
            or malformed pickle, as raised by ``pickle.Unpickler``; callers should
            treat any exception as "malformed file".
    """
    if isinstance(file, (bytes, bytearray, memoryview)):
        file = io.BytesIO(file)
    return _NumpyOnlyUnpickler(file, encoding=encoding).load()
