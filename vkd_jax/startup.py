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

Teachers restored from model directories are never initialized:
:func:`vkd_jax.checkpoint.load_model` takes their shapes from ``jax.eval_shape``,
and :func:`vkd_jax.train_step.init_state` reads only the shapes of their features.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
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
        metrics)``: ``state`` donated, the arguments between (the teachers' variables)
        replicated, ``batch`` split over the mesh's data axis.
      manager: the stage's checkpoint manager (None without a ``workdir``).
    """

    state: Any
    start_step: int
    restored: bool
    step: Any
    manager: Any = None


def prepare(
    *,
    init: Callable[[jax.Array], Any],
    step: Callable[..., tuple[Any, Any]],
    rng: jax.Array,
    mesh: jax.sharding.Mesh,
    replicated_args: int = 1,
    workdir: str | None = None,
    max_to_keep: int = 2,
) -> Prepared:
    """Initializes or restores a training state and jits its step.

    Args:
      init: ``init(rng) -> state``, not jitted (e.g. a closure over
        :func:`vkd_jax.train_step.init_state`); jitted here with :func:`jit_init`.
      step: ``step(state, *replicated, batch) -> (state, metrics)``, not jitted.
      rng: the key ``init`` gets for a fresh state.
      mesh: the device mesh (state replicated, batch split over ``data``).
      replicated_args: how many arguments ``step`` takes between the state and the
        batch (distillation: 1, the teachers' variables; pretraining: 0).
      workdir: a stage directory: its ``checkpoints/`` are opened and the latest one
        restored instead of running ``init``. None: always a fresh state (benchmarks).
      max_to_keep: checkpoints the manager keeps.

    Returns:
      A :class:`Prepared`. Nothing is compiled for the step yet (it compiles on its
      first call, or when the caller lowers it).
    """
    repl = sharding.replicated(mesh)
    init_fn = jit_init(init, out_shardings=repl)
    manager, restored = None, None
    if workdir is not None:
        # The shapes and (replicated) shardings init would produce, without running it.
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
            jax.eval_shape(init_fn, rng),
        )
        manager = checkpoint.checkpoint_manager(
            os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep
        )
        restored = checkpoint.restore_state(manager, abstract)
    if restored is None:
        state, start_step = init_fn(rng), 0
    else:
        state, start_step = restored
    p_step = jax.jit(
        step,
        in_shardings=(repl,) * (1 + replicated_args) + (sharding.data_sharding(mesh),),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
    )
    return Prepared(
        state=state,
        start_step=start_step,
        restored=restored is not None,
        step=p_step,
        manager=manager,
    )


def abstract_tree(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` of every leaf (for closures that need only shapes)."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
