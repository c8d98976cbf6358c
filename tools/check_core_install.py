"""Checks a core install (``pip install vkd_jax``, no extras): the losses and an X3D
forward give the values stored in ``tests/data/core_reference.json``, and TensorFlow is
neither imported nor needed.

CI runs it in a fresh environment with the core alone (``.ci/run``), so the light
install cannot silently break. ``--write`` recomputes the stored values (after a
deliberate change of the maths or of the X3D-tiny architecture, never to make a
failure pass).

The values are deterministic functions of fixed seeds; the tolerance (`RTOL`,
`ATOL`) leaves room for float32 reordering across JAX releases and CPUs, not for a
changed formula: a wrong temperature or weighting moves them by far more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "core_reference.json")
RTOL, ATOL = 1e-4, 1e-5
# Packages of the train extra that the core must not pull in.
HEAVY = ("tensorflow", "tensorflow_datasets", "clu", "av", "matplotlib")


def compute() -> dict[str, object]:
    import jax
    import numpy as np

    from vkd_jax import cka, convert, losses, models, startup  # noqa: F401 - the core's public parts.

    k = jax.random.split(jax.random.key(0), 6)
    s_logits = jax.random.normal(k[0], (8, 10))
    t_logits = jax.random.normal(k[1], (2, 8, 10))
    s_emb, t_emb = jax.random.normal(k[2], (8, 32)), jax.random.normal(k[3], (8, 64))

    @jax.jit  # One program rather than one per operation (seconds each on a small CPU).
    def loss_values(s_logits, t_logits, s_emb, t_emb):
        datw = losses.datw_loss(s_logits, t_logits, temperature=4.0)
        weights = losses.datw_weights(s_logits, t_logits, temperature=4.0)
        rkd = losses.rkd_distance_loss(s_emb, t_emb) + 2 * losses.rkd_angle_loss(s_emb, t_emb)
        return datw, weights, rkd, cka.linear_cka(s_emb, t_emb)

    datw, weights, rkd, linear_cka = loss_values(s_logits, t_logits, s_emb, t_emb)

    model = models.get_model("x3d", variant="tiny", num_classes=5)
    clips = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
    # Jitted: an eager init compiles one program per initializer (47 s against 14 s on
    # a 2-core CPU), with the same values (startup.jit_init's compiler options).
    init = startup.jit_init(lambda r, x: model.init(r, x, train=False))
    variables = init(jax.random.key(2), clips)
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, clips)
    grads = jax.grad(lambda s: losses.datw_loss(s, t_logits, temperature=4.0).mean())(s_logits)
    as_list = lambda a: np.asarray(a, np.float64).round(7).tolist()
    return {
        "datw_loss": as_list(datw),
        "datw_weights": as_list(weights),
        "datw_grad_sum_abs": float(np.abs(np.asarray(grads)).sum()),
        "rkd_loss": float(rkd),
        "linear_cka": float(linear_cka),
        "x3d_tiny_logits": as_list(logits),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="store the values computed now")
    args = parser.parse_args(argv)
    import numpy as np

    values = compute()
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    if heavy:
        print(f"check_core_install: the core imported {heavy}", file=sys.stderr)
        return 1
    if args.write:
        os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
        with open(REFERENCE, "w") as f:
            json.dump(values, f, indent=1)
            f.write("\n")
        print(f"wrote {REFERENCE}")
        return 0
    with open(REFERENCE) as f:
        expected = json.load(f)
    failed = []
    for key, want in expected.items():
        got = values[key]
        if not np.allclose(np.asarray(got), np.asarray(want), rtol=RTOL, atol=ATOL):
            err = np.max(np.abs(np.asarray(got) - np.asarray(want)))
            failed.append(f"{key} (max abs diff {err:.3g})")
    import jax

    versions = f"jax {jax.__version__}, flax {__import__('flax').__version__}"
    if failed:
        print(f"check_core_install: {', '.join(failed)} differ ({versions})", file=sys.stderr)
        return 1
    print(f"check_core_install: {len(expected)} values match, no TensorFlow ({versions})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
