"""From built models to the first step: the state (fresh or restored) and the jitted step.

One helper, :func:`prepare`, used by supervised training and distillation
(:mod:`vkd_jax.train`), pretraining (:mod:`vkd_jax.pretrain`) and
``tools/benchmark.py``: it jits the state's initialization, restores the latest
training checkpoint instead of initializing when there is one (its shapes come
from ``jax.eval_shape`` of the init, which computes nothing), and jits the step
with the trainer's shardings (state replicated and donated, the teachers' variables
replicated, the batch split over the mesh's data axis).

Why the init is compiled differently: a model's ``init`` under ``jit`` is, after
XLA drops the unused forward pass, one threefry random-number generator per
parameter, and on the CPU LLVM's most expensive optimization level spends most
of a run's start-up compiling them. :func:`jit_init` compiles the init at XLA's
backend optimization level 1 on the CPU. The generated values are bit for bit
those of the default level (threefry is integer arithmetic; the conversion to
floats keeps its operation order), so a seed gives the same parameters as
before; ``tests/test_startup.py`` checks it. The train step keeps the default
level (it would run slower and round differently). Measurements: docs/benchmarks.md,
"Start-up time".

Why the step compiles in the background: the step's compile is the largest part of a
start (docs/benchmarks.md, "Start-up time") and needs only the shapes of its arguments.
Given them (``example_args``), :func:`prepare` compiles the step in a thread from the
state's abstract shapes while the caller's thread initializes (or restores) the state
and starts the input pipeline; the step's first call waits for it. XLA compiles
outside Python's lock, so on a CPU with two or more cores the two overlap. The
program is the one the first call would have compiled (same function, shapes,
shardings and convolution mode): JAX's cache hands it to that call. JAX's
thread-local settings (``jax.log_compiles()`` or ``jax.default_matmul_precision()``
used as contexts) stay with the caller's thread: under one, the first call compiles
its own program, correct but not sooner.

Teachers restored from model directories are never initialized:
:func:`vkd_jax.checkpoint.load_model` takes their shapes from ``jax.eval_shape``,
and :func:`vkd_jax.train_step.init_state` reads only the shapes of their features.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from vkd_jax import checkpoint, sharding

# XLA's backend (LLVM) optimization level for initializations on the CPU: same values
# as the default level 3, a fraction of its compile time.
INIT_OPT_LEVEL = 1


def init_compiler_options(platform: str | None = None) -> dict[str, Any]:
    """XLA options for compiling an initialization on ``platform`` (default: JAX's backend).

    Only the CPU gets a lower LLVM level; GPUs already lower threefry to one kernel
    (``main.fast_compile_settings``) and TPUs do not use LLVM for it.
    """
    platform = platform or jax.default_backend()
    return {"xla_backend_optimization_level": INIT_OPT_LEVEL} if platform == "cpu" else {}


def jit_init(fn: Callable[..., Any], *, out_shardings: Any = None) -> Any:
    """``jax.jit(fn)`` compiled with :func:`init_compiler_options` (for ``init`` functions)."""
    kwargs = {} if out_shardings is None else {"out_shardings": out_shardings}
    return jax.jit(fn, compiler_options=init_compiler_options() or None, **kwargs)


@dataclasses.dataclass
class Prepared:
    """What :func:`prepare` returns.

    Attributes:
      state: the restored training state, or a fresh one (replicated over the mesh).
      start_step: the restored checkpoint's step, 0 for a fresh state.
      restored: whether ``state`` came from a checkpoint.
      step: ``jax.jit`` of the step, ``step(state, *replicated, batch) -> (state,
        metrics)``: ``state`` donated, the arguments between (the dropout key, the
        teachers' variables) replicated, ``batch`` split over the mesh's data axis.
      manager: the stage's checkpoint manager (None without a ``workdir``).
    """

    state: Any
    start_step: int
    restored: bool
    step: Any
    manager: Any = None

    def compile_seconds(self) -> float | None:
        """The background compile's own duration, once it is done (None without
        ``example_args``, or before it finishes)."""
        return self.step.seconds() if isinstance(self.step, _CompiledInBackground) else None


class _CompiledInBackground:
    """The jitted step, compiled by a thread started at construction.

    A call waits for that compile (and raises its error, if any; once done, the wait
    is a check of the future) and then goes through the jitted function, whose cache
    holds the compiled program.
    ``lower`` and the other attributes are the jitted function's.
    """

    def __init__(self, jitted: Any, abstract_args: Sequence[Any]):
        self._jitted = jitted
        self._seconds: float | None = None
        context = contextvars.copy_context()  # The caller's convolution mode and the like.

        def compile_step():
            start = time.perf_counter()
            try:
                return context.run(lambda: jitted.lower(*abstract_args).compile())
            finally:
                self._seconds = time.perf_counter() - start

        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vkd-compile")
        self._future = pool.submit(compile_step)
        pool.shutdown(wait=False)

    def seconds(self) -> float | None:
        return self._seconds

    def compiled(self) -> Any:
        """The compiled step (``jax.stages.Compiled``), once the thread is done."""
        return self._future.result()

    def __call__(self, *args: Any) -> Any:
        self._future.result()
        return self._jitted(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jitted, name)


def prepare(
    *,
    init: Callable[[jax.Array], Any],
    step: Callable[..., tuple[Any, Any]],
    rng: jax.Array,
    mesh: jax.sharding.Mesh,
    replicated_args: int = 1,
    workdir: str | None = None,
    max_to_keep: int = 2,
    example_args: Sequence[Any] | None = None,
    num_steps: int | None = None,
) -> Prepared:
    """Initializes or restores a training state and jits its step.

    Args:
      init: ``init(rng) -> state``, not jitted (e.g. a closure over
        :func:`vkd_jax.train_step.init_state`); jitted here with :func:`jit_init`.
      step: ``step(state, *replicated, batch) -> (state, metrics)``, not jitted.
      rng: the key ``init`` gets for a fresh state.
      mesh: the device mesh (state replicated, batch split over ``data``).
      replicated_args: how many arguments ``step`` takes between the state and the
        batch (distillation: 2, the dropout key and the teachers' variables;
        pretraining: 1, the dropout key).
      workdir: a stage directory: its ``checkpoints/`` are opened and the latest one
        restored instead of running ``init``. None: always a fresh state (benchmarks).
      max_to_keep: checkpoints the manager keeps.
      example_args: ``jax.ShapeDtypeStruct`` trees of the step's arguments after the
        state (the replicated ones, then the global batch, with their shardings): the
        step then compiles in a background thread while the state is initialized
        (module docstring). None: it compiles on its first call, or when the caller
        lowers it.
      num_steps: the stage's last step; a state restored there trains no more, so
        nothing is compiled for it in the background.

    Returns:
      A :class:`Prepared`.
    """
    repl = sharding.replicated(mesh)
    init_fn = jit_init(init, out_shardings=repl)
    p_step = jax.jit(
        step,
        in_shardings=(repl,) * (1 + replicated_args) + (sharding.data_sharding(mesh),),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    manager, restored = None, None
    abstract = None
    if workdir is not None or example_args is not None:
        # The shapes and (replicated) shardings init would produce, without running it.
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl, weak_type=x.weak_type),
            jax.eval_shape(init_fn, rng),
        )
    if workdir is not None:
        manager = checkpoint.checkpoint_manager(
            os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep
        )
        restored = checkpoint.restore_state(manager, abstract)
    start_step = 0 if restored is None else restored[1]
    if example_args is not None and (num_steps is None or start_step < num_steps):
        p_step = _CompiledInBackground(p_step, (abstract, *example_args))
    state = init_fn(rng) if restored is None else restored[0]
    return Prepared(
        state=state,
        start_step=start_step,
        restored=restored is not None,
        step=p_step,
        manager=manager,
    )


def abstract_tree(tree: Any, *, keep_sharding: bool = False) -> Any:
    """``jax.ShapeDtypeStruct`` of every leaf (for closures that need only shapes);
    ``keep_sharding`` keeps each array's sharding and weak type too (what a compile
    ahead of the call needs: ``prepare``'s ``example_args``)."""
    if not keep_sharding:
        return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=x.sharding, weak_type=x.aval.weak_type
        ),
        tree,
    )
