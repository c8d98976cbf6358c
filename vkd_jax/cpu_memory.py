"""Host memory of XLA's CPU runtime: every step reuses its temporaries' memory.

XLA's CPU runtime allocates a program's temporary buffers (one block, tens of MiB for
a small model's gradient and GiBs at the paper's 16x224x224) with ``malloc`` at every
call and frees them when the call ends. glibc serves a block that large with a fresh
``mmap`` and unmaps it on ``free``, so each call page-faults all of its temporaries in
again (measured in docs/benchmarks.md, "Host memory of the CPU runtime").

Two settings keep the memory instead:

* :func:`synchronous_cpu_dispatch` runs a computation on one CPU device on the calling
  thread (``jax_cpu_enable_async_dispatch=False``), so its temporaries come from
  glibc's main heap rather than from a worker thread's arena, which serves blocks over
  64 MiB by ``mmap`` whatever the settings. It must run before JAX's backends start.
  Computations over several devices stay asynchronous (JAX's rule), and unaffected.
* :func:`keep_host_memory` tells glibc (``mallopt``) never to serve an allocation by
  ``mmap`` and never to give freed heap memory back to the system, so the next call's
  temporaries land on pages already mapped.

:func:`reuse_host_memory` applies both, for a program that starts no distributed runtime
in between (``tools/benchmark.py``, ``tools/profile_step.py``); the CLI calls the two
around ``jax.distributed.initialize``.

The costs: the process keeps its peak host memory until it exits, and the host no
longer runs ahead of a one-device CPU computation (the trainer's per-step host work is
a batch copy and a few scalars). The values computed are the same. The CLI
(:mod:`vkd_jax.main`) and ``tools/benchmark.py`` apply both on a CPU backend; a user's
own training loop can call them the same way. Nothing changes on GPUs, TPUs, or a
C library other than glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

from absl import logging

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def _backends_started() -> bool:
    from jax._src import xla_bridge  # No public API tells whether the backends exist.

    return xla_bridge.backends_are_initialized()


def synchronous_cpu_dispatch() -> bool:
    """Runs one-device CPU computations on the calling thread (see the module docstring).

    Call it before JAX's first computation; returns whether it took effect (False, with
    a warning, once the backends have started: the setting is read when they start).
    """
    import jax

    if _backends_started():
        logging.warning(
            "synchronous_cpu_dispatch: JAX's backends have already started; "
            "CPU computations stay asynchronous"
        )
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def keep_host_memory() -> bool:
    """On a CPU backend with synchronous dispatch and glibc: freed host memory stays
    mapped for the next step (see the module docstring). Returns whether it applied."""
    import jax

    if jax.default_backend() != "cpu" or jax.config.read("jax_cpu_enable_async_dispatch"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    # mallopt takes an int; glibc reads M_TRIM_THRESHOLD's -1 as SIZE_MAX (never trim).
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))


def reuse_host_memory() -> bool:
    """Both settings, in order, before JAX's first computation: whether each step now
    reuses its temporaries' host memory (False off the CPU, without glibc, or once the
    backends have started)."""
    return synchronous_cpu_dispatch() and keep_host_memory()
