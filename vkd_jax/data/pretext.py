"""tf.data input of the self-supervised pretext tasks: every task's views of a video.

Each task's sampling is a plain TF function of one uint8 video ``(T, H, W, 3)``
and a stateless seed (as in :mod:`vkd_jax.data.pipeline`), returning

* ``views``: float32 ``(V, F, S, S, 3)``, normalized like supervised clips
  (``V`` views of ``F`` frames, ``S = data.crop_size``);
* ``label``: int32 ``(L,)``, the pretext labels (rotation, permutation or rate
  index; a placeholder 0 for contrastive tasks).

The loss side (heads, losses, the label conventions) is in :mod:`vkd_jax.pretext`;
each task module's docstring states the sampling implemented here. Batches are
this process's share of the split, so pretraining runs multi-process like
supervised training; labels of the dataset are never read by the tasks.
"""

from __future__ import annotations

import ml_collections
from absl import logging

from vkd_jax import _deps
from vkd_jax.data import pipeline
from vkd_jax.pretext import common, prp, vcop

with _deps.extra("train", __name__):
    import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


# ------------------------------------------------------------------ primitives


def _uniform_int(seed: tf.Tensor, maxval) -> tf.Tensor:
    """Uniform int32 in ``[0, maxval)``; ``maxval`` >= 1."""
    return tf.random.stateless_uniform([], seed, 0, tf.maximum(maxval, 1), dtype=tf.int32)


def _uniform(seed: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, lo, hi)


def gather_frames(video: tf.Tensor, start, num_frames: int, stride) -> tf.Tensor:
    """Frames ``start + stride * i`` (``i < num_frames``), looping past the end."""
    index = start + tf.range(num_frames) * stride
    return tf.gather(video, index % tf.shape(video)[0])


def _crop(frames: tf.Tensor, seed, data_cfg, scale=None, aspect=None, encoding=None) -> tf.Tensor:
    """Random resized crop (one box for all frames) to ``crop_size``: float32 in [0, 255].

    ``frames`` are the sampled ones: uint8, or still-encoded strings (``encoding``
    "jpeg" or "png": :func:`pretext_dataset` keeps them so), decoded here and only here.
    """
    return pipeline.crop_clip(
        frames,
        size=data_cfg.crop_size,
        scale=tuple(scale if scale is not None else data_cfg.train_scale),
        aspect_ratio=tuple(aspect if aspect is not None else data_cfg.train_aspect_ratio),
        seed=seed,
        encoding=encoding,
    )


def _maybe(seed, probability: float, fn, x: tf.Tensor) -> tf.Tensor:
    """``fn(x)`` with ``probability``, else ``x`` (same decision for every frame)."""
    if probability <= 0.0:
        return x
    if probability >= 1.0:
        return fn(x)
    return tf.cond(_uniform(seed, 0.0, 1.0) < probability, lambda: fn(x), lambda: x)


def color_jitter(x: tf.Tensor, seed, strengths) -> tf.Tensor:
    """Brightness (x factor in 1 +- b), contrast, saturation (1 +- c, s), hue (+- h).

    ``x``: float ``(F, S, S, 3)`` in [0, 1]; the same factors for every frame
    (temporally consistent); clipped to [0, 1] after each op. A fixed order (SimCLR
    draws a random one).
    """
    b, c, s, h = (float(v) for v in strengths)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    if b > 0:
        x = tf.clip_by_value(x * _uniform(seeds[0], 1 - b, 1 + b), 0.0, 1.0)
    if c > 0:
        x = tf.clip_by_value(tf.image.adjust_contrast(x, _uniform(seeds[1], 1 - c, 1 + c)), 0, 1)
    if s > 0:
        x = tf.clip_by_value(tf.image.adjust_saturation(x, _uniform(seeds[2], 1 - s, 1 + s)), 0, 1)
    if h > 0:
        x = tf.clip_by_value(tf.image.adjust_hue(x, _uniform(seeds[3], -h, h)), 0.0, 1.0)
    return x


def grayscale(x: tf.Tensor) -> tf.Tensor:
    return tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 1, 3])


def gaussian_blur(x: tf.Tensor, seed, *, radius: int) -> tf.Tensor:
    """Separable Gaussian blur, sigma ~ U(0.1, 2.0) (one sigma for all frames)."""
    sigma = _uniform(seed, 0.1, 2.0)
    taps = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    kernel = tf.exp(-(taps**2) / (2.0 * sigma**2))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = 3
    kx = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    ky = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, kx, [1, 1, 1, 1], "SAME")
    return tf.nn.depthwise_conv2d(x, ky, [1, 1, 1, 1], "SAME")


def solarize(x: tf.Tensor) -> tf.Tensor:
    return tf.where(x < 0.5, x, 1.0 - x)


def strong_augment(
    frames: tf.Tensor,
    seed,
    data_cfg,
    *,
    scale,
    aspect,
    jitter,
    jitter_prob: float,
    gray_prob: float,
    blur_prob: float = 0.0,
    solarize_prob: float = 0.0,
    encoding: str | None = None,
) -> tf.Tensor:
    """Contrastive-learning augmentation, temporally consistent: float [0, 1] clip."""
    seeds = tf.random.experimental.stateless_split(seed, 8)
    x = _crop(frames, seeds[0], data_cfg, scale, aspect, encoding) / 255.0
    if data_cfg.random_flip:
        x = pipeline.random_flip(x, seed=seeds[1])
    x = _maybe(seeds[2], jitter_prob, lambda v: color_jitter(v, seeds[3], jitter), x)
    x = _maybe(seeds[4], gray_prob, grayscale, x)
    radius = max(1, int(data_cfg.crop_size) // 20)  # Kernel ~ crop / 10, as CVRL.
    x = _maybe(seeds[5], blur_prob, lambda v: gaussian_blur(v, seeds[6], radius=radius), x)
    return _maybe(seeds[7], solarize_prob, solarize, x)


def _plain(frames: tf.Tensor, seed, data_cfg, encoding=None) -> tf.Tensor:
    """The supervised augmentation (crop, optional flip): float [0, 1] clip."""
    s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    x = _crop(frames, s_crop, data_cfg, encoding=encoding) / 255.0
    if data_cfg.random_flip:
        x = pipeline.random_flip(x, seed=s_flip)
    return x


def _normalize(x: tf.Tensor, data_cfg) -> tf.Tensor:
    """[0, 1] pixels -> (x - mean) / std, as ``pipeline.normalize`` does for [0, 255]."""
    return (x - tf.constant(data_cfg.mean, tf.float32)) / tf.constant(data_cfg.std, tf.float32)


_NO_LABEL = tf.zeros([1], tf.int32)  # Contrastive tasks: a placeholder label.


# ------------------------------------------------------------------------ tasks


def rotnet_views(video, seed, data_cfg, pretext_cfg, task, encoding=None):
    """One clip, cropped once, in all K rotations (views), labels 0..K-1."""
    s_time, s_aug = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    clip = pipeline.sample_clip(
        video, num_frames=task.num_frames, stride=data_cfg.frame_stride, seed=s_time
    )
    clip = _plain(clip, s_aug, data_cfg, encoding)
    views = tf.stack([tf.image.rot90(clip, k) for k in range(task.num_classes)])
    return views, tf.range(task.num_classes, dtype=tf.int32)


def prp_views(video, seed, data_cfg, pretext_cfg, task, encoding=None):
    """One clip at a uniformly drawn playback rate (dilation); label = the rate's index."""
    s_rate, s_time, s_aug = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    rates = tf.constant(prp.RATES[int(pretext_cfg.complexity)], tf.int32)
    label = _uniform_int(s_rate, tf.size(rates))
    rate = rates[label]
    span = (task.num_frames - 1) * rate + 1
    start = _uniform_int(s_time, tf.shape(video)[0] - span + 1)
    clip = _plain(gather_frames(video, start, task.num_frames, rate), s_aug, data_cfg, encoding)
    return clip[None], label[None]


def vcop_span(pretext_cfg, complexity: int) -> int:
    c = pretext_cfg.vcop
    n = vcop.NUM_CLIPS[complexity]
    clip_span = (int(c.clip_frames) - 1) * int(c.clip_stride) + 1
    return n * clip_span + (n - 1) * int(c.interval)


def vcop_views(video, seed, data_cfg, pretext_cfg, task, encoding=None):
    """N ordered sub-clips, each with its own crop, shuffled; label = permutation index."""
    c = pretext_cfg.vcop
    n = task.num_views
    seeds = tf.random.experimental.stateless_split(seed, n + 2)
    clip_span = (int(c.clip_frames) - 1) * int(c.clip_stride) + 1
    total = vcop_span(pretext_cfg, int(pretext_cfg.complexity))
    start = _uniform_int(seeds[0], tf.shape(video)[0] - total + 1)
    clips = tf.stack(
        [
            _plain(
                gather_frames(
                    video,
                    start + i * (clip_span + int(c.interval)),
                    task.num_frames,
                    int(c.clip_stride),
                ),
                seeds[2 + i],
                data_cfg,
                encoding,
            )
            for i in range(n)
        ]
    )
    table = tf.constant(vcop.permutations(n))
    label = _uniform_int(seeds[1], task.num_classes)
    return tf.gather(clips, table[label]), label[None]


def rspnet_views(video, seed, data_cfg, pretext_cfg, task, encoding=None):
    """q (window 1, speed s), k (window 2, speed s), k_neg (window 2, other speed)."""
    c = pretext_cfg.rspnet
    seeds = tf.random.experimental.stateless_split(seed, 5)
    lo, hi = sorted(int(s) for s in c.speeds)
    stride = int(data_cfg.frame_stride)
    length = tf.shape(video)[0]
    span = (task.num_frames - 1) * hi * stride + 1  # A window holds the fastest clip.
    start1 = _uniform_int(seeds[0], length - span + 1)
    start2 = _uniform_int(seeds[1], length - span + 1)
    fast_query = _uniform(seeds[2], 0.0, 1.0) < 0.5
    speed_q = tf.where(fast_query, hi, lo)
    speed_neg = tf.where(fast_query, lo, hi)
    aug = dict(
        scale=tuple(c.crop_scale),
        aspect=tuple(data_cfg.train_aspect_ratio),
        jitter=(c.color_jitter,) * 4,
        jitter_prob=1.0,
        gray_prob=float(c.grayscale_prob),
    )
    q = strong_augment(
        gather_frames(video, start1, task.num_frames, speed_q * stride),
        seeds[3],
        data_cfg,
        encoding=encoding,
        **aug,
    )
    # k and k_neg: the same window and the same augmentation, two speeds.
    k = strong_augment(
        gather_frames(video, start2, task.num_frames, speed_q * stride),
        seeds[4],
        data_cfg,
        encoding=encoding,
        **aug,
    )
    k_neg = strong_augment(
        gather_frames(video, start2, task.num_frames, speed_neg * stride),
        seeds[4],
        data_cfg,
        encoding=encoding,
        **aug,
    )
    return tf.stack([q, k, k_neg]), _NO_LABEL


def cvrl_interval(seed, max_offset, power: float) -> tf.Tensor:
    """Interval ``d`` in ``[0, M)`` with density ∝ ``1 - (d / M)^power``, by inverse CDF.

    ``F(d) = (p + 1) d / (p M) - d^(p+1) / (p M^(p+1))`` is inverted by bisection on
    ``d / M`` (closed form for p = 1: ``d = M (1 - sqrt(1 - u))``).
    """
    u = _uniform(seed, 0.0, 1.0)
    p = float(power)
    if p == 1.0:
        x = 1.0 - tf.sqrt(1.0 - u)
    else:
        lo, hi = tf.constant(0.0), tf.constant(1.0)
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            cdf = (p + 1) * mid / p - mid ** (p + 1) / p
            lo, hi = tf.where(cdf < u, mid, lo), tf.where(cdf < u, hi, mid)
        x = 0.5 * (lo + hi)
    m = tf.cast(max_offset, tf.float32)
    return tf.minimum(tf.cast(tf.floor(x * m), tf.int32), tf.maximum(max_offset - 1, 0))


def cvrl_views(video, seed, data_cfg, pretext_cfg, task, encoding=None):
    """Two clips ``d`` frames apart (decreasing distribution), strongly augmented each."""
    c = pretext_cfg.cvrl
    seeds = tf.random.experimental.stateless_split(seed, 5)
    stride = int(data_cfg.frame_stride)
    length = tf.shape(video)[0]
    max_offset = tf.maximum(length - (task.num_frames - 1) * stride, 1)
    d = cvrl_interval(seeds[0], max_offset, c.power)
    o1 = _uniform_int(seeds[1], max_offset - d)
    o2 = o1 + d
    swap = _uniform(seeds[2], 0.0, 1.0) < 0.5
    o1, o2 = tf.where(swap, o2, o1), tf.where(swap, o1, o2)
    strength = float(c.color_jitter)
    common_aug = dict(
        scale=tuple(c.crop_scale),
        aspect=tuple(c.aspect_ratio),
        jitter=(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength),
        jitter_prob=0.8,
        gray_prob=float(c.grayscale_prob),
    )
    v1 = strong_augment(
        gather_frames(video, o1, task.num_frames, stride),
        seeds[3],
        data_cfg,
        blur_prob=float(c.blur_prob[0]),
        solarize_prob=float(c.solarize_prob[0]),
        encoding=encoding,
        **common_aug,
    )
    v2 = strong_augment(
        gather_frames(video, o2, task.num_frames, stride),
        seeds[4],
        data_cfg,
        blur_prob=float(c.blur_prob[1]),
        solarize_prob=float(c.solarize_prob[1]),
        encoding=encoding,
        **common_aug,
    )
    return tf.stack([v1, v2]), _NO_LABEL


def tdl_starts(seed, length, span: int, min_gap: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Anchor start, and a start of another time at least ``min_gap`` frames away.

    As the authors' code: a negative start closer than ``min_gap`` is shifted by a
    third of the video (modulo the admissible starts).
    """
    s_a, s_n = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    num_starts = tf.maximum(length - span + 1, 1)
    start_a = _uniform_int(s_a, num_starts)
    start_n = _uniform_int(s_n, num_starts)
    close = tf.abs(start_n - start_a) < min_gap
    start_n = tf.where(close, (start_n + length // 3) % num_starts, start_n)
    return start_a, start_n


def tdl_views(video, seed, data_cfg, pretext_cfg, task, encoding=None):
    """anchor (mixed with a static frame), positive (same frames), negative (other time)."""
    c = pretext_cfg.tdl
    seeds = tf.random.experimental.stateless_split(seed, 6)
    stride = int(data_cfg.frame_stride)
    span = (task.num_frames - 1) * stride + 1
    start_a, start_n = tdl_starts(seeds[0], tf.shape(video)[0], span, int(c.min_gap))
    aug = dict(
        scale=tuple(data_cfg.train_scale),
        aspect=tuple(data_cfg.train_aspect_ratio),
        jitter=tuple(c.color_jitter),
        jitter_prob=1.0,
        gray_prob=0.0,
    )
    frames_a = gather_frames(video, start_a, task.num_frames, stride)
    anchor = strong_augment(frames_a, seeds[1], data_cfg, encoding=encoding, **aug)
    # Temporal consistency augmentation: mix every frame with one static frame.
    lam = _uniform(seeds[4], 0.0, float(c.mixup_max))
    static = anchor[_uniform_int(seeds[5], task.num_frames)]
    anchor = (1.0 - lam) * anchor + lam * static[None]
    positive = strong_augment(frames_a, seeds[2], data_cfg, encoding=encoding, **aug)
    negative = strong_augment(
        gather_frames(video, start_n, task.num_frames, stride),
        seeds[3],
        data_cfg,
        encoding=encoding,
        **aug,
    )
    return tf.stack([anchor, positive, negative]), _NO_LABEL


VIEWS = {
    "rotnet": rotnet_views,
    "vcop": vcop_views,
    "prp": prp_views,
    "rspnet": rspnet_views,
    "cvrl": cvrl_views,
    "tdl": tdl_views,
}


def frames_needed(data_cfg, pretext_cfg, task: common.TaskSpec) -> int:
    """Frames a video needs for the task to sample without looping around."""
    stride = int(data_cfg.frame_stride)
    n = task.num_frames
    if task.name == "prp":
        return (n - 1) * max(prp.RATES[int(pretext_cfg.complexity)]) + 1
    if task.name == "vcop":
        return vcop_span(pretext_cfg, int(pretext_cfg.complexity))
    if task.name == "rspnet":
        return (n - 1) * max(int(s) for s in pretext_cfg.rspnet.speeds) * stride + 1
    return (n - 1) * stride + 1


# --------------------------------------------------------------------- datasets


def pretext_dataset(
    data_cfg: ml_collections.ConfigDict,
    pretext_cfg: ml_collections.ConfigDict,
    task: common.TaskSpec,
    *,
    split: str,
    batch_size: int,
    seed: int,
    train: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tf.data.Dataset:
    """Batches of a task's views of this process's share of ``split``.

    Args:
      data_cfg: the config's ``data`` section.
      pretext_cfg: the config's ``pretext`` section.
      task: the task's :class:`~vkd_jax.pretext.common.TaskSpec`.
      split: TFDS split (``train[:30%]`` style slices work).
      batch_size: videos per batch of this process.
      seed: seeds the shuffle and every sampling decision.
      train: shuffled and repeated forever; else one deterministic pass (the same
        views every time: held-out pretext accuracy), whole batches only, the same
        number on every process.
      process_index, process_count: as :func:`pipeline.train_dataset`.

    Returns:
      ``{"views": float32 (b, V, F, S, S, 3), "label": int32 (b, L)}``.
    """
    builder = pipeline.load_builder(data_cfg)
    length = builder.info.features[data_cfg.video_key].shape[0]
    needed = frames_needed(data_cfg, pretext_cfg, task)
    if length is not None and length < needed:
        logging.warning(
            "pretext %s needs %d frames per video but %s has %d: clips loop around the end, "
            "a cue the model can learn (use longer videos, e.g. synthetic_actions/long)",
            task.name,
            needed,
            builder.info.full_name,
            length,
        )
    make_views = VIEWS[task.name]
    size = int(data_cfg.crop_size)

    def sample(ex, example_seed, encoding):
        # Frames stay encoded until the task has chosen its clips (see `_crop`).
        views, label = make_views(
            ex["video"], example_seed, data_cfg, pretext_cfg, task, encoding=encoding
        )
        views = _normalize(tf.cast(views, tf.float32), data_cfg)
        views = tf.ensure_shape(views, (task.num_views, task.num_frames, size, size, 3))
        return {"views": views, "label": label}

    ds = pipeline.example_batches(
        data_cfg,
        split,
        sample,
        batch_size=batch_size,
        seed=seed,
        stream=1,
        train=train,
        process_index=process_index,
        process_count=process_count,
    )
    if not train:
        _, shares = pipeline.process_share(split, process_index, process_count)
        sizes = [builder.info.splits[s].num_examples for s in shares]
        num_batches = min(sizes) // batch_size
        if num_batches == 0:
            raise ValueError(
                f"Split {split!r} has {min(sizes)} examples per process, fewer than one batch "
                f"of {batch_size}: lower train.eval_batch_size"
            )
        ds = ds.take(num_batches)
    return ds


def chance_accuracy(task: common.TaskSpec, global_batch: int) -> float:
    """Chance level of the task's reported accuracy."""
    if task.name == "cvrl":
        return 1.0 / max(2 * global_batch - 1, 1)
    return task.chance


def describe(task: common.TaskSpec) -> str:
    return f"{task.description} ({task.num_views} views of {task.num_frames} frames)"
