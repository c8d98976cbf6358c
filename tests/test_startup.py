"""vkd_jax.startup: the init keeps every seed's values, teachers are restored, never initialized."""

from __future__ import annotations

import logging
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import DEFAULT_XLA_OPTIONS, init_variables

from vkd_jax import checkpoint, config_lib, models, residual_fit, sharding, startup, train_step
from vkd_jax.losses import objective
from vkd_jax.models import vit

CLIP = (4, 16, 16)
# XLA's default CPU options (backend level 3, the MLIR fusion emitters): the reference
# these tests compare with. tests/conftest.py sets cheaper ones for the rest of the
# suite by flag; an explicit option wins.
DEFAULT = DEFAULT_XLA_OPTIONS


def _assert_identical(a, b):
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for (path, x), y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(
            np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path)
        )


@pytest.mark.parametrize(
    "name,variant", [("x3d", "tiny"), ("vit", "tiny"), ("mvit", "tiny"), ("r2plus1d", "tiny")]
)
def test_jit_init_gives_the_default_compilers_values_bit_for_bit(name, variant):
    """The lower optimization level changes the compile time, not a seed's parameters."""
    model = models.get_model(name, variant=variant, num_classes=5, input_size=CLIP)
    video = jnp.zeros((1, *CLIP, 3))
    init = lambda r: model.init(r, video, train=False)
    assert startup.init_compiler_options("cpu") == {"xla_backend_optimization_level": 1}
    key = jax.random.key(7)
    # jit_init's options over XLA's default emitters (what users get; the test flags
    # change the emitters), against the default compiler.
    users = {**DEFAULT, **startup.init_compiler_options("cpu")}
    _assert_identical(jax.jit(init, compiler_options=users)(key),
                      jax.jit(init, compiler_options=DEFAULT)(key))  # fmt: skip


def _distill_setup(teacher_vars_for_init):
    from configs import default

    cfg = config_lib.default_config()
    # The paper's objective, so that the state holds the training-only SDD branch too.
    loss_cfg = ml_collections.FrozenConfigDict(default.paper_objective(cfg.loss))
    student = models.get_model("x3d", variant="tiny", num_classes=5)
    teachers = {
        "cnn": models.get_model("x3d", variant="tiny_m", num_classes=5),
        "vit": models.get_model("vit", variant="tiny", num_classes=5, input_size=CLIP),
    }
    heads = objective.DistillationHeads(loss_cfg=loss_cfg)
    tx, schedule = train_step.make_optimizer(cfg.optim, 10)
    video = jnp.zeros((2, *CLIP, 3))
    return student, teachers, heads, tx, schedule, loss_cfg, video


def test_prepared_state_equals_the_previous_init_with_teachers_run():
    """The state from startup.prepare (teachers' shapes only, init at level 1) equals the
    former initialization (teachers run on the sample, default compiler) bit for bit."""
    student, teachers, heads, tx, schedule, loss_cfg, video = _distill_setup(None)
    teacher_vars = {
        n: init_variables(m, i, video[:1]) for i, (n, m) in enumerate(teachers.items())
    }
    before = jax.jit(
        lambda r, tv: train_step.init_state(
            rng=r,
            student=student,
            heads=heads,
            teachers=teachers,
            teacher_vars=tv,
            tx=tx,
            video=video,
        ),  # fmt: skip
        compiler_options=DEFAULT,
    )(jax.random.key(3), teacher_vars)
    t_abstract = startup.abstract_tree(teacher_vars)
    prepared = startup.prepare(
        init=lambda r: train_step.init_state(
            rng=r,
            student=student,
            heads=heads,
            teachers=teachers,
            teacher_vars=t_abstract,
            tx=tx,
            video=video,
        ),  # fmt: skip
        step=train_step.make_train_step(
            student=student,
            heads=heads,
            teachers=teachers,
            loss_cfg=loss_cfg,
            constants=residual_fit.shape_constants(loss_cfg, teachers, teacher_vars, video),
            tx=tx,
            schedule=schedule,
        ),  # fmt: skip
        rng=jax.random.key(3),
        mesh=sharding.make_mesh(1),
        replicated_args=2,
    )
    assert not prepared.restored and prepared.start_step == 0 and prepared.manager is None
    assert set(prepared.state.params["heads"]) == {"sdd_branch"}
    _assert_identical(prepared.state, before)
    # The jitted step takes the state, the dropout key and the teachers' variables as the
    # trainer passes them.
    rng = np.random.default_rng(0)
    batch = {"video": jnp.asarray(rng.standard_normal((2, *CLIP, 3)), jnp.float32),
             "label": jnp.array([0, 1])}  # fmt: skip
    state, metrics = prepared.step(prepared.state, jax.random.key(4), teacher_vars, batch)
    assert bool(metrics["finite"]) and int(state.step) == 1


def test_a_teacher_restored_from_a_model_directory_is_never_initialized(tmp_path, monkeypatch):
    """Loading teachers and preparing the state neither runs a teacher's init on values nor
    compiles anything for it: the shapes come from jax.eval_shape, the values from disk."""
    student, teachers, heads, tx, schedule, loss_cfg, video = _distill_setup(None)
    cfg = config_lib.default_config()
    saved = {}
    for i, (n, m) in enumerate(teachers.items()):
        saved[n] = init_variables(m, 10 + i, video[:1])
        name, variant = ("x3d", "tiny_m") if n == "cnn" else ("vit", "tiny")
        meta = {"name": name, "variant": variant, "num_classes": 5, "num_frames": CLIP[0],
                "crop_size": CLIP[1]}  # fmt: skip
        checkpoint.save_model(str(tmp_path / n), saved[n], meta)
        cfg.teachers[n].name, cfg.teachers[n].variant = name, variant
        cfg.teachers[n].checkpoint = str(tmp_path / n)

    concrete_calls = []
    original = vit.ViT.init

    def spy(self, rngs, *args, **kwargs):
        leaves = jax.tree_util.tree_leaves((rngs, args))
        if not any(isinstance(x, jax.core.Tracer) for x in leaves):
            concrete_calls.append(args)  # An init on values, not an abstract trace.
        return original(self, rngs, *args, **kwargs)

    monkeypatch.setattr(vit.ViT, "init", spy)
    compiles = []
    listener = lambda event, duration, **kw: compiles.append(event)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        modules, restored = checkpoint.load_teachers(
            cfg.teachers, ("cnn", "vit"), 5, dtype=jnp.float32, clip=CLIP[:2]
        )
        compiled_by_loading = [e for e in compiles if "backend_compile" in e]
        t_abstract = startup.abstract_tree(restored)
        startup.prepare(
            init=lambda r: train_step.init_state(
                rng=r,
                student=student,
                heads=heads,
                teachers=modules,
                teacher_vars=t_abstract,
                tx=tx,
                video=video,
            ),  # fmt: skip
            step=lambda s, tv, b: (s, {}),
            rng=jax.random.key(0),
            mesh=sharding.make_mesh(1),
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert isinstance(modules["vit"], vit.ViT)
    assert concrete_calls == [], "a teacher was initialized on values"
    assert compiled_by_loading == [], compiled_by_loading
    _assert_identical(restored, saved)


def test_step_compiled_in_the_background_is_the_one_the_first_call_runs(caplog):
    """With example_args, prepare compiles the step in a thread while the state is made:
    the first call waits for that program and compiles nothing else, the thread traces in
    the caller's convolution mode, and the step equals one compiled on its first call."""
    from vkd_jax.models import convolutions

    student, teachers, heads, tx, schedule, loss_cfg, video = _distill_setup(None)
    teacher_vars = {
        n: init_variables(m, i, video[:1]) for i, (n, m) in enumerate(teachers.items())
    }
    mesh = sharding.make_mesh(1)
    teacher_vars = jax.device_put(teacher_vars, sharding.replicated(mesh))
    rng = np.random.default_rng(0)
    batch = sharding.to_global(
        {"video": rng.standard_normal((2, *CLIP, 3)).astype(np.float32),
         "label": np.array([0, 1], np.int32)}, mesh)  # fmt: skip
    constants = residual_fit.shape_constants(loss_cfg, teachers, teacher_vars, video)

    def prepare(**kwargs):
        return startup.prepare(
            init=lambda r: train_step.init_state(rng=r, student=student, heads=heads,
                                                 teachers=teachers, tx=tx, video=video,
                                                 teacher_vars=startup.abstract_tree(teacher_vars)),
            step=train_step.make_train_step(student=student, heads=heads, teachers=teachers,
                                            loss_cfg=loss_cfg, constants=constants, tx=tx,
                                            schedule=schedule),
            rng=jax.random.key(3), mesh=mesh, replicated_args=2, **kwargs)  # fmt: skip

    dropout_rng = sharding.replicated_key(jax.random.key(4), mesh)

    with convolutions.convolutions("cpu"):
        plain = prepare()
        expected, _ = plain.step(plain.state, dropout_rng, teacher_vars, batch)
    traced_modes = []
    real_apply = convolutions.conv3d_apply

    def spy(*args, **kwargs):
        traced_modes.append(convolutions.mode())
        return real_apply(*args, **kwargs)

    example_args = (startup.abstract_tree(dropout_rng, keep_sharding=True),
                    startup.abstract_tree(teacher_vars, keep_sharding=True),
                    sharding.batch_spec(2, CLIP, mesh))  # fmt: skip
    # The global flag: jax.log_compiles() as a context is the calling thread's only.
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING), mock.patch.object(convolutions, "conv3d_apply", spy):
            with convolutions.convolutions("cpu"):  # Not the thread's default ("auto").
                prepared = prepare(example_args=example_args)
            state, metrics = prepared.step(prepared.state, dropout_rng, teacher_vars, batch)
            _assert_identical(state.params, expected.params)
            state, metrics = prepared.step(state, dropout_rng, teacher_vars, batch)
    finally:
        jax.config.update("jax_log_compiles", False)
    compiles = [r for r in caplog.records if "Finished XLA compilation of jit(step)" in r.message]
    assert len(compiles) == 1, [r.message[:80] for r in compiles]
    assert prepared.compile_seconds() > 0
    assert traced_modes and set(traced_modes) == {"cpu"}
    assert bool(metrics["finite"]) and int(state.step) == 2
