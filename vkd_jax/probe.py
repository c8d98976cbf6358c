"""Frozen-backbone evaluations of a representation (``config.mode=probe``).

The two evaluations self-supervised video papers report besides fine-tuning:

* **linear probe**: a linear classifier trained on the frozen pooled features
  (``pre_logits``, averaged over the evaluation views) of ``data.train_split``,
  top-1 on ``data.eval_split``. Features are standardized with the train
  split's mean and std; the classifier is trained full batch with Adam and an
  L2 penalty (``config.probe``).
* **video retrieval**: every ``eval_split`` video queries the ``train_split``
  videos by cosine similarity of the same features; recall@k is the share of
  queries with a video of their class among the k nearest (the protocol of
  Xu et al. 2019 and the papers after it). Jitted and chunked over queries, so
  memory stays ``chunk_size x gallery`` (UCF101's 9.5k-video gallery included).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vkd_jax import checkpoint, sharding, stages, storage
from vkd_jax.data import pipeline

SUMMARY_FILE = "probe.json"


def extract_features(
    model: Any, variables: Any, batches: Iterable[Mapping[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features (mean over views) and labels of every unmasked video.

    Args:
      model: a zoo module; its ``features["pre_logits"]`` is the representation.
      variables: its variables.
      batches: evaluation batches (``video`` ``(b, V, T, H, W, 3)``, ``label``, ``mask``).

    Returns:
      ``(features float32 (N, D), labels int (N,))``.
    """

    @jax.jit
    def features(videos):
        b, v = videos.shape[:2]
        _, feats = model.apply(variables, videos.reshape((b * v, *videos.shape[2:])), train=False)
        pooled = feats["pre_logits"].astype(jnp.float32)
        return pooled.reshape(b, v, -1).mean(1)

    out_x, out_y = [], []
    for batch in batches:
        x = sharding.to_host(features(batch["video"]))
        y = sharding.to_host(batch["label"])
        mask = batch.get("mask")
        keep = np.ones(len(y), bool) if mask is None else sharding.to_host(mask).astype(bool)
        out_x.append(x[keep])
        out_y.append(y[keep])
    return np.concatenate(out_x), np.concatenate(out_y)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    num_classes: int,
    steps: int = 1000,
    learning_rate: float = 1e-2,
    weight_decay: float = 1e-3,
) -> dict[str, float]:
    """Trains a softmax classifier on standardized features; returns train and test top-1."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs = jnp.asarray((train_x - mean) / std, jnp.float32)
    xt = jnp.asarray((test_x - mean) / std, jnp.float32)
    ys = jnp.asarray(train_y, jnp.int32)
    tx = optax.adam(learning_rate)
    params = {"w": jnp.zeros((xs.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}

    def loss_fn(p):
        logits = xs @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()
        return ce + 0.5 * weight_decay * jnp.sum(p["w"] ** 2)

    @jax.jit
    def fit(p):
        def body(carry, _):
            p, opt = carry
            grads = jax.grad(loss_fn)(p)
            updates, opt = tx.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), None

        (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
        return p

    params = fit(params)
    train_pred = np.asarray(jnp.argmax(xs @ params["w"] + params["b"], -1))
    test_pred = np.asarray(jnp.argmax(xt @ params["w"] + params["b"], -1))
    return {
        "linear_probe_top1": float(np.mean(test_pred == test_y)),
        "linear_probe_train_top1": float(np.mean(train_pred == train_y)),
    }


def retrieval_recall(
    query_x: np.ndarray,
    query_y: np.ndarray,
    gallery_x: np.ndarray,
    gallery_y: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@k of nearest-neighbour retrieval by cosine similarity.

    Args:
      query_x, query_y: ``(Q, D)`` features and labels of the queries.
      gallery_x, gallery_y: ``(G, D)`` features and labels searched.
      ks: the k of recall@k (each at most ``G``).
      chunk_size: queries per jitted block; the last block is padded, so one compile.

    Returns:
      ``{"R@1": ..., "R@5": ..., ...}``: share of queries with a same-class video
      among their k nearest gallery videos.
    """
    max_k = max(ks)
    if max_k > len(gallery_y):
        raise ValueError(f"recall@{max_k} needs at least {max_k} gallery videos")
    normalize = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    gallery = jnp.asarray(normalize(gallery_x), jnp.float32)
    g_labels = jnp.asarray(gallery_y, jnp.int32)

    @jax.jit
    def block(q, q_labels):
        _, index = jax.lax.top_k(q @ gallery.T, max_k)
        hits = g_labels[index] == q_labels[:, None]  # (chunk, max_k)
        return jnp.cumsum(hits, axis=1) > 0  # any hit among the first k

    queries = normalize(query_x).astype(np.float32)
    chunk = min(chunk_size, len(queries))
    found = []
    for lo in range(0, len(queries), chunk):
        q, y = queries[lo : lo + chunk], query_y[lo : lo + chunk]
        pad = chunk - len(q)
        q = np.pad(q, ((0, pad), (0, 0)))
        y = np.pad(y, (0, pad))
        found.append(np.asarray(block(jnp.asarray(q), jnp.asarray(y, jnp.int32)))[: chunk - pad])
    found = np.concatenate(found)
    return {f"R@{k}": float(found[:, k - 1].mean()) for k in ks}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Linear probe and retrieval of ``config.init_checkpoint`` on ``config.data``.

    Writes ``<workdir>/probe.json``; a finished probe is not run again.
    """
    path = os.path.join(workdir, SUMMARY_FILE)
    if storage.isfile(path):
        return storage.read_json(path)
    if not config.init_checkpoint:
        raise checkpoint.CheckpointError(
            "mode=probe evaluates the model directory in config.init_checkpoint; set "
            "--config.init_checkpoint=DIR (e.g. a pretraining workdir's model/)"
        )
    started = time.time()
    storage.makedirs(workdir)
    info = pipeline.dataset_info(config.data)
    module, variables, meta = checkpoint.load_model(
        config.init_checkpoint,
        num_classes=info.num_classes,
        dtype=stages.compute_dtype(config),
        what="init_checkpoint",
    )
    mesh = sharding.make_mesh(config.mesh.data)
    local_batch = sharding.local_batch_size(config.train.eval_batch_size)

    def features(split: str):
        data_cfg = ml_collections.ConfigDict(config.data.to_dict())
        data_cfg.eval_split = split
        ds = pipeline.eval_dataset(data_cfg, batch_size=local_batch)
        batches = (sharding.to_global(b, mesh) for b in ds.as_numpy_iterator())
        return extract_features(module, variables, batches)

    train_x, train_y = features(config.data.train_split)
    test_x, test_y = features(config.data.eval_split)
    p = config.probe
    summary = linear_probe(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=info.num_classes,
        steps=int(p.steps),
        learning_rate=float(p.learning_rate),
        weight_decay=float(p.weight_decay),
    )
    summary.update(
        retrieval_recall(
            test_x,
            test_y,
            train_x,
            train_y,
            ks=tuple(int(k) for k in p.recall_at),
            chunk_size=int(p.chunk_size),
        )
    )
    summary.update(
        model=f"{meta['name']}/{meta['variant']}",
        checkpoint=config.init_checkpoint,
        pretext=meta.get("pretext"),
        dataset=f"{config.data.name}/{config.data.builder_config}",
        train_split=config.data.train_split,
        eval_split=config.data.eval_split,
        num_train=int(len(train_y)),
        num_eval=int(len(test_y)),
        feature_dim=int(train_x.shape[1]),
        seconds=time.time() - started,
    )
    if jax.process_index() == 0:
        storage.write_json(path, summary, indent=2)
    recalls = "  ".join(f"R@{k} {100 * summary[f'R@{k}']:.1f}%" for k in p.recall_at)
    print(
        f"probe {summary['model']} ({config.init_checkpoint}): linear-probe top-1 "
        f"{100 * summary['linear_probe_top1']:.1f}%  retrieval {recalls}"
    )
    return summary
