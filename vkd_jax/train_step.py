"""TrainState and the jitted train step shared by supervised training and distillation.

Supervised training is distillation with every term but cross-entropy switched
off, so there is one step. The teachers are frozen by construction: their
variables are a separate, non-donated argument, they run with ``train=False``
under ``stop_gradient``, and gradients are taken only with respect to
``TrainState.params`` = ``{"student": ..., "heads": ...}`` (the training-only
SDD branch and adapters live under ``heads``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from vkd_jax.losses import objective


class TrainState(flax.struct.PyTreeNode):
    """Everything a training stage checkpoints.

    Attributes:
      step: optimizer updates done (int32 scalar).
      params: ``{"student": ..., "heads": ...}``, the trainable subtrees.
      batch_stats: the student's batch-norm statistics (``{}`` for models without).
      opt_state: the optimizer's state of ``params`` (:class:`FlatOptimizer`).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class FlatOptimizer:
    """An optimizer whose elementwise work runs on one vector holding every parameter.

    ``optax.chain`` over a parameter tree emits a few kernels per leaf (clip, moments,
    decay, learning rate, the update, the finite guard): XLA compiles each on its own,
    and on the CPU that is most of a small model's step compile (a third of the default
    config's; docs/benchmarks.md, "Start-up time"). Here the gradients and parameters
    are raveled into one vector each, the same optax transformations run on it, and the
    new parameters are unraveled once. Every element sees the same operations as under
    the per-leaf chain; the values equal optax's to float32 rounding (the global norm
    sums in another order, and XLA may fuse a multiply-add differently;
    ``tests/test_train.py`` checks against ``optax.adamw``/``optax.sgd`` with the same
    mask and clipping).

    Attributes:
      stages: optax transformations applied in order to the flat vector; ``None``
        marks where weight decay (``weight_decay`` times the parameter, kernels only)
        is added.
      weight_decay: decoupled (adamw) or L2 (sgd) weight decay.
      clip_norm: global-norm clipping of the gradient tree (0: none).
    """

    stages: tuple[Any, ...]
    weight_decay: float = 0.0
    clip_norm: float = 0.0

    def init(self, params: Any) -> tuple[Any, ...]:
        """The optimizer state of ``params`` (flat vectors, one state per stage)."""
        flat, _ = ravel_pytree(params)
        return tuple(optax.EmptyState() if t is None else t.init(flat) for t in self.stages)

    def apply(self, grads: Any, state: tuple[Any, ...], params: Any) -> tuple[Any, Any]:
        """``(new params, new state)`` after one update with ``grads``."""
        flat_p, unravel = ravel_pytree(params)
        flat_g, _ = ravel_pytree(grads)
        if self.clip_norm > 0:
            # optax.clip_by_global_norm's arithmetic.
            g_norm = global_norm(grads)
            clipped = (flat_g / g_norm.astype(flat_g.dtype)) * self.clip_norm
            flat_g = jax.lax.select(g_norm < self.clip_norm, flat_g, clipped)
        # Kernels (ndim > 1) decay; biases, norms' scales and 1-D embeddings do not. A
        # constant of the tree's shapes.
        decays = np.concatenate(
            [np.full(np.size(p), np.ndim(p) > 1) for p in jax.tree_util.tree_leaves(params)]
        )
        new_state = []
        for t, s in zip(self.stages, state):
            if t is None:  # optax.add_decayed_weights under its mask.
                flat_g = jnp.where(decays, flat_g + self.weight_decay * flat_p, flat_g)
            else:
                flat_g, s = t.update(flat_g, s, flat_p)
            new_state.append(s)
        new_p = (flat_p + flat_g).astype(flat_p.dtype)  # optax.apply_updates
        return unravel(new_p), tuple(new_state)


def make_optimizer(optim_cfg: Any, num_steps: int) -> tuple[FlatOptimizer, Any]:
    """Optimizer and learning-rate schedule from the config's ``optim`` section.

    Linear warmup then cosine decay to ``min_learning_rate``; global-norm
    clipping; weight decay only on kernels (ndim > 1), never on biases, norms'
    scales or embeddings' 1-D vectors. ``adamw`` is ``optax.adamw``'s chain,
    ``sgd`` L2 decay then ``optax.sgd``'s, both run on one flat vector
    (:class:`FlatOptimizer`).

    Returns:
      ``(tx, schedule)``; ``tx.init(params)`` and :func:`optimizer_update` use it.
    """
    warmup = min(int(optim_cfg.warmup_steps), max(num_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=float(optim_cfg.learning_rate),
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=float(optim_cfg.min_learning_rate),
    )
    lr = optax.scale_by_learning_rate(schedule)
    if optim_cfg.optimizer == "adamw":
        stages = (optax.scale_by_adam(), None, lr)  # optax.adamw
    elif optim_cfg.optimizer == "sgd":
        stages = (None, optax.trace(decay=float(optim_cfg.momentum)), lr)  # L2, optax.sgd
    else:
        raise ValueError(f"Unknown optimizer {optim_cfg.optimizer!r}; use 'adamw' or 'sgd'")
    tx = FlatOptimizer(
        stages=stages,
        weight_decay=float(optim_cfg.weight_decay),
        clip_norm=max(float(optim_cfg.grad_clip_norm), 0.0),
    )
    return tx, schedule


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of every leaf together, as one reduction over the raveled tree (the
    optimizer's clipping and the finite guard share it; per-leaf norms would be a kernel
    each to compile)."""
    flat, _ = ravel_pytree(tree)
    return jnp.sqrt(jnp.sum(jnp.square(flat)))


def optimizer_update(tx, grads, opt_state, params):
    """``(new params, new optimizer state)`` of one ``tx`` update (a
    :class:`FlatOptimizer` or any optax transformation)."""
    if isinstance(tx, FlatOptimizer):
        return tx.apply(grads, opt_state, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def keep_if_finite(new_state, old_state, loss, grads):
    """``(state, metrics)``: ``new_state`` if the loss and the gradients are finite, else
    ``old_state`` (nothing non-finite is ever stored; the loop stops on ``finite``).

    Every training step (supervised, distillation, pretext) ends with this, so the
    non-finite guard is one piece of code. ``metrics`` holds ``finite`` and ``grad_norm``.
    """
    grad_norm = global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # One conditional rather than a select per leaf: the same state, fewer kernels to
    # compile.
    state = jax.lax.cond(finite, lambda: new_state, lambda: old_state)
    return state, {"finite": finite, "grad_norm": grad_norm}


def model_variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    out = {"params": params}
    if batch_stats:
        out["batch_stats"] = batch_stats
    return out


def teacher_outputs(
    teachers: Mapping[str, Any], teacher_vars: Mapping[str, Any], video: jax.Array
) -> dict[str, tuple[jax.Array, dict[str, jax.Array]]]:
    """Runs the frozen teachers (``train=False``, no gradient) on one batch."""
    out = {name: teachers[name].apply(teacher_vars[name], video, train=False) for name in teachers}
    return jax.lax.stop_gradient(out)


def init_state(
    *,
    rng: jax.Array,
    student: Any,
    heads: Any,
    teachers: Mapping[str, Any],
    teacher_vars: Mapping[str, Any],
    tx: Any,
    video: jax.Array,
) -> TrainState:
    """Initializes the student, the training-only heads and the optimizer state.

    ``video`` is a sample batch (only its shape matters). The heads need the
    teachers' feature shapes only: they come from ``jax.eval_shape``, so the
    teachers never run here and ``teacher_vars`` may be ``jax.ShapeDtypeStruct``
    leaves (what :func:`vkd_jax.startup.abstract_tree` gives).
    """
    rng_student, rng_heads = jax.random.split(rng)
    variables = student.init(rng_student, video, train=False)
    _, student_features = student.apply(variables, video, train=False)
    t_shapes = jax.eval_shape(lambda tv, v: teacher_outputs(teachers, tv, v), teacher_vars, video)
    # Zeros of the teachers' feature shapes: the heads' initial values depend on shapes only.
    t_features = jax.tree_util.tree_map(
        lambda a: jnp.zeros(a.shape, a.dtype), {n: o[1] for n, o in t_shapes.items()}
    )
    head_vars = heads.init(rng_heads, student_features, t_features, train=False)
    params = {"student": variables["params"], "heads": head_vars.get("params", {})}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


def make_train_step(
    *,
    student: Any,
    heads: Any,
    teachers: Mapping[str, Any],
    loss_cfg: Any,
    tx: Any,
    schedule: Callable[[jax.Array], jax.Array],
    accum_steps: int = 1,
    constants: Mapping[str, Any] | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
    """Returns ``step(state, rng, teacher_vars, batch) -> (state, metrics)`` (not yet jitted).

    ``rng`` is the run's dropout key; each step folds its step number into it. It is an
    argument rather than a closed-over value because ``jax.jit`` embeds a closed-over
    array as a constant of the program: every seed would compile a step of its own, and
    the persistent compilation cache could not hand one seed's program to another.

    The batch is split into ``accum_steps`` micro-batches whose gradients are
    averaged before one update (gradient accumulation). A non-finite loss or
    gradient leaves the state unchanged (the update is masked out) and reports
    ``metrics["finite"] = False``, so a NaN never reaches the parameters or a
    checkpoint; the host stops the run when it sees the flag. ``constants`` are the
    objective's fitted inputs (``objective.total_loss``), closed over as constants.
    """

    def loss_fn(params, batch_stats, teacher_vars, video, labels, step_rng):
        (logits, features), mutated = student.apply(
            model_variables(params["student"], batch_stats),
            video,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": step_rng},
        )
        t_out = teacher_outputs(teachers, teacher_vars, video)
        head_out = heads.apply(
            {"params": params["heads"]},
            features,
            {n: o[1] for n, o in t_out.items()},
            train=True,
            rngs={"dropout": step_rng},
        )
        loss, metrics = objective.total_loss(
            loss_cfg,
            labels=labels,
            student_logits=logits,
            student_features=features,
            teacher_outputs=t_out,
            head_outputs=head_out,
            constants=constants,
        )
        metrics = dict(metrics, loss=loss)
        return loss, (metrics, mutated.get("batch_stats", batch_stats))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, rng: jax.Array, teacher_vars, batch):
        step_rng = jax.random.fold_in(rng, state.step)
        video, labels = batch["video"], batch["label"]
        if accum_steps == 1:
            (loss, (metrics, batch_stats)), grads = grad_fn(
                state.params, state.batch_stats, teacher_vars, video, labels, step_rng
            )
        else:
            micro = lambda x: x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])
            videos, labelss = micro(video), micro(labels)

            def body(carry, inputs):
                batch_stats, grad_sum = carry
                i, v, y = inputs
                (_, (m, batch_stats)), g = grad_fn(
                    state.params, batch_stats, teacher_vars, v, y, jax.random.fold_in(step_rng, i)
                )
                return (batch_stats, jax.tree_util.tree_map(jnp.add, grad_sum, g)), m

            zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            (batch_stats, grads), metrics = jax.lax.scan(
                body, (state.batch_stats, zeros), (jnp.arange(accum_steps), videos, labelss)
            )
            grads = jax.tree_util.tree_map(lambda g: g / accum_steps, grads)
            metrics = jax.tree_util.tree_map(jnp.mean, metrics)
            loss = metrics["loss"]

        params, opt_state = optimizer_update(tx, grads, state.opt_state, state.params)
        new_state = TrainState(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        new_state, guard = keep_if_finite(new_state, state, loss, grads)
        return new_state, dict(metrics, **guard, learning_rate=schedule(state.step))

    return step
