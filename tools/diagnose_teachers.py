"""Diagnose a teacher pair before tuning the dual-teacher objective (docs/science.md).

Given the CNN and ViT teachers' model directories and a split (``validation`` by
default; the test split is refused), prints and writes (``--out``, JSON and Markdown):

1. the teachers' agreement per clip (both right / only the CNN / only the ViT /
   neither) and the oracle's accuracy (a clip is right when either teacher is), which
   bounds what any per-sample weighting of the two can give;
2. for each teacher-weighting formula (docs/design.md eqs. D1-D9: the original DATW,
   its variants, CA-MKD, EBKD, the oracle), the ViT's mean weight split by which
   teacher is right, the mean weight on the right teacher where exactly one is right,
   and the top-1 of the weighted target ``sum_k w_k z_k``; the student's logits (for the
   discrepancy) come from ``--student`` (a model directory; default: a fresh student);
3. how much of the ViT's grid-pooled, per-position-normalized features (SDD's inputs)
   a ridge map from the CNN's explains: R² fitted on ``--fit-split`` and measured on
   the held-out split;
4. each loss term's share of the gradient reaching the student's backbone (every
   parameter but its classifier) for the config's objective, over a few training
   batches of the student's split.

Everything is per clip (each evaluation view is one clip, as training sees).

    python tools/diagnose_teachers.py --config configs/default.py \\
        --cnn runs/default/teacher_cnn/model --vit runs/default/teacher_vit/model \\
        --student runs/default/student_scratch/model --out runs/diagnosis
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from vkd_jax import (  # noqa: E402
    checkpoint,
    models,
    reporting,
    residual_fit,
    sharding,
    storage,
    train_step,
)
from vkd_jax.losses import datw, objective, sdd  # noqa: E402

CATEGORIES = ("both right", "only CNN right", "only ViT right", "neither right")


# ------------------------------------------------------------------------- pure parts


def agreement(cnn_logits, vit_logits, labels) -> dict:
    """Shares of clips in each :data:`CATEGORIES` cell, each teacher's and the oracle's top-1."""
    c = np.argmax(cnn_logits, -1) == labels
    v = np.argmax(vit_logits, -1) == labels
    cells = {
        "both right": c & v,
        "only CNN right": c & ~v,
        "only ViT right": ~c & v,
        "neither right": ~c & ~v,
    }
    out = {k: float(m.mean()) for k, m in cells.items()}
    out.update(
        cnn_top1=float(c.mean()), vit_top1=float(v.mean()), oracle_top1=float((c | v).mean())
    )
    out["num_clips"] = int(len(labels))
    return out


def weighting_variants(temperature: float, gamma: float, t_c: float = 1.0) -> dict:
    """Name -> ``f(student_logits (B, C), teacher_logits (K, B, C), labels) -> (B, K)``."""

    def datw_fn(**kw):
        base = dict(temperature=temperature, weight_temperature=gamma)
        return lambda s, z, y: datw.datw_weights(s, z, **base, **kw)

    own = dict(confidence_temperature=t_c)
    return {
        "DATW original (entropy at T, raw cosine)": datw_fn(),
        f"DATW entropy at T_c={t_c:g}, raw cosine": datw_fn(**own),
        f"DATW entropy at T_c={t_c:g}, centred cosine": datw_fn(
            **own, discrepancy="centered_cosine"
        ),
        f"DATW entropy at T_c={t_c:g}, JS": datw_fn(**own, discrepancy="js"),
        f"DATW max-prob at T_c={t_c:g}, JS": datw_fn(
            **own, confidence="max_prob", discrepancy="js"
        ),
        f"DATW standardized, entropy at T_c={t_c:g}, JS": datw_fn(
            **own, discrepancy="js", standardize_terms=True
        ),
        f"DATW confidence only (entropy at T_c={t_c:g})": datw_fn(**own, discrepancy_weight=0.0),
        "DATW discrepancy only (JS)": datw_fn(discrepancy="js", confidence_weight=0.0),
        "DATW discrepancy only (raw cosine)": datw_fn(confidence_weight=0.0),
        "CA-MKD": lambda s, z, y: datw.ca_mkd_weights(z, y),
        f"EBKD (entropy at T_c={t_c:g})": lambda s, z, y: datw.ebkd_weights(z, temperature=t_c),
        "Oracle (control, uses labels)": lambda s, z, y: datw.oracle_weights(z, y),
        "Uniform": lambda s, z, y: jnp.full((s.shape[0], z.shape[0]), 1.0 / z.shape[0]),
    }


def weight_rows(student_logits, cnn_logits, vit_logits, labels, variants) -> list[dict]:
    """Per variant: the ViT's mean weight per agreement cell and what the weights do."""
    z = jnp.stack([jnp.asarray(cnn_logits), jnp.asarray(vit_logits)])
    s, y = jnp.asarray(student_logits), jnp.asarray(labels)
    c = np.argmax(cnn_logits, -1) == labels
    v = np.argmax(vit_logits, -1) == labels
    cells = {"both right": c & v, "only CNN right": c & ~v, "only ViT right": ~c & v,
             "neither right": ~c & ~v}  # fmt: skip
    one_right = c ^ v
    rows = []
    for name, fn in variants.items():
        w = np.asarray(fn(s, z, y))
        w_vit = w[:, 1]
        right_weight = np.where(c, w[:, 0], w[:, 1])[one_right]
        target = np.einsum("bk,kbc->bc", w, np.asarray(z))
        row = {
            "variant": name,
            "vit_weight_mean": float(w_vit.mean()),
            "vit_weight_std": float(w_vit.std()),
            "right_teacher_weight": float(right_weight.mean()) if one_right.any() else None,
            "target_top1": float((np.argmax(target, -1) == labels).mean()),
        }
        row.update({f"vit_weight|{k}": float(w_vit[m].mean()) if m.any() else None
                    for k, m in cells.items()})  # fmt: skip
        rows.append(row)
    return rows


def heldout_r2(residual_map, x, y) -> float:
    """``1 - sum ||y - x A - b||^2 / sum ||y - mean(y)||^2`` on held-out positions."""
    r = y - x @ residual_map["weight"] - residual_map["bias"]
    return float(1.0 - np.sum(r * r) / np.sum((y - y.mean(0)) ** 2))


# --------------------------------------------------------------------------- runners


def _eval_batches(config, split: str):
    from vkd_jax.data import pipeline

    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    data_cfg.eval_split = split
    return pipeline.eval_dataset(
        data_cfg, batch_size=config.train.eval_batch_size, process_index=0, process_count=1
    ).as_numpy_iterator()


def clip_logits(config, split, modules: dict, variables: dict) -> tuple[dict, np.ndarray]:
    """Every model's logits on every clip (view) of ``split``, and the clips' labels."""
    fns = {n: jax.jit(lambda v, x, m=m: m.apply(v, x, train=False)[0]) for n, m in modules.items()}
    out = {n: [] for n in modules}
    labels = []
    for batch in _eval_batches(config, split):
        video = batch["video"]
        b, nv = video.shape[:2]
        keep = np.repeat(batch["mask"].astype(bool), nv)
        flat = jnp.asarray(video.reshape((b * nv, *video.shape[2:])))
        for n, f in fns.items():
            out[n].append(sharding.to_host(f(variables[n], flat)).astype(np.float32)[keep])
        labels.append(np.repeat(batch["label"], nv)[keep])
    return {n: np.concatenate(v) for n, v in out.items()}, np.concatenate(labels)


def split_features(features_fn, batches) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for batch in batches:
        video = batch["video"]
        b, nv = video.shape[:2]
        x, y = features_fn(video.reshape((b * nv, *video.shape[2:])))
        keep = np.repeat(batch["mask"].astype(bool), nv)
        xs.append(np.asarray(x)[keep].reshape(-1, x.shape[-1]))
        ys.append(np.asarray(y)[keep].reshape(-1, y.shape[-1]))
    return np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)


def _backbone_mask(params):
    """Every student parameter but the classifier: the last top-level module of the zoo's
    families (x3d's ``blocks_<last>``, the ViT's ``head``) is the classifier."""
    keys = sorted(params, key=lambda k: [int(p) if p.isdigit() else p for p in k.split("_")])
    head = "head" if "head" in params else keys[-1]
    return head, {k: k != head for k in params}


def gradient_shares(config, loss_cfg, teachers, teacher_vars, constants, student_dir, batches):
    """Per enabled term, the norm of ``weight * term``'s gradient on the student's backbone."""
    from vkd_jax.data import pipeline

    info = pipeline.dataset_info(config.data)
    t, size = config.data.num_frames, config.data.crop_size
    student = models.get_model(
        config.student.name, variant=config.student.variant, num_classes=info.num_classes,
        input_size=(t, size, size),
    )  # fmt: skip
    heads = objective.DistillationHeads(loss_cfg=loss_cfg)
    tx, _ = train_step.make_optimizer(config.optim, 10)
    video = jnp.zeros((2, t, size, size, 3))
    state = train_step.init_state(rng=jax.random.key(config.seed), student=student, heads=heads,
                                  teachers=teachers, teacher_vars=teacher_vars, tx=tx,
                                  video=video)  # fmt: skip
    params, batch_stats = state.params, state.batch_stats
    if student_dir:
        _, var, _ = checkpoint.load_model(student_dir, num_classes=info.num_classes)
        params = dict(params, student=var["params"])
        batch_stats = var.get("batch_stats", batch_stats)
    head, mask = _backbone_mask(params["student"])
    weights = {"ce": loss_cfg.ce_weight, "kd": loss_cfg.kd_weight, "sdd": loss_cfg.sdd_weight,
               "rkd_distance": loss_cfg.rkd_distance_weight,
               "rkd_angle": loss_cfg.rkd_angle_weight}  # fmt: skip
    terms = [k for k, w in weights.items() if float(w) != 0.0]

    def weighted_terms(p, video, labels):
        (logits, feats), _ = student.apply(
            train_step.model_variables(p["student"], batch_stats), video, train=True,
            mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)},
        )  # fmt: skip
        t_out = train_step.teacher_outputs(teachers, teacher_vars, video)
        head_out = heads.apply({"params": p["heads"]}, feats, {n: o[1] for n, o in t_out.items()},
                               train=True)  # fmt: skip
        _, metrics = objective.total_loss(
            loss_cfg, labels=labels, student_logits=logits, student_features=feats,
            teacher_outputs=t_out, head_outputs=head_out, constants=constants,
        )  # fmt: skip
        return jnp.stack([float(weights[k]) * metrics[k] for k in terms])

    # One compiled program: the Jacobian's rows are the terms' gradients.
    @jax.jit
    def backbone_norms(p, video, labels):
        jac = jax.jacrev(weighted_terms)(p, video, labels)["student"]
        leaves = [x for k, sub in jac.items() if mask[k] for x in jax.tree_util.tree_leaves(sub)]
        return jnp.sqrt(sum(jnp.sum(x.reshape(len(terms), -1) ** 2, axis=1) for x in leaves))

    norms = {k: [] for k in terms}
    for batch in batches:
        got = backbone_norms(params, jnp.asarray(batch["video"]), jnp.asarray(batch["label"]))
        for k, v in zip(terms, np.asarray(got)):
            norms[k].append(float(v))
    mean = {k: float(np.mean(v)) for k, v in norms.items()}
    total = sum(mean.values())
    return {
        "classifier_excluded": head,
        "terms": {k: {"grad_norm": mean[k], "share": mean[k] / total} for k in terms},
    }


# ------------------------------------------------------------------------------- main


def markdown(result: dict) -> str:
    a = result["agreement"]
    lines = [
        f"Teachers on `{result['split']}` ({a['num_clips']} clips): CNN top-1 "
        f"{100 * a['cnn_top1']:.1f}%, ViT {100 * a['vit_top1']:.1f}%, oracle (either right) "
        f"{100 * a['oracle_top1']:.1f}%.",
        "",
    ]
    lines += reporting.markdown_table(CATEGORIES, [[f"{100 * a[k]:.1f}%" for k in CATEGORIES]])
    lines += ["", f"Teacher weights (student logits from `{result['student']}`):", ""]
    fmt = lambda x: "-" if x is None else f"{x:.3f}"
    rows = [
        [r["variant"], fmt(r["vit_weight_mean"]), fmt(r["vit_weight_std"])]
        + [fmt(r[f"vit_weight|{k}"]) for k in CATEGORIES]
        + [fmt(r["right_teacher_weight"]), f"{100 * r['target_top1']:.1f}"]
        for r in result["weights"]
    ]
    lines += reporting.markdown_table(
        ["Weighting", "w_ViT mean", "w_ViT std", *[f"w_ViT: {k}" for k in CATEGORIES],
         "Weight on the right teacher (one right)", "Top-1 % of sum_k w_k z_k"],
        rows,
    )  # fmt: skip
    r2 = result["r2"]
    lines += [
        "",
        f"SDD inputs (grid {tuple(r2['grid'])}, `{r2['cnn_feature']}` / `{r2['vit_feature']}`):"
        f" ridge map fitted on `{r2['fit_split']}` ({r2['fit_positions']:.0f} positions), "
        f"R² of the ViT's features from the CNN's {r2['fit_r2']:.3f} on the fitted positions, "
        f"{r2['heldout_r2']:.3f} held out on `{result['split']}`.",
    ]
    g = result.get("gradients")
    if g:
        lines += [
            "",
            f"Gradient reaching the student's backbone (its classifier "
            f"`{g['classifier_excluded']}` excluded), mean over {g['batches']} training batches:",
            "",
        ]
        lines += reporting.markdown_table(
            ("Term (weighted)", "Gradient norm", "Share"),
            [(k, f"{v['grad_norm']:.4f}", f"{100 * v['share']:.1f}%")
             for k, v in g["terms"].items()],
        )  # fmt: skip
    lines += ["", f"{result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.py")
    parser.add_argument("--cnn", required=True, help="CNN teacher model directory")
    parser.add_argument("--vit", required=True, help="ViT teacher model directory")
    parser.add_argument("--student", default="", help="student model directory ('' = fresh)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--fit-split", default="", help="'' = experiment.student_train_split")
    parser.add_argument("--grad-batches", type=int, default=3, help="0 skips the gradients")
    parser.add_argument("--confidence-temperature", type=float, default=1.0)
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", default="", help="folder for diagnosis.json / diagnosis.md")
    args = parser.parse_args(argv)
    from tools.config_cli import load_config

    config = load_config(args.config, args.set)
    result = diagnose(
        config, cnn=args.cnn, vit=args.vit, student=args.student, split=args.split,
        fit_split=args.fit_split, grad_batches=args.grad_batches,
        confidence_temperature=args.confidence_temperature, out=args.out,
    )  # fmt: skip
    if args.out:
        storage.write_text(
            os.path.join(args.out, "command.txt"),
            "python tools/diagnose_teachers.py " + " ".join(sys.argv[1:]) + "\n",
        )
    return result


def diagnose(
    config,
    *,
    cnn: str,
    vit: str,
    student: str = "",
    split: str = "validation",
    fit_split: str = "",
    grad_batches: int = 3,
    confidence_temperature: float = 1.0,
    out: str = "",
) -> dict:
    """Runs the four diagnoses (module docstring) and returns (and prints, writes) them."""
    if split.startswith("test"):
        raise ValueError("diagnose_teachers: the test split is for the final table only")
    started = time.time()
    from vkd_jax.data import pipeline

    info = pipeline.dataset_info(config.data)
    loss_cfg = ml_collections.FrozenConfigDict(config.loss)
    cnn_name, vit_name = loss_cfg.sdd.cnn_teacher, loss_cfg.sdd.vit_teacher
    specs = {cnn_name: cnn, vit_name: vit}
    modules, variables = {}, {}
    for name, path in specs.items():
        modules[name], variables[name], _ = checkpoint.load_model(
            path, num_classes=info.num_classes, what=f"teacher {name!r}"
        )
    eval_modules, eval_vars = dict(modules), dict(variables)
    t, size = config.data.num_frames, config.data.crop_size
    if student:
        eval_modules["student"], eval_vars["student"], _ = checkpoint.load_model(
            student, num_classes=info.num_classes
        )
    else:
        eval_modules["student"] = models.get_model(
            config.student.name, variant=config.student.variant, num_classes=info.num_classes,
            input_size=(t, size, size),
        )  # fmt: skip
        eval_vars["student"] = eval_modules["student"].init(
            jax.random.key(config.seed), jnp.zeros((1, t, size, size, 3)), train=False
        )
    timings = {}
    mark = time.time()
    logits, labels = clip_logits(config, split, eval_modules, eval_vars)
    timings["logits"], mark = time.time() - mark, time.time()
    result = {"split": split, "student": student or "fresh initialisation"}
    result["agreement"] = agreement(logits[cnn_name], logits[vit_name], labels)
    variants = weighting_variants(
        float(loss_cfg.temperature), float(loss_cfg.datw.weight_temperature),
        confidence_temperature,
    )  # fmt: skip
    result["weights"] = weight_rows(
        logits["student"], logits[cnn_name], logits[vit_name], labels, variants
    )
    timings["weights"], mark = time.time() - mark, time.time()
    # SDD: the ridge map on the fit split, R² held out.
    fit_split = fit_split or config.experiment.student_train_split or config.data.train_split
    features_fn = residual_fit.teacher_position_features(modules, variables, loss_cfg)
    acc = residual_fit.accumulate(features_fn, _eval_batches(config, fit_split))
    fitted = sdd.fit_residual_map(acc, ridge=float(loss_cfg.sdd.ridge), dim=int(loss_cfg.sdd.dim))
    x, y = split_features(features_fn, _eval_batches(config, split))
    result["r2"] = {
        "grid": list(loss_cfg.sdd.grid), "cnn_feature": loss_cfg.sdd.cnn_feature,
        "vit_feature": loss_cfg.sdd.vit_feature, "fit_split": fit_split,
        "fit_positions": float(fitted["num_positions"]), "fit_r2": float(fitted["r2"]),
        "heldout_r2": heldout_r2(fitted, x, y), "ridge": float(loss_cfg.sdd.ridge),
    }  # fmt: skip
    timings["r2"], mark = time.time() - mark, time.time()
    if grad_batches > 0:
        constants = {}
        if objective.sdd_uses_residual_map(loss_cfg):
            constants = {objective.SDD_RESIDUAL_MAP: {k: fitted[k] for k in ("weight", "bias",
                                                                             "basis")}}  # fmt: skip
        data_cfg = ml_collections.ConfigDict(config.data.to_dict())
        data_cfg.train_split = fit_split
        ds = pipeline.train_dataset(data_cfg, batch_size=config.train.batch_size, seed=config.seed)
        batches = list(ds.take(grad_batches).as_numpy_iterator())
        needed = {n: modules[n] for n in objective.required_teachers(loss_cfg) if n in modules}
        missing = set(objective.required_teachers(loss_cfg)) - set(needed)
        if missing:
            raise SystemExit(f"diagnose_teachers: the objective needs teachers {sorted(missing)}")
        g = gradient_shares(config, loss_cfg, needed, {n: variables[n] for n in needed},
                            constants, student, batches)  # fmt: skip
        g["batches"] = len(batches)
        result["gradients"] = g
    timings["gradients"] = time.time() - mark
    result["timings"] = timings
    result["seconds"] = time.time() - started
    md = markdown(result)
    print(md)
    if out:
        reporting.write_report(out, "diagnosis", result, md)
    return result


if __name__ == "__main__":
    main()
