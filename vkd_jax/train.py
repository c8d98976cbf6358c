"""One training stage: supervised training or distillation of one model, then evaluation.

Reads top to bottom: mesh -> dataset -> models (student, frozen teachers,
training-only heads) -> optimizer -> state (fresh or resumed) -> jitted step
-> loop (metrics, progress, checkpoints, preemption, non-finite guard) ->
export of the deployable student -> evaluation.

A stage's directory holds ``checkpoints/`` (resumable state), ``model/`` (the
exported student, loadable as a teacher), ``eval.json``, ``confusion.png``,
``metrics.jsonl`` and TensorBoard event files.

What the story uses lives next to what it serves: the stage description
(``Stage``, ``supervised_loss``) in :mod:`vkd_jax.stages`; teacher loading and
the SIGTERM guard in :mod:`vkd_jax.checkpoint`; the metrics history in
:mod:`vkd_jax.mechanism`; evaluation on the eval split in :mod:`vkd_jax.evaluation`;
the step in :mod:`vkd_jax.train_step`; the state's init or restore and the
jitted step in :mod:`vkd_jax.startup`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    errors,
    evaluation,
    mechanism,
    models,
    residual_fit,
    rundir,
    sharding,
    startup,
    storage,
    train_step,
)
from vkd_jax.data import pipeline
from vkd_jax.losses import objective
from vkd_jax.stages import Stage, compute_dtype, model_metadata

with _deps.extra("train", __name__):
    from clu import metric_writers, periodic_actions

# train.run(config, train.Stage(...)): the stage description lives in vkd_jax.stages.
__all__ = [
    "MECHANISM_FILE",
    "NonFiniteLossError",
    "Stage",
    "run",
    "student_variables",
    "train_loop",
]

MECHANISM_FILE = "mechanism.png"  # DATW weights, confidence, discrepancy, loss terms.


# Defined in the leaf module vkd_jax.errors; kept importable from here.
NonFiniteLossError = errors.NonFiniteLossError


def run(
    config: ml_collections.ConfigDict, stage: Stage, *, reuse_from: Sequence[str] = ()
) -> dict[str, Any]:
    """Trains (or resumes) one stage, exports its model and evaluates it.

    ``reuse_from``: folders searched, when the stage has not started, for a finished
    stage recorded with the same settings (``rundir.stage_settings``); one found is
    linked in as this stage (and evaluated on ``data.eval_split`` if it was not).

    Returns:
      The evaluation summary (accuracy, parameters, GMACs, ...) also written to
      ``<stage.workdir>/eval.json``. A finished stage is not run again: its
      stored summary is returned.
    """
    # Single-process only: with several, one would link while another checks the folder.
    if reuse_from and jax.process_count() == 1 and not storage.exists(stage.workdir):
        done = (evaluation.EVAL_FILE, os.path.join("model", checkpoint.METADATA_FILE))
        found = rundir.find_finished_stage(rundir.stage_settings(config, stage), reuse_from, done)
        if found is not None:
            logging.info("Stage %s: reusing %s (same settings)", stage.name, found)
            storage.makedirs(os.path.dirname(os.path.abspath(stage.workdir)))
            os.symlink(os.path.abspath(found), stage.workdir)
    # One process per stage folder: two tools (or two screen shards) given the same stage
    # would otherwise train it at once and mix their checkpoints.
    storage.makedirs(stage.workdir)
    with rundir.hold(stage.workdir):
        return _run_stage(config, stage)


def _run_stage(config: ml_collections.ConfigDict, stage: Stage) -> dict[str, Any]:
    # A stage's folder holds one config's run: resuming or skipping it with settings that
    # shape the model differently stops here (config.allow_config_change lets it go on).
    rundir.claim_stage(config, stage)
    eval_path = os.path.join(stage.workdir, evaluation.EVAL_FILE)
    model_dir = os.path.join(stage.workdir, "model")
    if storage.isfile(eval_path) and storage.isfile(
        os.path.join(model_dir, checkpoint.METADATA_FILE)
    ):
        logging.info("Stage %s already finished in %s; skipping", stage.name, stage.workdir)
        # Its stored accuracy holds only for the split it was measured on: asked for
        # another (e.g. the test split of a stage screened on validation), its exported
        # model is evaluated there.
        return evaluation.evaluate_again(
            config, stage.workdir, model_dir, what=f"stage {stage.name!r}"
        )
    storage.makedirs(stage.workdir)
    started = time.time()

    # ------------------------------------------------------------ mesh, data
    mesh = sharding.make_mesh(config.mesh.data)
    info = pipeline.dataset_info(config.data)
    local_batch = sharding.local_batch_size(config.train.batch_size)
    if config.train.batch_size % (mesh.size * config.optim.grad_accum_steps):
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must be divisible by devices "
            f"({mesh.size}) x optim.grad_accum_steps ({config.optim.grad_accum_steps})"
        )

    # ----------------------------------------------------------------- models
    dtype = compute_dtype(config)
    t, s = config.data.num_frames, config.data.crop_size
    student = models.get_model(
        stage.model.name,
        variant=stage.model.variant,
        num_classes=info.num_classes,
        dtype=dtype,
        input_size=(t, s, s),
    )
    loss_cfg = ml_collections.FrozenConfigDict(stage.loss)
    teachers, teacher_vars = checkpoint.load_teachers(
        stage.teachers,
        objective.required_teachers(loss_cfg),
        info.num_classes,
        dtype=dtype,
        clip=(config.data.num_frames, config.data.crop_size),
    )
    heads = objective.DistillationHeads(loss_cfg=loss_cfg, dtype=dtype)
    tx, schedule = train_step.make_optimizer(config.optim, stage.num_steps)

    # ------------------------------------------------------------- state, step
    repl = sharding.replicated(mesh)
    teacher_vars = jax.device_put(teacher_vars, repl)
    # Fitted constants of the objective (the SDD residual map), stored with the stage.
    constants = residual_fit.stage_constants(config, stage, teachers, teacher_vars)
    # The init reads only the teachers' shapes: it never runs them (vkd_jax.startup).
    t_abstract = startup.abstract_tree(teacher_vars)
    sample = jnp.zeros((2, t, s, s, 3), jnp.float32)
    rng = jax.random.key(config.seed)
    # The step's dropout key, an argument of the step (train_step.make_train_step).
    dropout_rng = sharding.replicated_key(jax.random.fold_in(rng, 2), mesh)
    prepared = startup.prepare(
        init=lambda r: train_step.init_state(
            rng=r,
            student=student,
            heads=heads,
            teachers=teachers,
            teacher_vars=t_abstract,
            tx=tx,
            video=sample,
        ),
        step=train_step.make_train_step(
            student=student,
            heads=heads,
            teachers=teachers,
            loss_cfg=loss_cfg,
            constants=constants,
            tx=tx,
            schedule=schedule,
            accum_steps=config.optim.grad_accum_steps,
        ),
        rng=jax.random.fold_in(rng, 1),
        mesh=mesh,
        replicated_args=2,  # The dropout key and the teachers' variables.
        workdir=stage.workdir,
        max_to_keep=config.train.max_to_keep,
        # The step's arguments (pipeline.train_dataset's batches): it compiles in the
        # background while the state is made and the input pipeline starts.
        example_args=(
            startup.abstract_tree(dropout_rng, keep_sharding=True),
            startup.abstract_tree(teacher_vars, keep_sharding=True),
            sharding.batch_spec(config.train.batch_size, (t, s, s), mesh),
        ),
        num_steps=stage.num_steps,
    )
    state, start_step, manager = prepared.state, prepared.start_step, prepared.manager
    if not prepared.restored and stage.init_checkpoint:
        state = _initialize_from(state, stage, tx, repl)

    # ------------------------------------------------------------------- loop
    writer = metric_writers.create_default_writer(
        stage.workdir, just_logging=jax.process_index() > 0
    )
    train_split = stage.train_split or config.data.train_split
    if start_step < stage.num_steps:
        logging.info(
            "Stage %s: training %s/%s for %d steps (from step %d) on %s, batch %d, teachers %s",
            stage.name,
            stage.model.name,
            stage.model.variant,
            stage.num_steps,
            start_step,
            train_split,
            config.train.batch_size,
            sorted(teachers) or "none",
        )
        data_cfg = config.data
        if train_split != data_cfg.train_split:
            data_cfg = ml_collections.ConfigDict(config.data.to_dict())
            data_cfg.train_split = train_split
        ds = pipeline.train_dataset(data_cfg, batch_size=local_batch, seed=config.seed)
        # The pipeline is deterministic for its seed: skipping the batches already
        # consumed puts a resumed run on exactly the data an uninterrupted one sees.
        batches = iter(ds.skip(start_step).as_numpy_iterator())
        state = train_loop(
            lambda state, batch: prepared.step(state, dropout_rng, teacher_vars, batch),
            state,
            batches,
            name=stage.name,
            workdir=stage.workdir,
            num_steps=stage.num_steps,
            start_step=start_step,
            train_cfg=config.train,
            mesh=mesh,
            manager=manager,
            writer=writer,
            evaluate=functools.partial(
                _eval_scores, config, student, info, mesh, evaluation.make_eval_step(student)
            ),
        )
    manager.close()

    # ------------------------------------------------------------ export, eval
    variables = student_variables(state)
    meta = model_metadata(config, stage.model, info.num_classes, info.class_names)
    meta["stage"] = stage.name
    checkpoint.save_model(model_dir, variables, meta)
    summary = evaluation.evaluate_model(config, student, variables, info, stage.workdir, mesh=mesh)
    summary.update(stage=stage.name, model=f"{stage.model.name}/{stage.model.variant}")
    summary["train_steps"] = stage.num_steps
    summary["train_split"] = train_split
    if teachers and jax.process_index() == 0:
        history = mechanism.read_history(stage.workdir)
        summary["datw"] = mechanism.summarize(history)
        mechanism.plot(
            history, os.path.join(stage.workdir, MECHANISM_FILE), title=f"{stage.name}: training"
        )
    summary["params_sha256"] = params_digest(variables)
    # Wall time of this run of the stage (a resumed stage counts only its last run).
    summary["seconds"] = time.time() - started
    writer.write_scalars(stage.num_steps, {"eval/top1": summary["top1"]})
    writer.flush()
    evaluation.write_eval(stage.workdir, summary)
    return summary


def student_variables(state: train_step.TrainState) -> dict[str, Any]:
    """The trained model's variables in a stage's state (no teachers, no heads)."""
    variables = {"params": state.params["student"]}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return variables


def _eval_scores(config, model, info, mesh, step, state) -> dict[str, float]:
    """Top-1/top-5 of the stage's model on the eval split (``train.eval_every``); ``step``
    is the stage's one ``make_eval_step``, compiled once for all its evaluations."""
    summary = evaluation.evaluate_split(
        config, model, student_variables(state), info, mesh=mesh, step=step
    )
    return {"top1": summary["top1"], "top5": summary["top5"]}


def _initialize_from(state, stage: Stage, tx, repl) -> train_step.TrainState:
    """Copies a model directory's variables into a fresh state (fine-tuning).

    Every variable whose path and shape match is taken from the checkpoint;
    the others (the classifier when the class count differs) keep their fresh
    initialization, and are logged.
    """
    meta = checkpoint.read_metadata(stage.init_checkpoint)
    if (meta["name"], meta["variant"]) != (stage.model.name, stage.model.variant):
        raise checkpoint.CheckpointError(
            f"init_checkpoint {stage.init_checkpoint!r} holds {meta['name']}/{meta['variant']} "
            f"but the trained model is {stage.model.name}/{stage.model.variant}"
        )
    _, loaded, _ = checkpoint.load_model(stage.init_checkpoint, what="init_checkpoint")
    fresh_flat = flax.traverse_util.flatten_dict(
        {"params": state.params["student"], "batch_stats": state.batch_stats}, sep="/"
    )
    loaded_flat = flax.traverse_util.flatten_dict(dict(loaded), sep="/")
    merged, kept_fresh = {}, []
    for path, value in fresh_flat.items():
        source = loaded_flat.get(path)
        if source is not None and tuple(source.shape) == tuple(value.shape):
            merged[path] = jnp.asarray(source, value.dtype)
        else:
            merged[path] = value
            kept_fresh.append(path)
    logging.info(
        "Initialized %s from %s; %d variables start fresh: %s",
        stage.name,
        stage.init_checkpoint,
        len(kept_fresh),
        kept_fresh,
    )
    if len(kept_fresh) == len(fresh_flat):
        raise checkpoint.CheckpointError(
            f"init_checkpoint {stage.init_checkpoint!r} shares no variable with the model"
        )
    tree = flax.traverse_util.unflatten_dict(merged, sep="/")
    params = dict(state.params, student=tree["params"])
    new = state.replace(
        params=params, batch_stats=tree.get("batch_stats", {}), opt_state=tx.init(params)
    )
    return jax.device_put(new, repl)


def train_loop(
    step_fn: Callable[[Any, Mapping[str, jax.Array]], tuple[Any, Mapping[str, jax.Array]]],
    state: Any,
    batches: Iterator[Mapping[str, np.ndarray]],
    *,
    name: str,
    workdir: str,
    num_steps: int,
    start_step: int,
    train_cfg: ml_collections.ConfigDict,
    mesh: Any,
    manager: Any,
    writer: metric_writers.MetricWriter,
    evaluate: Callable[[Any], Mapping[str, float]] | None = None,
) -> Any:
    """Runs steps ``start_step+1 .. num_steps`` of any stage; returns the last state.

    Args:
      step_fn: ``(state, global batch) -> (state, metrics)``, jitted; ``metrics`` holds
        scalars and a boolean ``finite`` (:func:`train_step.keep_if_finite`).
      state: the state at ``start_step`` (saved with ``checkpoint.save_state``).
      batches: this process's host batches (NumPy), from step ``start_step + 1`` on.
      name, workdir: the stage's name (log lines) and directory (metrics history).
      num_steps, start_step: the last step, and the one ``state`` is at.
      train_cfg: ``config.train``: ``log_every``, ``checkpoint_every``, ``eval_every``.
      mesh: the device mesh the batches are sharded over.
      manager, writer: the stage's checkpoint manager and metric writer.
      evaluate: ``state -> {metric: value}``, run every ``train_cfg.eval_every`` steps
        (0: never; the stage's final evaluation comes after the loop) and logged as
        ``eval/<metric>`` to the writer (TensorBoard) and the metrics history.

    Logs the means of the metrics every ``log_every`` steps, checkpoints every
    ``checkpoint_every`` steps and on SIGTERM (then exits), and stops with
    :class:`NonFiniteLossError` on a non-finite loss, the last checkpoint intact.
    """
    report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
    log_every = max(1, train_cfg.log_every)
    eval_every = int(train_cfg.get("eval_every", 0))
    sums, count, last_log = None, 0, time.time()
    pending = None  # (step, metrics) of the previous step, checked one step late.
    with checkpoint.Preemption() as preemption:
        for step in range(start_step + 1, num_steps + 1):
            batch = sharding.to_global(next(batches), mesh)
            state, metrics = step_fn(state, batch)
            # Reading the previous step's flag lets this step run meanwhile.
            if pending is not None:
                _check_finite(*pending, manager=manager)
            pending = (step, metrics)
            sums = metrics if sums is None else jax.tree_util.tree_map(jnp.add, sums, metrics)
            count += 1
            report(step)
            if step % log_every == 0 or step == num_steps:
                _check_finite(step, metrics, manager=manager)
                means = {k: float(v) / count for k, v in jax.device_get(sums).items()}
                means.pop("finite", None)
                rate = count / max(time.time() - last_log, 1e-9)
                eta = (num_steps - step) / max(rate, 1e-9)
                logging.info(
                    "[%s] step %d/%d  loss %.4f  acc %.3f  %.2f steps/s  ETA %s",
                    name,
                    step,
                    num_steps,
                    means.get("loss", float("nan")),
                    means.get("accuracy", float("nan")),
                    rate,
                    _fmt_time(eta),
                )
                writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
                mechanism.append_history(workdir, step, means)
                sums, count, last_log = None, 0, time.time()
            if evaluate is not None and eval_every and step % eval_every == 0 and step < num_steps:
                _check_finite(step, metrics, manager=manager)
                scores = {f"eval/{k}": float(v) for k, v in evaluate(state).items()}
                logging.info("[%s] step %d/%d  %s", name, step, num_steps, scores)
                writer.write_scalars(step, scores)
                mechanism.append_history(workdir, step, scores)
                last_log = time.time()  # The evaluation is not training time.
            if step % train_cfg.checkpoint_every == 0 or step == num_steps:
                _check_finite(step, metrics, manager=manager)
                checkpoint.save_state(manager, step, state)
            if preemption.requested:
                _check_finite(step, metrics, manager=manager)
                checkpoint.save_state(manager, step, state)
                manager.wait_until_finished()
                raise SystemExit(f"Preempted at step {step}; checkpoint saved, rerun to resume")
    manager.wait_until_finished()
    writer.flush()
    return state


def _check_finite(step: int, metrics: Mapping[str, jax.Array], *, manager) -> None:
    if bool(metrics["finite"]):
        return
    terms = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
    manager.wait_until_finished()
    raise NonFiniteLossError(
        f"Non-finite loss at step {step}: {terms}. The update was not applied; the last "
        f"checkpoint (step {manager.latest_step()}) is intact. Lower optim.learning_rate or "
        "check the inputs."
    )


def params_digest(tree: Any) -> str:
    """SHA-256 of this process's copy of a replicated pytree: a reproducibility fingerprint."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        local = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(local)).tobytes())
    return digest.hexdigest()


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
