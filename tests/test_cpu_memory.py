"""vkd_jax.cpu_memory: with its two settings, repeated calls of a CPU program stop
page-faulting their temporaries in again (the mechanism docs/benchmarks.md measures).

Each case runs in a fresh process: the dispatch setting is read when JAX's backends
start, and the malloc setting is process-wide.
"""

import os
import platform
import statistics
import subprocess
import sys

import pytest

from tests.conftest import TEST_XLA_FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

glibc_linux = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the malloc setting is glibc's (mallopt); other C libraries are left alone",
)

# A program with 48 MiB of temporaries (over glibc's largest mmap threshold, 32 MiB):
# the page faults of each of 8 calls after a first one.
_PROGRAM = """
import resource, sys
import jax, jax.numpy as jnp
from vkd_jax import cpu_memory
applied = []
if sys.argv[1] == "settings":
    applied = [cpu_memory.synchronous_cpu_dispatch(), cpu_memory.keep_host_memory()]
x = jnp.ones((6 * 1024 * 1024,), jnp.float32)
barrier = jax.lax.optimization_barrier  # Each intermediate is a buffer of its own.
@jax.jit
def f(x):
    a = barrier(jnp.sin(x))
    b = barrier(jnp.cos(a) * x)
    c = barrier(a * b)
    return (a + b + c).sum()
f(x).block_until_ready()
faults = []  # Per call.
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
print("RESULT", applied, temp, *faults)
"""


def _run(mode: str):
    env = dict(os.environ, XLA_FLAGS=TEST_XLA_FLAGS)  # One CPU device, the tests' compiler.
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode], env=env, capture_output=True, text=True,
        timeout=300, check=True,
    )  # fmt: skip
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))
    applied, rest = line[len("RESULT ") :].split("] ")
    temp, *faults = (int(v) for v in rest.split())
    return applied + "]", temp, faults


@glibc_linux
def test_settings_stop_the_page_faults_of_repeated_calls():
    applied, temp, faults_with = _run("settings")
    assert applied == "[True, True]"
    assert temp > 40 * 2**20, temp  # The program does need large temporaries.
    _, _, faults_without = _run("plain")
    pages = temp // 4096
    # Without the settings every call faults all its temporaries in (12,289-12,358 pages
    # a call, measured). With them most calls fault none (0-65); now and then one call
    # still faults them in once, when a small allocation has split the freed block
    # (1 of 24 calls measured), hence the medians.
    assert statistics.median(faults_without) > 0.9 * pages, (faults_without, pages)
    assert statistics.median(faults_with) < pages // 10, (faults_with, pages)


def test_dispatch_setting_refused_once_backends_started(caplog):
    import jax

    from vkd_jax import cpu_memory

    jax.devices()  # This process's backends have started (the test session uses them).
    assert not cpu_memory.synchronous_cpu_dispatch()
    assert "already started" in caplog.text
