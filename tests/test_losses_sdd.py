"""Tests of losses.sdd (pooling, fixed projections, residual target, loss) and models.sdb."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vkd_jax import losses
from vkd_jax.models import sdb

GRID = (2, 2, 2)
DIM = 8


def _np_adaptive_avg_pool3d(x, grid):
    """Loop reference of PyTorch's AdaptiveAvgPool3d on (B, T, H, W, C)."""
    out = np.zeros((x.shape[0], *grid, x.shape[-1]))
    bins = []
    for in_size, out_size in zip(x.shape[1:4], grid):
        bins.append(
            [
                (math.floor(i * in_size / out_size), math.ceil((i + 1) * in_size / out_size))
                for i in range(out_size)
            ]
        )
    for a, (t0, t1) in enumerate(bins[0]):
        for b, (h0, h1) in enumerate(bins[1]):
            for c, (w0, w1) in enumerate(bins[2]):
                out[:, a, b, c] = x[:, t0:t1, h0:h1, w0:w1].mean(axis=(1, 2, 3))
    return out


def _feat(seed, shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
    "shape, grid",
    [
        ((2, 4, 4, 4, 3), (2, 2, 2)),  # divisible
        ((1, 5, 7, 3, 2), (2, 3, 2)),  # non-divisible: overlapping bins
        ((1, 1, 2, 3, 2), (2, 4, 3)),  # input smaller than the grid
    ],
)
def test_adaptive_avg_pool_matches_numpy_reference(shape, grid):
    x = _feat(0, shape)
    got = losses.adaptive_avg_pool3d(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), grid)
    assert got.shape == (shape[0], *grid, shape[-1]) and got.dtype == jnp.float32
    ref = _np_adaptive_avg_pool3d(
        np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)), grid
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_fixed_projection_is_seeded_orthogonal_and_scaled():
    q = losses.fixed_projection(16, 4, 0)
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-5)  # orthonormal columns
    np.testing.assert_array_equal(q, losses.fixed_projection(16, 4, 0))
    assert not np.allclose(q, losses.fixed_projection(16, 4, 1))
    wide = losses.fixed_projection(4, 16, 0)  # orthogonal rows scaled by sqrt(16 / 4)
    np.testing.assert_allclose(wide @ wide.T, 4.0 * np.eye(4), atol=1e-5)


def _np_phi(f, q):
    p = _np_adaptive_avg_pool3d(f.astype(np.float64), GRID)
    p = (p - p.mean(-1, keepdims=True)) / np.sqrt(p.var(-1, keepdims=True) + 1e-5)
    return p @ q


def test_sdd_target_and_loss_match_formula():
    f_vit, f_cnn = _feat(1, (2, 4, 3, 3, 12)), _feat(2, (2, 2, 3, 3, 6))
    q_vit = losses.fixed_projection(12, DIM, 0, losses.sdd._VIT_SALT)
    q_cnn = losses.fixed_projection(6, DIM, 0, losses.sdd._CNN_SALT)
    ref_r = _np_phi(f_vit, q_vit) - _np_phi(f_cnn, q_cnn)
    r = losses.sdd_target(jnp.asarray(f_vit), jnp.asarray(f_cnn), grid=GRID, dim=DIM, seed=0)
    np.testing.assert_allclose(r, ref_r, rtol=1e-4, atol=1e-5)
    pred = _feat(3, ref_r.shape)
    kw = dict(grid=GRID, dim=DIM, seed=0)
    mse = losses.sdd_loss(jnp.asarray(pred), jnp.asarray(f_vit), jnp.asarray(f_cnn), **kw)
    assert mse.shape == (2,)
    np.testing.assert_allclose(mse, ((pred - ref_r) ** 2).reshape(2, -1).mean(1), rtol=1e-4)
    sl1 = losses.sdd_loss(
        jnp.asarray(pred), jnp.asarray(f_vit), jnp.asarray(f_cnn), loss_type="smooth_l1", **kw
    )
    diff = np.abs(pred - ref_r)
    ref_sl1 = np.where(diff < 1, 0.5 * diff**2, diff - 0.5).reshape(2, -1).mean(1)
    np.testing.assert_allclose(sl1, ref_sl1, rtol=1e-4)
    cos = losses.sdd_loss(
        jnp.asarray(pred), jnp.asarray(f_vit), jnp.asarray(f_cnn), loss_type="cosine", **kw
    )
    c = (pred * ref_r).sum(-1) / (np.linalg.norm(pred, axis=-1) * np.linalg.norm(ref_r, axis=-1))
    np.testing.assert_allclose(cos, (1 - c).reshape(2, -1).mean(1), rtol=1e-4)
    # A perfect prediction has zero loss (of every type).
    for lt in losses.sdd.LOSS_TYPES:
        zero = losses.sdd_loss(r, jnp.asarray(f_vit), jnp.asarray(f_cnn), loss_type=lt, **kw)
        np.testing.assert_allclose(zero, 0.0, atol=1e-5)


def test_sdd_target_has_no_gradient_to_teachers_but_loss_reaches_prediction():
    f_vit, f_cnn = jnp.asarray(_feat(4, (2, 2, 2, 2, 6))), jnp.asarray(_feat(5, (2, 2, 2, 2, 4)))
    pred = jnp.asarray(_feat(6, (2, *GRID, DIM)))

    def loss(p, fv, fc):
        return losses.sdd_loss(p, fv, fc, grid=GRID, dim=DIM, seed=0).sum()

    gp, gv, gc = jax.jit(jax.grad(loss, (0, 1, 2)))(pred, f_vit, f_cnn)
    np.testing.assert_array_equal(gv, 0.0)
    np.testing.assert_array_equal(gc, 0.0)
    assert float(jnp.abs(gp).sum()) > 0


def test_sdd_adapter_loss_matches_phi_cnn():
    f_cnn = jnp.asarray(_feat(7, (2, 3, 2, 2, 4)))
    target = losses.phi_cnn(f_cnn, grid=GRID, dim=DIM, seed=3)
    pred = target + 0.5
    got = losses.sdd_adapter_loss(pred, f_cnn, grid=GRID, dim=DIM, seed=3)
    np.testing.assert_allclose(got, 0.25, rtol=1e-5)


def test_branch_output_shape_params_only_and_projections_not_trainable():
    branch = sdb.StructureDiscrepancyBranch(dim=DIM, grid=GRID)
    x = jnp.asarray(_feat(8, (2, 3, 3, 3, 5)), jnp.bfloat16)
    variables = jax.jit(lambda k: branch.init(k, x, train=True))(jax.random.key(0))
    assert set(variables) == {"params"}  # no batch_stats: LayerNorm only
    f_vit, f_cnn = jnp.asarray(_feat(9, (2, 2, 2, 2, 7))), jnp.asarray(_feat(10, (2, 2, 2, 2, 3)))
    # The projections enter the loss as constants: its only inputs are the three arrays
    # (no projection argument that an optimizer could see) ...
    jaxpr = jax.make_jaxpr(lambda p, a, b: losses.sdd_loss(p, a, b, grid=GRID, dim=DIM))(
        jnp.zeros((2, *GRID, DIM)), f_vit, f_cnn
    )
    assert len(jaxpr.jaxpr.invars) == 3
    # ... and none of the branch's trainable parameters is a projection.
    for q in (losses.fixed_projection(7, DIM, 0, 0), losses.fixed_projection(3, DIM, 0, 1)):
        for leaf in jax.tree_util.tree_leaves(variables):
            assert leaf.shape != q.shape or not np.allclose(leaf, q)

    @jax.jit
    def loss(params):
        pred = branch.apply({"params": params}, x, train=True)
        assert pred.shape == (2, *GRID, DIM) and pred.dtype == jnp.float32
        return losses.sdd_loss(pred, f_vit, f_cnn, grid=GRID, dim=DIM, seed=0).mean()

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    leaves = jax.tree_util.tree_leaves(grads)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in leaves)
    assert float(jnp.abs(grads["proj"]["kernel"]).sum()) > 0


def test_branch_non_local_starts_as_identity_and_learns():
    block = sdb.NonLocalBlock()
    x = jnp.asarray(_feat(11, (1, 2, 2, 2, 4)))
    v = jax.jit(block.init)(jax.random.key(1), x)
    np.testing.assert_allclose(jax.jit(block.apply)(v, x), x, atol=1e-6)  # zero-init LN scale
    g = jax.jit(jax.grad(lambda p: jnp.sum(block.apply({"params": p}, x) ** 2)))(v["params"])
    assert float(jnp.abs(g["norm"]["scale"]).sum()) > 0


def test_bfloat16_gives_float32_and_bad_loss_type_raises():
    f = jnp.asarray(_feat(12, (1, 2, 2, 2, 4)), jnp.bfloat16)
    r = losses.sdd_target(f, f, grid=GRID, dim=DIM)
    assert r.dtype == jnp.float32
    with pytest.raises(ValueError):
        losses.sdd_loss(r, f, f, grid=GRID, dim=DIM, loss_type="l3")


def test_sdd_loss_under_vmap_over_an_extra_leading_axis():
    f_vit = jnp.asarray(_feat(13, (3, 2, 2, 2, 2, 6)))  # (clips, B, T, H, W, C)
    f_cnn = jnp.asarray(_feat(14, (3, 2, 3, 2, 2, 4)))
    pred = jnp.asarray(_feat(15, (3, 2, *GRID, DIM)))

    def per_clip(p, a, b):
        return losses.sdd_loss(p, a, b, grid=GRID, dim=DIM)

    batched = jax.jit(jax.vmap(per_clip))(pred, f_vit, f_cnn)
    assert batched.shape == (3, 2)
    np.testing.assert_allclose(batched[1], per_clip(pred[1], f_vit[1], f_cnn[1]), rtol=1e-5)


# ------------------------------------------------------------ the residual target (eq. S1)


def _orthogonal_fixing_ones(c, seed):
    """An orthogonal ``Q`` with ``Q 1 = 1``: per-position normalization commutes with it,
    so ``N(P(f Q)) = N(P(f)) Q`` and ``f Q`` is an exact linear function after ``N o P``."""
    rng = np.random.default_rng(seed)
    ones = np.ones((c, 1)) / np.sqrt(c)
    basis = np.linalg.qr(np.concatenate([ones, rng.normal(size=(c, c - 1))], 1))[0][:, 1:]
    o = np.linalg.qr(rng.normal(size=(c - 1, c - 1)))[0]
    return (ones @ ones.T + basis @ o @ basis.T).astype(np.float32)


def _fit(batches_vit, batches_cnn, *, ridge=1e-6, dim=64):
    acc = losses.sdd.RidgeAccumulator()
    for fv, fc in zip(batches_vit, batches_cnn):
        x = losses.sdd.pooled_features(jnp.asarray(fc), GRID)
        y = losses.sdd.pooled_features(jnp.asarray(fv), GRID)
        acc.add(np.asarray(x).reshape(-1, x.shape[-1]), np.asarray(y).reshape(-1, y.shape[-1]))
    return losses.sdd.fit_residual_map(acc, ridge=ridge, dim=dim)


def test_residual_is_zero_when_the_vit_adds_nothing_and_random_projections_are_not():
    c = 16
    q = _orthogonal_fixing_ones(c, 0)
    cnn = [_feat(10 + i, (8, 4, 4, 4, c)) for i in range(6)]  # 6 x 64 positions
    residual_map = _fit([f @ q for f in cnn], cnn)
    assert residual_map["r2"] > 0.999 and residual_map["residual_variance"] < 1e-4
    f_cnn = _feat(99, (8, 4, 4, 4, c))  # held-out clips
    f_vit = f_cnn @ q
    r = losses.sdd.residual_target(jnp.asarray(f_vit), jnp.asarray(f_cnn), residual_map, grid=GRID)
    assert r.shape == (8, *GRID, c)
    y = losses.sdd.pooled_features(jnp.asarray(f_vit), GRID)
    assert float(jnp.var(y)) == pytest.approx(1.0, abs=0.01)  # unit-variance inputs
    assert float(jnp.var(r)) < 1e-3
    # The earlier form subtracts two unrelated random bases: about twice one's variance.
    old = losses.sdd_target(jnp.asarray(f_vit), jnp.asarray(f_cnn), grid=GRID, dim=c, seed=0)
    assert 1.5 < float(jnp.var(old)) < 2.5


def test_an_independent_vit_feature_keeps_its_variance():
    cnn = [_feat(20 + i, (8, 4, 4, 4, 12)) for i in range(6)]
    vit = [_feat(40 + i, (8, 2, 4, 4, 10)) for i in range(6)]
    residual_map = _fit(vit, cnn, ridge=1e-3)
    assert residual_map["r2"] < 0.1
    f_vit, f_cnn = _feat(98, (8, 2, 4, 4, 10)), _feat(97, (8, 4, 4, 4, 12))
    r = losses.sdd.residual_target(jnp.asarray(f_vit), jnp.asarray(f_cnn), residual_map, grid=GRID)
    y = losses.sdd.pooled_features(jnp.asarray(f_vit), GRID)
    assert float(jnp.var(r)) == pytest.approx(float(jnp.var(y)), rel=0.15)


def test_ridge_fit_matches_the_augmented_least_squares_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x @ rng.normal(size=(5, 3)) + 0.5 + rng.normal(size=(200, 3))
    acc = losses.sdd.RidgeAccumulator()
    for part in np.array_split(np.arange(200), 3):  # batched accumulation = one batch
        acc.add(x[part], y[part])
    lam = 0.3
    got = losses.sdd.fit_residual_map(acc, ridge=lam, dim=8)
    # min (1/N)||y - xA - b||^2 + lam ||A||^2 as one least-squares problem (b unpenalised).
    xa = np.concatenate([x, np.ones((200, 1))], 1)
    pen = np.concatenate([np.sqrt(200 * lam) * np.eye(5), np.zeros((5, 1))], 1)
    w = np.linalg.lstsq(np.concatenate([xa, pen]), np.concatenate([y, np.zeros((5, 3))]))[0]
    np.testing.assert_allclose(got["weight"], w[:5], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bias"], w[5], rtol=1e-5, atol=1e-6)
    r = y - xa @ w
    np.testing.assert_allclose(r.mean(0), 0.0, atol=1e-10)  # the bias is not penalised
    assert got["r2"] == pytest.approx(1 - r.var(0).sum() / y.var(0).sum(), rel=1e-6)
    np.testing.assert_array_equal(got["basis"], np.eye(3))  # C_vit <= dim: no reduction
    with pytest.raises(ValueError, match="no features"):
        losses.sdd.fit_residual_map(losses.sdd.RidgeAccumulator(), ridge=0.0, dim=2)


def test_pca_keeps_the_directions_the_vit_adds_most():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 6))
    v = np.linalg.qr(rng.normal(size=(12, 2)))[0]  # the residual lives here (plus noise)
    y = x @ rng.normal(size=(6, 12)) + (3 * rng.normal(size=(2000, 2))) @ v.T
    y += 0.05 * rng.normal(size=y.shape)
    acc = losses.sdd.RidgeAccumulator()
    acc.add(x, y)
    got = losses.sdd.fit_residual_map(acc, ridge=0.0, dim=2)
    u = got["basis"]
    assert u.shape == (12, 2)
    np.testing.assert_allclose(u.T @ u, np.eye(2), atol=1e-5)
    np.testing.assert_allclose(np.linalg.svd(v.T @ u)[1], 1.0, atol=1e-3)  # same subspace
    assert got["kept_variance"] > 0.99


def test_residual_loss_has_no_gradient_to_teachers_and_checks_widths():
    cnn = [_feat(60, (4, 2, 2, 2, 6))]
    residual_map = _fit([_feat(61, (4, 2, 2, 2, 10))], cnn, ridge=1e-2, dim=4)
    assert residual_map["basis"].shape == (10, 4)
    f_vit, f_cnn = jnp.asarray(_feat(62, (2, 2, 2, 2, 10))), jnp.asarray(_feat(63, (2, 2, 2, 2, 6)))
    pred = jnp.asarray(_feat(64, (2, *GRID, 4)))

    def loss(p, fv, fc):
        return losses.sdd_loss(p, fv, fc, grid=GRID, dim=64, residual_map=residual_map).sum()

    gp, gv, gc = jax.jit(jax.grad(loss, (0, 1, 2)))(pred, f_vit, f_cnn)
    np.testing.assert_array_equal(gv, 0.0)
    np.testing.assert_array_equal(gc, 0.0)
    assert float(jnp.abs(gp).sum()) > 0
    with pytest.raises(ValueError, match="residual map is 6 -> 10 channels"):
        losses.sdd.residual_target(f_vit, f_vit, residual_map, grid=GRID)


def test_residual_map_is_stored_with_the_stage_and_reloaded(tmp_path):
    import ml_collections

    from vkd_jax import residual_fit
    from vkd_jax.losses import objective

    residual_map = _fit([_feat(70, (2, 2, 2, 2, 5))], [_feat(71, (2, 2, 2, 2, 3))], dim=4)
    residual_fit.save_map(str(tmp_path / residual_fit.MAP_FILE), residual_map)
    loaded = residual_fit.load_map(str(tmp_path / residual_fit.MAP_FILE))
    for key in ("weight", "bias", "basis"):
        np.testing.assert_array_equal(loaded[key], residual_map[key])
    from configs import default

    loss = default.paper_objective(default.get_config().loss)
    stage = ml_collections.ConfigDict(dict(loss=loss, workdir=str(tmp_path), train_split=""))
    # The stored map is used as is: no teacher is run (there are none here).
    got = residual_fit.stage_constants(None, stage, None, None)[objective.SDD_RESIDUAL_MAP]
    np.testing.assert_array_equal(got["weight"], residual_map["weight"])
    loss.sdd.target = "random_projections"
    assert residual_fit.stage_constants(None, stage, None, None) == {}
