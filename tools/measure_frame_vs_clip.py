"""Design property (a) of synthetic_actions, measured: one frame, or shuffled frames, do not
reveal the class; the clip does.

One small classifier is trained three times on clips of the `tiny` builder config's
geometry (8 frames of 32x32, 2 distractors), each time seeing a different *view* of the
clip:

- ``clip``: the frames in their order, stacked along channels (early fusion, T*3 channels);
- ``shuffled``: the same frames in a random order, drawn afresh for every example and
  every epoch (a bag of frames: everything but the order);
- ``frame``: one frame at a random time (3 channels).

The network is a four-layer 2D CNN with BatchNorm over the stacked channels (the first
layer sees every frame at every position, so it can pick up motion): a 2D net trains in
seconds on a CPU, where 3D convs and their gradients are slow.

Reported per view: top-1 on all 12 classes (chance 1/12), and the *pair accuracy* on the
five time-reversed pairs (move_right/move_left, ..., approach/separate): for test clips
of those ten classes, how often the true class's logit beats its reversed partner's.
Within a pair the two classes have exactly the same distribution of frame sets
(tests/test_synthetic.py proves it), so for the ``frame`` and ``shuffled`` views the
expected pair accuracy of *any* classifier is exactly 1/2 on a class-balanced test
set; only the order of the frames can separate them. The bag of frames can still tell
the pairs apart from each other, so its top-1 is capped at 10/12 * 1/2 + 2/12 = 7/12.

The tiny config itself holds 360 training clips, too few to train on; this tool draws
more clips of the same geometry from the same generator (`synthetic.generate_split`,
train and test from different seeds, as the builder does).

    python tools/measure_frame_vs_clip.py                  # the figures in docs/datasets.md
    python tools/measure_frame_vs_clip.py --steps 200 --num_train 2000 --num_test 600 \
        --width 32                                         # the tests' budget

tests/test_frame_vs_clip.py runs `measure` with the smaller budget and checks the gaps.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import optax

from vkd_jax.data import synthetic

VIEWS = ("clip", "shuffled", "frame")
MEAN, STD = 0.45, 0.225


def tiny_geometry() -> synthetic.Geometry:
    """The clip geometry of the builder's `tiny` config (8x32x32, 2 distractors)."""
    (config,) = [c for c in synthetic.SyntheticActions.BUILDER_CONFIGS if c.name == "tiny"]
    return config.geometry


def reversal_partners() -> np.ndarray:
    """partner[c]: the class whose clips are the time reversal of class c's, or -1."""
    partner = np.full(synthetic.NUM_CLASSES, -1)
    for c in np.flatnonzero(synthetic._REVERSED):
        partner[c], partner[c - 1] = c - 1, c
    return partner


def make_view(videos: np.ndarray, view: str, rng: np.random.Generator) -> np.ndarray:
    """uint8 (B, T, H, W, 3) clips -> float32 (B, H, W, C) inputs of one view, normalized."""
    b, t = videos.shape[:2]
    if view == "frame":
        videos = videos[np.arange(b), rng.integers(0, t, b)][:, None]
    elif view == "shuffled":
        order = np.argsort(rng.random((b, t)), axis=1)
        videos = np.take_along_axis(videos, order[:, :, None, None, None], axis=1)
    elif view != "clip":
        raise ValueError(f"Unknown view {view!r}; expected one of {VIEWS}.")
    x = (videos.astype(np.float32) / 255.0 - MEAN) / STD
    # (B, T, H, W, 3) -> (B, H, W, T*3): frames side by side along channels.
    return x.transpose(0, 2, 3, 1, 4).reshape(b, x.shape[2], x.shape[3], -1)


class StackedFrameNet(nn.Module):
    """Four conv-BN-ReLU layers (3x3; strides 2, 2, 2, 1), global mean, linear classifier.

    Attributes:
      width: Channels of the first layer; the others have 1.5x, 2x, 3x as many.
      num_classes: Output classes.
    """

    width: int
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        widths = (self.width, 3 * self.width // 2, 2 * self.width, 3 * self.width)
        for channels, stride in zip(widths, (2, 2, 2, 1)):
            x = nn.Conv(channels, (3, 3), strides=stride, use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x)
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


@dataclasses.dataclass(frozen=True)
class Budget:
    """Training budget of one measurement (every view gets the same one)."""

    num_train: int = 6000
    num_test: int = 1200
    steps: int = 1000
    batch: int = 64
    width: int = 48
    learning_rate: float = 3e-3
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ViewResult:
    """Test accuracies of one view. pair_accuracy: true vs reversed partner, pair classes."""

    view: str
    top1: float
    pair_accuracy: float
    train_top1: float
    seconds: float


def generate(budget: Budget, geo: synthetic.Geometry):
    """(train_videos, train_labels), (test_videos, test_labels), class-balanced, seeded."""

    def split(n: int, split_id: int):
        _, videos, labels = zip(*synthetic.generate_split(n, geo, budget.seed, split_id))
        return np.stack(videos), np.array(labels)

    return split(budget.num_train, 0), split(budget.num_test, 1)


def train_and_evaluate(view: str, train, test, budget: Budget) -> ViewResult:
    """Trains a fresh StackedFrameNet on one view of `train`, evaluates it on that of `test`."""
    start = time.time()
    rng = np.random.default_rng([budget.seed, VIEWS.index(view)])
    net = StackedFrameNet(budget.width, synthetic.NUM_CLASSES)
    variables = net.init(jax.random.key(budget.seed), make_view(train[0][:1], view, rng), False)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, budget.learning_rate, min(50, budget.steps // 10), budget.steps
    )
    tx = optax.adamw(schedule, weight_decay=1e-4)
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    @jax.jit
    def step(state, x, y):
        params, batch_stats, opt = state

        def loss_fn(p):
            logits, updates = net.apply(
                {"params": p, "batch_stats": batch_stats}, x, True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, updates["batch_stats"]

        (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), batch_stats, opt

    @jax.jit
    def logits_fn(state, x):
        params, batch_stats, _ = state
        return net.apply({"params": params, "batch_stats": batch_stats}, x, False)

    for _ in range(budget.steps):
        idx = rng.integers(0, len(train[1]), budget.batch)
        state = step(state, make_view(train[0][idx], view, rng), train[1][idx])

    def evaluate(videos, labels):
        logits = np.concatenate(
            [
                np.asarray(logits_fn(state, make_view(videos[i : i + 256], view, rng)))
                for i in range(0, len(labels), 256)
            ]
        )
        return logits, logits.argmax(-1) == labels

    logits, correct = evaluate(*test)
    partner = reversal_partners()[test[1]]
    in_pair = partner >= 0
    rows = np.flatnonzero(in_pair)
    pair_correct = logits[rows, test[1][rows]] > logits[rows, partner[rows]]
    n_train_eval = min(len(train[1]), len(test[1]))
    _, train_correct = evaluate(train[0][:n_train_eval], train[1][:n_train_eval])
    return ViewResult(
        view,
        float(correct.mean()),
        float(pair_correct.mean()),
        float(train_correct.mean()),
        time.time() - start,
    )


def measure(budget: Budget, views=VIEWS) -> dict[str, ViewResult]:
    """Generates the data once and trains one classifier per view."""
    train, test = generate(budget, tiny_geometry())
    return {view: train_and_evaluate(view, train, test, budget) for view in views}


def main(argv=None) -> None:
    defaults = Budget()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(Budget):
        default = getattr(defaults, field.name)
        parser.add_argument(f"--{field.name}", type=type(default), default=default)
    budget = Budget(**vars(parser.parse_args(argv)))
    print(f"command: python tools/measure_frame_vs_clip.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
        f"on {jax.devices()[0].platform}"
    )
    print(f"{budget}; geometry {tiny_geometry()}")
    print(f"chance: top-1 {1 / synthetic.NUM_CLASSES:.3f}, pair 0.500; order-blind top-1 cap 0.583")
    print("| view | test top-1 | pair accuracy | train top-1 | seconds |")
    print("|---|---|---|---|---|")
    train, test = generate(budget, tiny_geometry())
    for view in VIEWS:  # Printed as each finishes: the default budget takes minutes.
        r = train_and_evaluate(view, train, test, budget)
        print(
            f"| {r.view} | {r.top1:.3f} | {r.pair_accuracy:.3f} | {r.train_top1:.3f} "
            f"| {r.seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
