"""Cross-memory attach (Linux `process_vm_readv`): copy bytes straight out of another
process on the same node, one kernel copy, no staging buffer. The same mechanism MPI and
UCX use for intra-node transfers.

Permission: the reader needs ptrace access to the source process (same user, and under
Yama `ptrace_scope=1` the source must allow it, which `allow_readers()` does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_IOV_MAX = 1024
_PR_SET_PTRACER = 0x59616D61
_PR_SET_PTRACER_ANY = ctypes.c_ulong(-1).value


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [
    ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong,
]


class CrossMemoryError(OSError):
    """The source process is gone, or its memory cannot be read."""


def allow_readers() -> None:
    """Lets processes of the same user read this one under Yama's restricted ptrace."""
    _libc.prctl(_PR_SET_PTRACER, _PR_SET_PTRACER_ANY, 0, 0, 0)


def read_from_process(pid: int, copies: list[tuple[int, int, int]]) -> int:
    """Performs (local_address, remote_address, length) copies from process `pid` into
    this process; returns the bytes copied. Raises `CrossMemoryError` unless every byte
    arrived."""
    total = 0
    for start in range(0, len(copies), _IOV_MAX):
        batch = copies[start : start + _IOV_MAX]
        local = (_IoVec * len(batch))(*[_IoVec(dst, n) for dst, _, n in batch])
        remote = (_IoVec * len(batch))(*[_IoVec(src, n) for _, src, n in batch])
        expected = sum(n for _, _, n in batch)
        done = _libc.process_vm_readv(pid, local, len(batch), remote, len(batch), 0)
        if done != expected:
            err = ctypes.get_errno()
            raise CrossMemoryError(err, f"read {done} of {expected} bytes from pid {pid}: {os.strerror(err)}")
        total += done
    return total
