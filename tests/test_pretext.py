"""Self-supervised pretext tasks: label construction, losses against NumPy, pretraining runs."""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from vkd_jax import checkpoint, config_lib, mechanism, modes, pretext, pretrain, probe
from vkd_jax.data import pretext as pretext_data
from vkd_jax.pretext import common, prp, rotnet, rspnet, tdl, vcop

# --------------------------------------------------------------------- helpers


def _cfg(task: str, complexity: int = 3):
    """Data + pretext sections whose crop is the identity (the frame index is readable)."""
    c = config_lib.default_config()
    d = c.data
    d.crop_size = 8
    d.train_scale = (1.0, 1.0)
    d.train_aspect_ratio = (1.0, 1.0)
    d.mean, d.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    d.num_frames = 4
    d.frame_stride = 2
    c.pretext.task = task
    c.pretext.complexity = complexity
    return c


def _indexed_video(num_frames: int = 64, size: int = 8) -> tf.Tensor:
    """Frame t is the constant 2t + 1 (recoverable after any spatial crop)."""
    values = (2 * np.arange(num_frames) + 1).astype(np.uint8)
    return tf.constant(np.broadcast_to(values[:, None, None, None], (num_frames, size, size, 3)))


def _frame_index(clip) -> np.ndarray:
    """Frame indices of a normalized clip of :func:`_indexed_video` (mean 0, std 1)."""
    values = np.asarray(clip).mean(axis=(-3, -2, -1)) * 255.0
    return np.round((values - 1) / 2).astype(int)


def _views(task: str, c, seed: int = 0):
    spec, _ = pretext.build(c.pretext, c.data)
    fn = pretext_data.VIEWS[task]
    views, label = fn(_indexed_video(), tf.constant([seed, 7], tf.int64), c.data, c.pretext, spec)
    return spec, np.asarray(views), np.asarray(label)


# ------------------------------------------------------------ label construction


@pytest.mark.parametrize("complexity", [1, 2, 3])
def test_rotnet_views_are_exact_rotations_of_one_crop(complexity):
    c = _cfg("rotnet", complexity)
    c.data.train_scale = (0.5, 1.0)  # A real random crop: rotations still exact.
    c.data.train_aspect_ratio = (0.75, 1.333)
    video = tf.constant(np.random.default_rng(0).integers(0, 255, (16, 12, 12, 3), np.uint8))
    spec, _ = pretext.build(c.pretext, c.data)
    views, label = pretext_data.rotnet_views(
        video, tf.constant([3, 4], tf.int64), c.data, c.pretext, spec
    )
    k = rotnet.NUM_ROTATIONS[complexity]
    assert views.shape == (k, 4, 8, 8, 3)
    np.testing.assert_array_equal(label, np.arange(k))
    for i in range(k):
        np.testing.assert_array_equal(np.asarray(views[i]), np.rot90(views[0], i, axes=(1, 2)))
    assert spec.chance == pytest.approx(1 / k)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_vcop_permutation_table_is_complete_and_inverts(n):
    table = vcop.permutations(n)
    assert table.shape == (math.factorial(n), n)
    assert len({tuple(row) for row in table}) == math.factorial(n)
    assert [tuple(r) for r in table] == sorted(tuple(r) for r in table)  # Lexicographic.
    inv = vcop.inverse(table)
    rows = np.arange(len(table))[:, None]
    np.testing.assert_array_equal(table[rows, inv], np.broadcast_to(np.arange(n), table.shape))


@pytest.mark.parametrize("complexity", [1, 2, 3])
def test_vcop_views_are_ordered_clips_shuffled_by_the_labelled_permutation(complexity):
    c = _cfg("vcop", complexity)
    v = c.pretext.vcop
    n = vcop.NUM_CLIPS[complexity]
    for seed in range(5):
        spec, views, label = _views("vcop", c, seed)
        assert views.shape == (n, v.clip_frames, 8, 8, 3) and spec.num_classes == math.factorial(n)
        perm = vcop.permutations(n)[label[0]]
        ordered = views[vcop.inverse(perm)]  # Undo the shuffle: clip j back at position j.
        index = _frame_index(ordered)  # (n, clip_frames)
        np.testing.assert_array_equal(np.diff(index, axis=1), v.clip_stride)
        clip_span = (v.clip_frames - 1) * v.clip_stride + 1
        np.testing.assert_array_equal(np.diff(index[:, 0]), clip_span + v.interval)


@pytest.mark.parametrize("complexity", [1, 2, 3])
def test_prp_clips_have_the_labelled_dilation(complexity):
    c = _cfg("prp", complexity)
    seen = set()
    for seed in range(12):
        _, views, label = _views("prp", c, seed)
        rate = prp.RATES[complexity][label[0]]
        seen.add(rate)
        index = _frame_index(views[0])
        np.testing.assert_array_equal(np.diff(index), rate)
        assert index[-1] < 64  # The span fits: no loop around.
    assert seen == set(prp.RATES[complexity])


def test_rspnet_views_pair_speeds_and_share_the_key_window():
    c = _cfg("rspnet")
    r = c.pretext.rspnet
    r.color_jitter, r.grayscale_prob, r.crop_scale = 0.0, 0.0, (1.0, 1.0)
    speeds = set()
    for seed in range(8):
        _, views, _ = _views("rspnet", c, seed)
        q, k, k_neg = (_frame_index(v) for v in views)
        step_q, step_k, step_neg = np.diff(q)[0], np.diff(k)[0], np.diff(k_neg)[0]
        assert step_q == step_k  # q and k: one speed.
        assert {step_k, step_neg} == {1 * c.data.frame_stride, 2 * c.data.frame_stride}
        assert k[0] == k_neg[0]  # k and k_neg: the same window.
        speeds.add(step_q)
    assert len(speeds) == 2  # Both speeds are drawn for the query.


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_cvrl_interval_follows_the_decreasing_density(power):
    m = 40
    seeds = tf.data.Dataset.range(4000).map(lambda i: tf.stack([i, tf.constant(5, tf.int64)]))
    draws = np.array(
        list(seeds.map(lambda s: pretext_data.cvrl_interval(s, m, power)).as_numpy_iterator())
    )
    assert draws.min() >= 0 and draws.max() < m
    # CDF F(x) = (p+1)x/p - x^(p+1)/p at x = d/M (continuous, then floored).
    for frac in (0.1, 0.25, 0.5, 0.75):
        expected = (power + 1) * frac / power - frac ** (power + 1) / power
        assert np.mean(draws < frac * m) == pytest.approx(expected, abs=0.03)


def test_cvrl_views_are_two_clips_of_one_video():
    c = _cfg("cvrl")
    cv = c.pretext.cvrl
    cv.color_jitter, cv.grayscale_prob = 0.0, 0.0
    cv.blur_prob, cv.solarize_prob = (0.0, 0.0), (0.0, 0.0)
    cv.crop_scale, cv.aspect_ratio = (1.0, 1.0), (1.0, 1.0)
    for seed in range(5):
        _, views, _ = _views("cvrl", c, seed)
        for clip in views:
            np.testing.assert_array_equal(np.diff(_frame_index(clip)), c.data.frame_stride)


def test_tdl_negative_is_another_time_and_positive_the_same_frames():
    for seed in range(200):
        a, n = pretext_data.tdl_starts(tf.constant([seed, 1], tf.int64), 64, 7, 2)
        assert abs(int(a) - int(n)) >= 2
    c = _cfg("tdl")
    c.pretext.tdl.color_jitter = (0.0, 0.0, 0.0, 0.0)
    c.pretext.tdl.mixup_max = 0.0
    _, views, _ = _views("tdl", c, 3)
    anchor, positive, negative = (_frame_index(v) for v in views)
    np.testing.assert_array_equal(anchor, positive)
    assert abs(anchor[0] - negative[0]) >= c.pretext.tdl.min_gap


def test_tdl_anchor_is_mixed_with_one_of_its_frames():
    c = _cfg("tdl")
    c.pretext.tdl.color_jitter = (0.0, 0.0, 0.0, 0.0)
    c.pretext.tdl.mixup_max = 0.5
    _, views, _ = _views("tdl", c, 4)
    anchor, positive = views[0].mean((1, 2, 3)), views[1].mean((1, 2, 3))
    # anchor_t = (1 - lam) p_t + lam p_j for one j: differences shrink by (1 - lam).
    ratio = np.diff(anchor) / np.diff(positive)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert 0.5 <= ratio[0] <= 1.0


def test_unknown_task_and_complexity_fail_clearly():
    c = _cfg("rotnet")
    c.pretext.task = "jigsaw"
    with pytest.raises(ValueError, match="Unknown pretext.task 'jigsaw'"):
        pretext.build(c.pretext, c.data)
    c.pretext.task, c.pretext.complexity = "vcop", 4
    with pytest.raises(ValueError, match="complexity must be 1, 2 or 3"):
        pretext.build(c.pretext, c.data)


# ----------------------------------------------------------------------- losses


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_nt_xent_matches_numpy_and_is_permutation_invariant():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    t = 0.1
    z = _unit(np.concatenate([z1, z2]))
    sim = z @ z.T / t
    losses = []
    for i in range(12):
        j = (i + 6) % 12
        others = np.delete(sim[i], i)
        losses.append(-(sim[i, j] - np.log(np.exp(others).sum())))
    loss, acc = common.nt_xent(jnp.asarray(z1), jnp.asarray(z2), t)
    assert float(loss) == pytest.approx(np.mean(losses), rel=1e-5)
    perm = rng.permutation(6)
    loss_p, _ = common.nt_xent(jnp.asarray(z1[perm]), jnp.asarray(z2[perm]), t)
    assert float(loss_p) == pytest.approx(float(loss), rel=1e-6)
    # Perfectly aligned views: the positive is every anchor's nearest neighbour.
    _, acc_same = common.nt_xent(jnp.asarray(z1), jnp.asarray(z1), t)
    assert float(acc_same) == 1.0


def test_info_nce_matches_numpy_and_ignores_queue_order():
    rng = np.random.default_rng(1)
    q, k, queue = rng.normal(size=(4, 8)), rng.normal(size=(4, 8)), rng.normal(size=(10, 8))
    t = 0.07
    logits = (
        np.concatenate(
            [np.sum(_unit(q) * _unit(k), -1, keepdims=True), _unit(q) @ _unit(queue).T], 1
        )
        / t
    )
    expected = -_np_log_softmax(logits)[:, 0].mean()
    loss, _ = common.info_nce(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), t)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    shuffled, _ = common.info_nce(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue[rng.permutation(10)]), t
    )
    assert float(shuffled) == pytest.approx(float(loss), rel=1e-6)


def test_rspnet_loss_matches_numpy():
    rng = np.random.default_rng(2)
    b, d, t, margin = 5, 6, 0.07, 2.0
    q = {x: _unit(rng.normal(size=(b, 1, d))) for x in "am"}
    k = {x: _unit(rng.normal(size=(b, 2, d))) for x in "am"}
    queue = _unit(rng.normal(size=(7, d)))
    pos = np.sum(q["m"][:, 0] * k["m"][:, 0], -1) / t
    neg = np.sum(q["m"][:, 0] * k["m"][:, 1], -1) / t
    rsp = np.maximum(0, margin - (pos - neg)).mean()

    def ce(key):
        logits = np.concatenate(
            [np.sum(q["a"][:, 0] * key, -1)[:, None], q["a"][:, 0] @ queue.T], 1
        )
        return -_np_log_softmax(logits / t)[:, 0].mean()

    expected = 1.0 * (ce(k["a"][:, 0]) + ce(k["a"][:, 1])) + 0.5 * rsp
    to_j = lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)
    loss, metrics, enqueue = rspnet.loss(
        to_j(q), to_j(k), jnp.asarray(queue), temperature=t, margin=margin, rsp_weight=0.5
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["rsp_loss"]) == pytest.approx(rsp, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(np.mean(pos > neg))
    np.testing.assert_allclose(np.asarray(enqueue), k["a"][:, 1], rtol=1e-6)


def test_tdl_loss_matches_numpy():
    rng = np.random.default_rng(3)
    b, d, t = 4, 6, 0.07
    query = _unit(rng.normal(size=(b, 2, d)))
    keys = _unit(rng.normal(size=(b, 1, d)))
    queue = _unit(rng.normal(size=(9, d)))
    a, n, k = query[:, 0], query[:, 1], keys[:, 0]
    logits = (
        np.concatenate([np.sum(a * k, -1)[:, None], a @ queue.T, np.sum(a * n, -1)[:, None]], 1) / t
    )
    expected = -_np_log_softmax(logits)[:, 0].mean()
    loss, metrics, enqueue = tdl.loss(
        jnp.asarray(query), jnp.asarray(keys), jnp.asarray(queue), temperature=t
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(
        np.mean(np.sum(a * k, -1) > np.sum(a * n, -1))
    )
    np.testing.assert_allclose(np.asarray(enqueue), k, rtol=1e-6)


def test_classification_tasks_use_cross_entropy_of_their_labels():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = np.array([0, 2])
    expected = -(_np_log_softmax(logits)[[0, 1], labels]).mean()
    loss, metrics = rotnet.loss(jnp.asarray(logits), jnp.asarray(labels))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["accuracy"]) == 0.5


def test_vcop_head_classifies_permutations_from_pairs():
    head = vcop.Head(num_classes=24, hidden_dim=16)
    emb = jnp.ones((3, 4, 10))
    variables = head.init(jax.random.key(0), emb)
    assert head.apply(variables, emb).shape == (3, 24)
    assert variables["params"]["pair"]["kernel"].shape == (20, 16)  # Pairs: concat of two.
    assert variables["params"]["classifier"]["kernel"].shape == (6 * 16, 24)  # C(4, 2) pairs.


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (emulated) devices")
def test_contrastive_loss_over_a_sharded_global_batch_equals_one_device():
    from vkd_jax import sharding

    rng = np.random.default_rng(4)
    z = rng.normal(size=(8, 2, 16)).astype(np.float32)
    mesh = sharding.make_mesh(4)
    sharded = jax.device_put(jnp.asarray(z), sharding.data_sharding(mesh))
    assert len(sharded.sharding.device_set) == 4
    loss_fn = jax.jit(lambda x: common.nt_xent(x[:, 0], x[:, 1], 0.1)[0])
    single = jax.device_put(jnp.asarray(z), jax.devices()[0])
    assert float(loss_fn(sharded)) == pytest.approx(float(loss_fn(single)), rel=1e-6)
    # And equal to the NumPy reference: the negatives are the whole global batch.
    ref, _ = common.nt_xent(jnp.asarray(z[:, 0]), jnp.asarray(z[:, 1]), 0.1)
    assert float(loss_fn(sharded)) == pytest.approx(float(ref), rel=1e-6)


# ------------------------------------------------------------------- evaluation


def test_linear_probe_and_retrieval_on_known_features():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 6)) * 5
    train_y, test_y = np.repeat(np.arange(4), 10), np.repeat(np.arange(4), 5)
    train_x = centres[train_y] + rng.normal(size=(40, 6)) * 0.1
    test_x = centres[test_y] + rng.normal(size=(20, 6)) * 0.1
    out = probe.linear_probe(train_x, train_y, test_x, test_y, num_classes=4, steps=200)
    assert out["linear_probe_top1"] == 1.0
    # Retrieval against a brute-force NumPy reference, chunked with a padded last block.
    q, g = rng.normal(size=(23, 8)), rng.normal(size=(30, 8))
    qy, gy = rng.integers(0, 3, 23), rng.integers(0, 3, 30)
    got = probe.retrieval_recall(q, qy, g, gy, ks=(1, 5, 10), chunk_size=7)
    order = np.argsort(-(_unit(q) @ _unit(g).T), axis=1)
    for k in (1, 5, 10):
        expected = np.mean([(gy[order[i, :k]] == qy[i]).any() for i in range(23)])
        assert got[f"R@{k}"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="recall@10 needs at least 10"):
        probe.retrieval_recall(q, qy, g[:5], gy[:5])


# --------------------------------------------------------------- pretraining runs


def _pretrain_config(data_dir, task: str, steps: int = 4):
    c = tiny_config(data_dir)
    c.mode = "pretrain"
    c.pretext.task = task
    c.pretext.complexity = 2
    c.data.frame_stride = 1
    c.pretext.vcop.clip_frames, c.pretext.vcop.clip_stride, c.pretext.vcop.interval = 2, 1, 0
    c.pretext.rspnet.queue_size = c.pretext.tdl.queue_size = 32
    c.pretext.cvrl.hidden_dim = 16
    c.train.num_steps = steps
    c.train.eval_batch_size = 16
    config_lib.validate(c)
    return c


@pytest.mark.parametrize("task", ["rotnet", "vcop", "prp", "rspnet", "tdl"])
def test_every_task_pretrains_exports_and_reports(tiny_data_dir, tmp_path, task):
    c = _pretrain_config(tiny_data_dir, task, steps=2)
    if task == "prp":
        c.data.num_frames = 2  # Rates up to 4 fit the tiny videos' 8 frames.
    summary = modes.run(c, str(tmp_path))
    assert summary["task"] == task and 0.0 <= summary["pretext_accuracy"] <= 1.0
    assert np.isfinite(summary["pretext_loss"]) and summary["num_videos"] > 0
    meta = checkpoint.read_metadata(str(tmp_path / "model"))
    assert meta["pretext"] == {"task": task, "complexity": 2}
    assert mechanism.read_history(str(tmp_path))[-1]["step"] == 2


def test_pretraining_lowers_the_loss_and_fine_tunes(tiny_data_dir, tmp_path):
    # CVRL: instance discrimination learns within tens of steps even on the tiny clips
    # (RotNet cannot learn on `tiny`: its world has no "up"; `long` has one).
    c = _pretrain_config(tiny_data_dir, "cvrl", steps=40)
    c.train.log_every = 10
    c.train.eval_every = 20  # A held-out pretext evaluation at step 20 (and the final one).
    summary = modes.run(c, str(tmp_path / "pre"))
    history = mechanism.read_history(str(tmp_path / "pre"))
    assert [h["step"] for h in history] == [10, 20, 30, 40]
    assert [h["step"] for h in history if "eval/pretext_accuracy" in h] == [20]
    assert 0.0 <= history[1]["eval/pretext_accuracy"] <= 1.0 and "loss" in history[1]
    assert history[-1]["loss"] < history[0]["loss"] - 0.3
    assert summary["chance"] == pytest.approx(1 / 31)  # 2 x 16 clips: 31 candidates.
    assert json.loads((tmp_path / "pre" / pretrain.SUMMARY_FILE).read_text()) == summary
    # Fine-tuning (mode=train) starts from the pretrained backbone: with a zero learning
    # rate every backbone parameter stays the pretrained one.
    ft = tiny_config(tiny_data_dir)
    ft.mode = "train"
    ft.init_checkpoint = str(tmp_path / "pre" / "model")
    ft.optim.learning_rate = 0.0
    ft.train.num_steps = 2
    ft.train.eval_every = 1  # The periodic evaluation of a supervised stage.
    modes.run(ft, str(tmp_path / "ft"))
    (scored,) = [h for h in mechanism.read_history(str(tmp_path / "ft")) if "eval/top1" in h]
    assert scored["step"] == 1 and 0.0 <= scored["eval/top1"] <= scored["eval/top5"] <= 1.0
    _, pre, _ = checkpoint.load_model(str(tmp_path / "pre" / "model"))
    _, tuned, _ = checkpoint.load_model(str(tmp_path / "ft" / "model"))
    flat = lambda v: jax.tree_util.tree_leaves_with_path(v["params"])
    for (path, a), (_, b) in zip(flat(pre), flat(tuned), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    # The frozen evaluations run on the pretrained model directory.
    pr = tiny_config(tiny_data_dir)
    pr.mode = "probe"
    pr.init_checkpoint = str(tmp_path / "pre" / "model")
    pr.probe.steps = 50
    out = modes.run(pr, str(tmp_path / "probe"))
    assert 0.0 <= out["linear_probe_top1"] <= 1.0 and 0.0 <= out["R@1"] <= out["R@10"] <= 1.0
    assert out["pretext"] == {"task": "cvrl", "complexity": 2}


def test_pretraining_resumes_with_its_queue_and_momentum_encoder(tiny_data_dir, tmp_path):
    c = _pretrain_config(tiny_data_dir, "tdl", steps=4)
    first = modes.run(c, str(tmp_path))
    # Forget the outputs but keep the checkpoints: the rerun restores step 4 and trains
    # nothing, so the exported backbone is the same.
    os.remove(tmp_path / pretrain.SUMMARY_FILE)
    again = modes.run(c, str(tmp_path))
    assert again["params_sha256"] == first["params_sha256"]
    # The restored state has the queue of keys, not a fresh random one.
    manager = checkpoint.checkpoint_manager(str(tmp_path / "checkpoints"), max_to_keep=2)
    assert manager.latest_step() == 4
    restored = manager.restore(4)
    assert int(np.asarray(restored["queue_ptr"])) == (4 * c.train.batch_size) % 32
    manager.close()


def test_probe_without_a_checkpoint_fails_clearly(tiny_data_dir, tmp_path):
    c = tiny_config(tiny_data_dir)
    c.mode = "probe"
    with pytest.raises(checkpoint.CheckpointError, match="init_checkpoint"):
        modes.run(c, str(tmp_path))


def test_pretext_section_is_declared_and_commented():
    text = open(os.path.join(os.path.dirname(__file__), "..", "configs", "default.py")).read()
    section = text[text.index("c.pretext = p") : text.index("c.probe = pr")]
    previous = ""
    for line in section.splitlines():
        if line.strip().startswith("p.") and "ConfigDict()" not in line:
            # A comment on the line or on the line above.
            assert "#" in line or previous.startswith("#"), f"uncommented key: {line.strip()}"
        previous = line.strip()
    assert isinstance(config_lib.default_config().pretext, ml_collections.ConfigDict)


def test_config_validation_names_a_bad_pretext_setting_before_compute():
    c = config_lib.default_config()
    c.mode = "pretrain"
    c.pretext.task = "jigsaw"
    with pytest.raises(ValueError, match="Unknown pretext.task 'jigsaw'"):
        config_lib.validate(c)
    c.pretext.task, c.pretext.complexity = "prp", 0
    with pytest.raises(ValueError, match="pretext.complexity = 0: must be one of 1, 2, 3"):
        config_lib.validate(c)


@pytest.mark.parametrize("backbone", ["shufflenet3d/tiny", "shufflenet3d/v1_tiny", "r2plus1d/tiny"])
def test_the_seed_families_pretrain(tiny_data_dir, tmp_path, backbone):
    c = _pretrain_config(tiny_data_dir, "vcop", steps=1)
    c.pretext.complexity = 1
    c.student.name, c.student.variant = backbone.split("/")
    if backbone == "shufflenet3d/v1_tiny":  # v1 needs ceil(T / 2) divisible by 8.
        c.pretext.task, c.data.num_frames = "rotnet", 16
    summary = modes.run(c, str(tmp_path))
    assert summary["model"] == backbone and np.isfinite(summary["pretext_loss"])
    assert checkpoint.read_metadata(str(tmp_path / "model"))["variant"] == backbone.split("/")[1]
