"""Tests of vkd_jax.cka against NumPy implementations of the published formulas.

References written here, independently of the library's U-centering:
- Kornblith et al. 2019 (ICML), Eq. 3-4: HSIC_0 = tr(K H L H) / (n-1)^2, CKA = HSIC(K, L) /
  sqrt(HSIC(K, K) HSIC(L, L)); linear and RBF kernels as in their reference code (``gram_rbf``).
- Song et al. 2012 / Nguyen et al. 2021, Eq. 3: the unbiased HSIC_1 with the diagonal-free K~.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TEST_XLA_FLAGS

from vkd_jax import cka

# ------------------------------------------------------------------ NumPy reference formulas


def np_gram_linear(x):
    x = x.reshape(x.shape[0], -1)
    return x @ x.T


def np_gram_rbf(x, threshold=1.0):
    # Kornblith et al.'s reference gram_rbf, verbatim in NumPy.
    x = x.reshape(x.shape[0], -1)
    dot = x @ x.T
    sq_norms = np.diag(dot)
    sq_distances = -2 * dot + sq_norms[:, None] + sq_norms[None, :]
    sq_median = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold**2 * sq_median))


def np_hsic0(k, lm):
    """Gretton et al. 2005 / Kornblith Eq. 3: tr(K H L H) / (n - 1)^2."""
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ lm @ h) / (n - 1) ** 2


def np_hsic1(k, lm):
    """Song et al. 2012 (Nguyen et al. 2021, Eq. 3), term by term."""
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = lm - np.diag(np.diag(lm))
    # tr(K~ L~) = sum(K~ * L~) (symmetric) and 1^T K~ L~ 1 = (K~ 1) . (L~ 1): O(n^2), same terms.
    return (
        np.sum(kt * lt)
        + kt.sum() * lt.sum() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (kt.sum(1) @ lt.sum(0))
    ) / (n * (n - 3))


def np_cka(k, lm, unbiased):
    h = np_hsic1 if unbiased else np_hsic0
    return h(k, lm) / np.sqrt(h(k, k) * h(lm, lm))


def correlated(rng, n, dims, latent=8, noise=1.0):
    """Features of n examples sharing a latent factor, one (n, d) array per width in dims."""
    z = rng.normal(size=(n, latent))
    return [z @ rng.normal(size=(latent, d)) + noise * rng.normal(size=(n, d)) for d in dims]


# ------------------------------------------------------------------------------- properties


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_self_similarity_is_one(kernel, unbiased):
    x = np.random.default_rng(0).normal(size=(32, 6, 5)).astype(np.float32)
    fn = cka.linear_cka if kernel == "linear" else cka.rbf_cka
    assert float(fn(x, x, unbiased=unbiased)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_invariances(unbiased):
    rng = np.random.default_rng(1)
    x, y = correlated(rng, 64, [12, 12], latent=3)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    with jax.enable_x64(True):
        base = float(cka.linear_cka(x, y, unbiased=unbiased))
        assert 0.1 < base < 0.99
        # Orthogonal transformations and isotropic scaling leave CKA unchanged (Kornblith 2.1).
        assert float(cka.linear_cka(x @ q, y, unbiased=unbiased)) == pytest.approx(base, abs=1e-10)
        assert float(cka.linear_cka(x, 7.5 * y, unbiased=unbiased)) == pytest.approx(
            base, abs=1e-10
        )
        # ... but not a general invertible linear map (that would make any two full-rank
        # representations of n <= d examples identical): an anisotropic one changes it.
        a = q @ np.diag(np.geomspace(1e-2, 1e2, 12)) @ q.T
        assert np.linalg.matrix_rank(a) == 12
        moved = float(cka.linear_cka(x @ a, y, unbiased=unbiased))
        assert abs(moved - base) > 0.05
        assert float(cka.linear_cka(x, x @ a, unbiased=unbiased)) < 0.9


def test_rbf_invariances():
    rng = np.random.default_rng(2)
    x, y = correlated(rng, 48, [10, 10], latent=3)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    with jax.enable_x64(True):
        base = float(cka.rbf_cka(x, y, threshold=0.8))
        # The median bandwidth makes RBF CKA scale invariant; distances make it rotation invariant.
        assert float(cka.rbf_cka(3.0 * x @ q, y, threshold=0.8)) == pytest.approx(base, abs=1e-10)
        assert float(cka.rbf_cka(x, y, threshold=0.3)) != pytest.approx(base, abs=1e-3)


# --------------------------------------------------------------------- agreement with papers


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_matches_numpy_reference(kernel, unbiased):
    rng = np.random.default_rng(3)
    x, y = correlated(rng, 40, [30, 50], latent=4, noise=2.0)
    y = y.reshape(40, 5, 10)  # Any trailing shape is flattened per example.
    if kernel == "linear":
        k, lm = np_gram_linear(x), np_gram_linear(y)
    else:
        k, lm = np_gram_rbf(x, 0.7), np_gram_rbf(y, 0.7)
    want = np_cka(k, lm, unbiased)
    with jax.enable_x64(True):
        if kernel == "linear":
            got = cka.linear_cka(x, y, unbiased=unbiased)
        else:
            got = cka.rbf_cka(x, y, threshold=0.7, unbiased=unbiased)
        got_k = cka.gram(x, kernel=kernel, threshold=0.7)
        got_hsic = cka.hsic(got_k, cka.gram(y, kernel=kernel, threshold=0.7), unbiased=unbiased)
    assert float(got) == pytest.approx(want, abs=1e-6)
    np.testing.assert_allclose(np.asarray(got_k), k, atol=1e-9, rtol=1e-9)
    ref_hsic = np_hsic1(k, lm) if unbiased else np_hsic0(k, lm)
    assert float(got_hsic) == pytest.approx(ref_hsic, rel=1e-8)
    assert 0.05 < want < 0.95  # A non-trivial value, not a constant every estimator returns.


@pytest.mark.parametrize("unbiased", [False, True])
def test_feature_path_equals_gram_path(unbiased):
    rng = np.random.default_rng(4)
    x, y = correlated(rng, 64, [8, 13], latent=3)
    x = x + 5.0  # Uncentered features: the feature path must center them itself.
    with jax.enable_x64(True):
        by_features = float(cka.linear_cka(x, y, unbiased=unbiased, method="features"))
        by_gram = float(cka.linear_cka(x, y, unbiased=unbiased, method="gram"))
        auto = float(cka.linear_cka(x, y, unbiased=unbiased))
    assert by_features == pytest.approx(by_gram, abs=1e-12)
    assert auto == pytest.approx(np_cka(np_gram_linear(x), np_gram_linear(y), unbiased), abs=1e-10)


def test_unbiased_needs_four_examples():
    x = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError, match="n >= 4"):
        cka.linear_cka(x, x, unbiased=True)
    with pytest.raises(ValueError, match="n >= 4"):
        cka.rbf_cka(x, x, unbiased=True)
    with pytest.raises(ValueError, match="n >= 4"):
        cka.minibatch_cka_update(cka.minibatch_cka_init(1, 1), [x], [x], unbiased=True)
    # The biased estimator is defined for n = 3.
    assert np.isfinite(
        float(cka.linear_cka(np.eye(3, 4, dtype=np.float32), x[:, :4] + np.eye(3, 4)))
    )


# ---------------------------------------------------------------------------- minibatch CKA


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_all_pairs_equal_pairwise(kernel, unbiased):
    rng = np.random.default_rng(5)
    n = 24
    fa = correlated(rng, n, [7, 60, 12], latent=3)
    fa[1] = fa[1].reshape(n, 3, 4, 5)  # (n, T, H, W)-like map: flattened per example.
    fb = correlated(rng, n, [9, 16], latent=3)
    gram = np_gram_linear if kernel == "linear" else (lambda v: np_gram_rbf(v, 1.3))
    ref = np_hsic1 if unbiased else np_hsic0
    ka, kb = [gram(f) for f in fa], [gram(f) for f in fb]
    with jax.enable_x64(True):
        state = cka.minibatch_cka_init(3, 2, jnp.float64)
        state = cka.minibatch_cka_update(
            state, fa, fb, kernel=kernel, threshold=1.3, unbiased=unbiased
        )
        self_state = cka.minibatch_cka_update(
            cka.minibatch_cka_init(3, 3, jnp.float64),
            fa,
            None,
            kernel=kernel,
            threshold=1.3,
            unbiased=unbiased,
        )
        result = np.asarray(cka.minibatch_cka_result(state))
    want_xy = np.array([[ref(k, lm) for lm in kb] for k in ka])
    np.testing.assert_allclose(np.asarray(state.hsic_xy), want_xy, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(state.hsic_xx), [ref(k, k) for k in ka], rtol=1e-9)
    np.testing.assert_allclose(np.asarray(state.hsic_yy), [ref(lm, lm) for lm in kb], rtol=1e-9)
    want = np.array([[np_cka(k, lm, unbiased) for lm in kb] for k in ka])
    np.testing.assert_allclose(result, want, atol=1e-9)
    want_self = np.array([[ref(k, lm) for lm in ka] for k in ka])
    np.testing.assert_allclose(np.asarray(self_state.hsic_xy), want_self, rtol=1e-9, atol=1e-12)


def test_minibatch_accumulates_toward_full_data_value():
    rng = np.random.default_rng(6)
    batch, num_batches = 64, 48
    x, y = correlated(rng, batch * num_batches, [24, 40], latent=4, noise=3.0)
    full = np_cka(np_gram_linear(x), np_gram_linear(y), unbiased=True)
    state = cka.minibatch_cka_init(1, 1)
    singles, running = [], []
    for i in range(num_batches):
        sl = slice(i * batch, (i + 1) * batch)
        xb, yb = x[sl].astype(np.float32), y[sl].astype(np.float32)
        one = cka.minibatch_cka_update(cka.minibatch_cka_init(1, 1), [xb], [yb])
        singles.append(float(cka.minibatch_cka_result(one)[0, 0]))
        state = cka.minibatch_cka_update(state, [xb], [yb])
        running.append(float(cka.minibatch_cka_result(state)[0, 0]))
    assert int(state.count) == num_batches and int(state.examples) == batch * num_batches
    err_single = np.mean(np.abs(np.array(singles) - full))
    err_all = abs(running[-1] - full)
    # Averaging 48 minibatch HSICs shrinks the error like 1/sqrt(k) (here ~7x).
    assert err_all < 0.3 * err_single, (err_all, err_single)
    assert err_all < 0.02
    assert 0.1 < full < 0.9


def test_unbiased_minibatch_is_unbiased_for_independent_features():
    # Nguyen et al. 2021 Sec. 3.1: with the biased HSIC_0, minibatch CKA of independent
    # high-dimensional features stays far from 0 however many batches; HSIC_1 goes to 0.
    rng = np.random.default_rng(7)
    biased, unbiased = cka.minibatch_cka_init(1, 1), cka.minibatch_cka_init(1, 1)
    for _ in range(20):
        xb = rng.normal(size=(32, 256)).astype(np.float32)
        yb = rng.normal(size=(32, 256)).astype(np.float32)
        biased = cka.minibatch_cka_update(biased, [xb], [yb], unbiased=False)
        unbiased = cka.minibatch_cka_update(unbiased, [xb], [yb], unbiased=True)
    assert float(cka.minibatch_cka_result(biased)[0, 0]) > 0.5
    assert abs(float(cka.minibatch_cka_result(unbiased)[0, 0])) < 0.05


def test_float32_minibatch_with_large_feature_means():
    # Post-ReLU-like features with a large common offset: U-centering raw float32 Grams (entries
    # ~ 300^2 d) cancels away ~6e-5 of CKA here; centering the features first keeps ~1e-7.
    rng = np.random.default_rng(12)
    z = rng.normal(size=(128, 4))
    a = (z @ rng.normal(size=(4, 64)) + 2 * rng.normal(size=(128, 64)) + 300).astype(np.float32)
    b = (z @ rng.normal(size=(4, 48)) + 2 * rng.normal(size=(128, 48)) + 300).astype(np.float32)
    # Reference in float64 on the same float32 inputs (it is itself good to ~3e-7 at this offset).
    want = np_cka(np_gram_linear(a.astype(np.float64)), np_gram_linear(b.astype(np.float64)), True)
    state = cka.minibatch_cka_update(cka.minibatch_cka_init(1, 1), [a], [b])
    assert float(cka.minibatch_cka_result(state)[0, 0]) == pytest.approx(want, abs=5e-6)
    for method in ("gram", "features"):
        got = float(cka.linear_cka(a, b, unbiased=True, method=method))
        assert got == pytest.approx(want, abs=5e-6)
    assert 0.3 < want < 0.95


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_masked_entries_drop_out_exactly(kernel):
    rng = np.random.default_rng(8)
    fa = correlated(rng, 20, [5, 9], latent=2)
    fb = correlated(rng, 20, [6], latent=2)
    valid = 13
    mask = np.arange(20) < valid
    # Padding holds garbage that would change every statistic if it leaked in.
    pad = lambda f: np.where(mask[:, None], f, 1e3 * rng.normal(size=f.shape))
    with jax.enable_x64(True):
        init = cka.minibatch_cka_init(2, 1, jnp.float64)
        padded = cka.minibatch_cka_update(
            init, [pad(f) for f in fa], [pad(f) for f in fb], kernel=kernel, mask=mask
        )
        exact = cka.minibatch_cka_update(
            init, [f[:valid] for f in fa], [f[:valid] for f in fb], kernel=kernel
        )
    for got, want in zip(padded, exact):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("valid", [0, 2, 3])
def test_nearly_empty_masked_batch_adds_nothing(valid):
    rng = np.random.default_rng(11)
    fa = [rng.normal(size=(8, 5)).astype(np.float32)]
    state = cka.minibatch_cka_update(cka.minibatch_cka_init(1, 1), fa, fa)
    after = cka.minibatch_cka_update(state, fa, fa, mask=np.arange(8) < valid)
    for got, want in zip(after, state):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ------------------------------------------------------------------------------------ mesh

_SHARDED = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from vkd_jax import cka
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    fa = [rng.normal(size=(32, d)).astype(np.float32) for d in (5, 12, 7)]
    fb = [rng.normal(size=(32, 4, d)).astype(np.float32) for d in (3, 6)]
    mask = np.arange(32) < 29
    mesh = Mesh(np.array(jax.devices()), ("data",))
    shard = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
    init = cka.minibatch_cka_init(3, 2)
    want = cka.minibatch_cka_update(init, fa, fb, mask=mask)
    got = cka.minibatch_cka_update(
        init, [shard(f) for f in fa], [shard(f) for f in fb], mask=shard(mask))
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-4, atol=1e-5)
    print("OK")
    """
)


def test_update_on_sharded_minibatch():
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {TEST_XLA_FLAGS}",
        JAX_PLATFORMS="cpu",
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED], env=env, cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# --------------------------------------------------------------------- block structure score


def _decaying_map(n, rate=0.5):
    """No blocks: similarity falls off with layer distance, as in a network without them."""
    d = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    return np.exp(-rate * d)


def _block_map(n, block, inside=0.97):
    """A decaying map with one block of near-identical layers [block[0], block[1])."""
    m = _decaying_map(n)
    lo, hi = block
    m[lo:hi, lo:hi] = inside
    np.fill_diagonal(m, 1.0)
    return m


def test_block_score_is_zero_without_blocks_and_counts_distant_alike_pairs():
    assert cka.block_structure_score(_decaying_map(8)) == 0.0
    assert cka.largest_block(_decaying_map(8)) == 1
    assert cka.block_structure_score(np.ones((6, 6))) == 1.0
    assert cka.largest_block(np.ones((6, 6))) == 6
    # One block over layers 2..6 of 10 (5 layers): pairs >= 2 apart inside it: 3 + 2 + 1 = 6
    # of the C(10,2) - 9 = 36 pairs >= 2 apart.
    m = _block_map(10, (2, 7))
    assert cka.block_structure_score(m) == pytest.approx(6 / 36)
    assert cka.largest_block(m) == 5
    # A bigger block scores higher; a block below the threshold does not count.
    assert cka.block_structure_score(_block_map(10, (1, 9))) > cka.block_structure_score(m)
    assert cka.block_structure_score(_block_map(10, (2, 7), inside=0.7)) == 0.0
    assert cka.largest_block(_block_map(10, (2, 7), inside=0.7)) == 1


def test_block_score_reads_both_triangles_and_rejects_bad_maps():
    m = _block_map(6, (0, 6))
    m[0, 5] = 0.1  # One triangle of a slightly asymmetric streaming estimate disagrees.
    assert cka.block_structure_score(m) < 1.0
    assert cka.largest_block(m) == 5
    assert np.isnan(cka.block_structure_score(np.ones((2, 2))))
    with pytest.raises(ValueError, match="square"):
        cka.block_structure_score(np.ones((3, 4)))
    with pytest.raises(ValueError, match="min_gap"):
        cka.block_structure_score(np.ones((3, 3)), min_gap=0)
