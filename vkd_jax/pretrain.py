"""Self-supervised pretraining of a backbone on a pretext task (``config.mode=pretrain``).

Reads top to bottom like :mod:`vkd_jax.train`: mesh -> the task's views (tf.data)
-> backbone + task head -> optimizer -> state (fresh or resumed) -> jitted step
-> the shared training loop (progress, TensorBoard, checkpoints, SIGTERM,
non-finite guard) -> export of the backbone as a model directory -> pretext
accuracy on held-out clips.

The exported ``model/`` holds the backbone with an untrained classifier (its
metadata says so); ``--config.init_checkpoint`` fine-tunes it (``mode=train``:
the classifier starts fresh when the class count differs), and a fine-tuned
copy serves as a teacher. Tasks with a momentum encoder (RSPNet, TDL) keep it
and their queue of keys in the resumable state, not in the model directory.
"""

from __future__ import annotations

import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from vkd_jax import (
    _deps,
    checkpoint,
    evaluation,
    models,
    pretext,
    rundir,
    sharding,
    stages,
    startup,
    storage,
    train,
    train_step,
)
from vkd_jax.data import pipeline
from vkd_jax.data import pretext as pretext_data

with _deps.extra("train", __name__):
    from clu import metric_writers

SUMMARY_FILE = "pretext.json"


class PretrainState(flax.struct.PyTreeNode):
    """Everything a pretraining stage checkpoints.

    Attributes:
      step: optimizer updates done.
      params: ``{"backbone": ..., "head": ...}`` (trained).
      batch_stats: ``{"backbone": ..., "head": ...}`` batch-norm statistics.
      opt_state: optax state of ``params``.
      ema: the momentum encoder, an EMA of ``params`` (``{}`` for tasks without).
      queue: ``(K, dim)`` keys of earlier batches (a ``(1, 1)`` placeholder without).
      queue_ptr: where the next keys go.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema: Any
    queue: jax.Array
    queue_ptr: jax.Array


def encode(backbone, head, params, batch_stats, views, *, train: bool, rng):
    """Backbone on every view, pooled embeddings ``(B, V, D)`` -> head.

    Returns ``(head_out, new_batch_stats)`` (the input statistics when not training).
    """
    b, v = views.shape[:2]
    clips = views.reshape((b * v,) + views.shape[2:])
    rngs = {"dropout": rng}
    bvars = train_step.model_variables(params["backbone"], batch_stats["backbone"])
    hvars = train_step.model_variables(params["head"], batch_stats["head"])
    if train:
        (_, feats), bmut = backbone.apply(
            bvars, clips, train=True, mutable=["batch_stats"], rngs=rngs
        )
        emb = feats["pre_logits"].reshape(b, v, -1)
        out, hmut = head.apply(hvars, emb, train=True, mutable=["batch_stats"], rngs=rngs)
        new_stats = {
            "backbone": bmut.get("batch_stats", batch_stats["backbone"]),
            "head": hmut.get("batch_stats", batch_stats["head"]),
        }
        return out, new_stats
    _, feats = backbone.apply(bvars, clips, train=False)
    out = head.apply(hvars, feats["pre_logits"].reshape(b, v, -1), train=False)
    return out, batch_stats


def queue_length(pretext_cfg, task, global_batch: int) -> int:
    """The queue size trimmed to a multiple of the keys queued per step (as RSPNet does)."""
    if not task.momentum_encoder:
        return 0
    size = int(pretext_cfg[task.name].queue_size)
    size -= size % global_batch
    if size < global_batch:
        raise ValueError(
            f"pretext.{task.name}.queue_size={pretext_cfg[task.name].queue_size} must hold at "
            f"least one batch of keys ({global_batch})"
        )
    return size


def init_state(*, rng, backbone, head, task, pretext_cfg, tx, sample, queue_size) -> PretrainState:
    """Fresh parameters of backbone and head, optimizer state, EMA copy and queue."""
    r_backbone, r_head, r_queue = jax.random.split(rng, 3)
    bvars = backbone.init(r_backbone, sample, train=False)
    _, feats = backbone.apply(bvars, sample, train=False)
    query_views, _ = pretext.view_roles(task)
    emb = jnp.repeat(feats["pre_logits"][:, None], len(query_views), axis=1)
    hvars = head.init(r_head, emb, train=False)
    params = {"backbone": bvars["params"], "head": hvars.get("params", {})}
    stats = {"backbone": bvars.get("batch_stats", {}), "head": hvars.get("batch_stats", {})}
    if task.momentum_encoder:
        ema = jax.tree_util.tree_map(jnp.copy, params)
        dim = pretext.key_dim(task, pretext_cfg)
        queue = jax.random.normal(r_queue, (queue_size, dim), jnp.float32)
        queue = queue / jnp.linalg.norm(queue, axis=-1, keepdims=True)
    else:
        ema, queue = {}, jnp.zeros((1, 1), jnp.float32)
    return PretrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state=tx.init(params),
        ema=ema,
        queue=queue,
        queue_ptr=jnp.zeros((), jnp.int32),
    )


def make_pretrain_step(*, backbone, head, task, pretext_cfg, tx, schedule):
    """``step(state, rng, batch) -> (state, metrics)``, not jitted.

    As the supervised step (:func:`vkd_jax.train_step.make_train_step`): ``rng`` is the
    run's dropout key, an argument so that seeds share one compiled program, and a
    non-finite loss or gradient leaves the state unchanged and reports ``finite = False``.
    """
    query_views, key_views = pretext.view_roles(task)
    momentum = float(pretext_cfg[task.name].momentum) if task.momentum_encoder else 0.0

    def loss_fn(params, state, batch, step_rng):
        views = batch["views"]
        run = lambda p, bs, idx, **kw: encode(
            backbone, head, p, bs, views[:, np.asarray(idx)], **kw
        )
        q_out, stats = run(params, state.batch_stats, query_views, train=True, rng=step_rng)
        k_out = None
        if key_views:
            # MoCo's key encoder: BN in training mode on the key batch, statistics discarded.
            k_out, _ = run(state.ema, state.batch_stats, key_views, train=True, rng=step_rng)
            k_out = jax.lax.stop_gradient(k_out)
        loss, metrics, enqueue = pretext.objective(
            task, pretext_cfg, q_out, k_out, batch["label"], state.queue
        )
        return loss, (metrics, stats, enqueue)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: PretrainState, rng: jax.Array, batch):
        step_rng = jax.random.fold_in(rng, state.step)
        (loss, (metrics, stats, enqueue)), grads = grad_fn(state.params, state, batch, step_rng)
        params, opt_state = train_step.optimizer_update(tx, grads, state.opt_state, state.params)
        ema, queue, ptr = state.ema, state.queue, state.queue_ptr
        if task.momentum_encoder:
            ema = jax.tree_util.tree_map(
                lambda e, p: momentum * e + (1.0 - momentum) * p, state.ema, params
            )
            queue = jax.lax.dynamic_update_slice(queue, enqueue.astype(queue.dtype), (ptr, 0))
            ptr = (ptr + enqueue.shape[0]) % queue.shape[0]
        new_state = PretrainState(
            step=state.step + 1,
            params=params,
            batch_stats=stats,
            opt_state=opt_state,
            ema=ema,
            queue=queue,
            queue_ptr=ptr,
        )
        new_state, guard = train_step.keep_if_finite(new_state, state, loss, grads)
        return new_state, dict(metrics, **guard, loss=loss, learning_rate=schedule(state.step))

    return step


def make_eval_step(*, backbone, head, task, pretext_cfg):
    """Held-out pretext metrics: every view through the online encoder, ``train=False``."""
    query_views, key_views = pretext.view_roles(task)

    @jax.jit
    def step(state: PretrainState, batch):
        views = batch["views"]
        run = lambda idx: encode(
            backbone,
            head,
            state.params,
            state.batch_stats,
            views[:, np.asarray(idx)],
            train=False,
            rng=jax.random.key(0),
        )[0]
        q_out = run(query_views)
        k_out = run(key_views) if key_views else None
        loss, metrics, _ = pretext.objective(
            task, pretext_cfg, q_out, k_out, batch["label"], state.queue
        )
        return dict(metrics, loss=loss)

    return step


def build_backbone(config, spec, task, num_classes: int):
    s = int(config.data.crop_size)
    return models.get_model(
        spec.name,
        variant=spec.variant,
        num_classes=num_classes,
        dtype=stages.compute_dtype(config),
        input_size=(task.num_frames, s, s),
    )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pretrains (or resumes) ``config.train_model``'s architecture on ``config.pretext``.

    Trains on ``data.train_split`` without its labels, exports ``<workdir>/model``
    and writes the held-out pretext accuracy (``pretext.eval_split``) to
    ``<workdir>/pretext.json``. A finished stage is not run again.
    """
    rundir.claim(  # One config's run per folder (see vkd_jax.rundir).
        workdir,
        rundir.pretrain_settings(config, stages.trained_spec(config)),
        allow_change=bool(config.get("allow_config_change", False)),
        name="pretrain",
        config=config,
    )
    summary_path = os.path.join(workdir, SUMMARY_FILE)
    model_dir = os.path.join(workdir, "model")
    if storage.isfile(summary_path) and storage.isfile(
        os.path.join(model_dir, checkpoint.METADATA_FILE)
    ):
        logging.info("Pretraining in %s already finished; skipping", workdir)
        return storage.read_json(summary_path)
    storage.makedirs(workdir)
    started = time.time()
    pcfg = ml_collections.FrozenConfigDict(config.pretext)
    spec = stages.trained_spec(config)
    task, head = pretext.build(pcfg, config.data)
    num_steps = int(config.train.num_steps)
    name = f"pretrain_{task.name}_c{pcfg.complexity}"

    # ------------------------------------------------------------ mesh, data
    mesh = sharding.make_mesh(config.mesh.data)
    info = pipeline.dataset_info(config.data)
    global_batch = int(config.train.batch_size)
    local_batch = sharding.local_batch_size(global_batch)

    # ----------------------------------------------------------------- models
    backbone = build_backbone(config, spec, task, info.num_classes)
    tx, schedule = train_step.make_optimizer(config.optim, num_steps)
    queue_size = queue_length(pcfg, task, global_batch)
    s = int(config.data.crop_size)
    sample = jnp.zeros((2, task.num_frames, s, s, 3), jnp.float32)
    rng = jax.random.key(config.seed)
    prepared = startup.prepare(
        init=lambda r: init_state(
            rng=r,
            backbone=backbone,
            head=head,
            task=task,
            pretext_cfg=pcfg,
            tx=tx,
            sample=sample,
            queue_size=queue_size,
        ),
        step=make_pretrain_step(
            backbone=backbone,
            head=head,
            task=task,
            pretext_cfg=pcfg,
            tx=tx,
            schedule=schedule,
        ),
        rng=jax.random.fold_in(rng, 1),
        mesh=mesh,
        replicated_args=1,  # The dropout key.
        workdir=workdir,
        max_to_keep=config.train.max_to_keep,
    )
    state, start_step, manager = prepared.state, prepared.start_step, prepared.manager

    # ------------------------------------------------------------------- loop
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if start_step < num_steps:
        logging.info(
            "Stage %s: pretraining %s/%s on %s of %s for %d steps (from %d), batch %d videos: %s",
            name,
            spec.name,
            spec.variant,
            config.data.train_split,
            config.data.name,
            num_steps,
            start_step,
            global_batch,
            pretext_data.describe(task),
        )
        ds = pretext_data.pretext_dataset(
            config.data,
            pcfg,
            task,
            split=config.data.train_split,
            batch_size=local_batch,
            seed=config.seed,
        )
        batches = iter(ds.skip(start_step).as_numpy_iterator())
        dropout_rng = sharding.replicated_key(jax.random.fold_in(rng, 2), mesh)
        state = train.train_loop(
            lambda state, batch: prepared.step(state, dropout_rng, batch),
            state,
            batches,
            name=name,
            workdir=workdir,
            num_steps=num_steps,
            start_step=start_step,
            train_cfg=config.train,
            mesh=mesh,
            manager=manager,
            writer=writer,
            evaluate=lambda state: _pretext_scores(
                evaluate_pretext(config, pcfg, task, backbone, head, state, mesh)
            ),
        )
    manager.close()

    # ------------------------------------------------------------ export, eval
    variables = train_step.model_variables(state.params["backbone"], state.batch_stats["backbone"])
    meta = stages.model_metadata(config, spec, info.num_classes, info.class_names)
    meta.update(
        stage=name,
        pretext={"task": task.name, "complexity": int(pcfg.complexity)},
        classifier="untrained: self-supervised backbone, fine-tune before use",
    )
    checkpoint.save_model(model_dir, variables, meta)
    summary = evaluate_pretext(config, pcfg, task, backbone, head, state, mesh)
    summary.update(
        stage=name,
        model=f"{spec.name}/{spec.variant}",
        task=task.name,
        complexity=int(pcfg.complexity),
        description=pretext_data.describe(task),
        chance=pretext_data.chance_accuracy(task, int(config.train.eval_batch_size)),
        train_split=config.data.train_split,
        dataset=f"{config.data.name}/{config.data.builder_config}",
        train_steps=num_steps,
        params=evaluation.count_params(variables["params"]),
        params_sha256=train.params_digest(variables),
        seconds=time.time() - started,
    )
    writer.write_scalars(num_steps, {"eval/pretext_accuracy": summary["pretext_accuracy"]})
    writer.flush()
    if jax.process_index() == 0:
        storage.write_json(summary_path, summary, indent=2)
    print(
        f"{name} ({spec.name}/{spec.variant}): held-out pretext accuracy "
        f"{100 * summary['pretext_accuracy']:.1f}% (chance {100 * summary['chance']:.1f}%), "
        f"loss {summary['pretext_loss']:.4f}, {summary['num_videos']} videos"
    )
    return summary


def _pretext_scores(summary: dict[str, Any]) -> dict[str, float]:
    return {k: summary[k] for k in ("pretext_accuracy", "pretext_loss")}


def evaluate_pretext(config, pcfg, task, backbone, head, state, mesh) -> dict[str, Any]:
    """Mean pretext metrics over one deterministic pass of ``pretext.eval_split``."""
    eval_batch = int(config.train.eval_batch_size)
    ds = pretext_data.pretext_dataset(
        config.data,
        pcfg,
        task,
        split=pcfg.eval_split,
        batch_size=sharding.local_batch_size(eval_batch),
        seed=config.seed + 1,
        train=False,
    )
    step = make_eval_step(backbone=backbone, head=head, task=task, pretext_cfg=pcfg)
    sums, count = {}, 0
    for batch in ds.as_numpy_iterator():
        metrics = jax.device_get(step(state, sharding.to_global(batch, mesh)))
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += 1
    means = {k: v / max(count, 1) for k, v in sums.items()}
    return {
        "pretext_accuracy": means.get("accuracy", float("nan")),
        "pretext_loss": means.get("loss", float("nan")),
        "eval_metrics": means,
        "eval_split": pcfg.eval_split,
        "num_videos": count * eval_batch,
    }
