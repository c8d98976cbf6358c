"""Self-supervised pretext tasks for video backbones (the teachers of Kumar et al. 2023).

Non-contrastive, with complexities C1-C3 (arXiv 2306.06010): :mod:`.rotnet`,
:mod:`.vcop`, :mod:`.prp`. Contrastive: :mod:`.rspnet`, :mod:`.cvrl`,
:mod:`.tdl`. Each module holds the task's head and loss (pure JAX) and states in
its docstring what it follows and which choices it makes; the views each task
feeds the backbone are sampled by :mod:`vkd_jax.data.pretext`. The training
stage is :mod:`vkd_jax.pretrain` (``config.mode=pretrain``); docs/pretext.md
has the commands.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import jax

from vkd_jax.pretext.common import TaskSpec

TASKS = ("rotnet", "vcop", "prp", "rspnet", "cvrl", "tdl")
NON_CONTRASTIVE = ("rotnet", "vcop", "prp")  # The tasks with complexities C1-C3.


def task_module(name: str) -> ModuleType:
    if name not in TASKS:
        raise ValueError(f"Unknown pretext.task {name!r}; known tasks: {', '.join(TASKS)}")
    return importlib.import_module(f"vkd_jax.pretext.{name}")


def build(pretext_cfg: Any, data_cfg: Any) -> tuple[TaskSpec, Any]:
    """The task's spec and head module, after checking the config's values."""
    module = task_module(pretext_cfg.task)
    if int(pretext_cfg.complexity) not in (1, 2, 3):
        raise ValueError(f"pretext.complexity must be 1, 2 or 3, got {pretext_cfg.complexity}")
    task = module.spec(pretext_cfg, data_cfg)
    return task, module.head(task, pretext_cfg)


def view_roles(task: TaskSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(views through the online encoder, views through the momentum encoder)."""
    if not task.momentum_encoder:
        return tuple(range(task.num_views)), ()
    module = task_module(task.name)
    return module.QUERY_VIEWS, module.KEY_VIEWS


def key_dim(task: TaskSpec, pretext_cfg: Any) -> int:
    """Width of the keys a momentum task queues."""
    return int(pretext_cfg[task.name].dim)


def objective(
    task: TaskSpec,
    pretext_cfg: Any,
    query_out: Any,
    key_out: Any,
    labels: jax.Array,
    queue: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array | None]:
    """The task's loss on its head outputs.

    Args:
      task: the spec.
      pretext_cfg: the ``pretext`` section.
      query_out: head outputs of the online views.
      key_out: head outputs of the momentum encoder's views (None without one).
      labels: ``(B, L)`` pretext labels from the input pipeline.
      queue: ``(K, dim)`` keys of earlier batches (momentum tasks).

    Returns:
      ``(loss, metrics, enqueue)``; ``enqueue`` is None unless the task queues keys.
    """
    module = task_module(task.name)
    if task.name in NON_CONTRASTIVE:
        logits = query_out.reshape(-1, query_out.shape[-1])
        loss, metrics = module.loss(logits, labels.reshape(-1))
        return loss, metrics, None
    if task.name == "cvrl":
        loss, metrics = module.loss(query_out, temperature=float(pretext_cfg.cvrl.temperature))
        return loss, metrics, None
    if task.name == "rspnet":
        c = pretext_cfg.rspnet
        return module.loss(
            query_out,
            key_out,
            queue,
            temperature=float(c.temperature),
            margin=float(c.margin),
            avid_weight=float(c.avid_weight),
            rsp_weight=float(c.rsp_weight),
        )
    return module.loss(query_out, key_out, queue, temperature=float(pretext_cfg.tdl.temperature))
