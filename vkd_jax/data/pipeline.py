"""tf.data input pipeline: TFDS video datasets -> batches of normalized clips.

Train: this process's share of the split -> cache -> seeded shuffle -> repeat ->
per-example stateless augmentation (temporal clip sampling, random resized crop,
optional flip, normalization) -> batch -> prefetch. Without the cache, videos
stored as encoded frames (tfds Video) stay encoded until a clip's frames are
chosen: only those are decoded, and for JPEG only the crop window of each.

Eval: every video gives `eval_num_clips` x `eval_num_crops` views; batches are
padded (with `mask`) so that every example is seen exactly once and every process
yields the same number of batches (multi-host evaluation stays in lockstep).

Every augmentation is a plain TF function of a video and an explicit stateless
seed, so it gives the same values eagerly and inside tf.data (the tests check
both, as big_vision does) and the same seed gives the same batches.

Works with any TFDS dataset whose `data.video_key` feature decodes to uint8
(T, H, W, 3) (a plain Tensor or a tfds Video feature) and whose `data.label_key`
feature is a ClassLabel.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import ml_collections
from absl import logging

from vkd_jax import _deps

# Registers the built-in `synthetic_actions` builder with TFDS.
from vkd_jax.data import synthetic  # noqa: F401

with _deps.extra("train", __name__):
    import tensorflow as tf
    import tensorflow_datasets as tfds

AUTOTUNE = tf.data.AUTOTUNE


# ------------------------------------------------------------------------ builder


def load_builder(data_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """Returns the TFDS builder of `data_cfg`, preparing the dataset on first use.

    Args:
      data_cfg: The config's `data` section (name, builder_config, data_dir).

    Returns:
      A prepared `tfds.core.DatasetBuilder`.
    """
    if data_cfg.name == "video_folder":
        # Imported lazily: only runs on real video folders need it (and PyAV).
        from vkd_jax.data import video_folder

        builder = video_folder.builder_from_config(data_cfg)
    else:
        builder = tfds.builder(
            data_cfg.name,
            config=data_cfg.builder_config or None,
            data_dir=data_cfg.data_dir or None,
        )
    if not builder.is_prepared():
        logging.info(
            "Preparing TFDS dataset %s in %s ...", builder.info.full_name, builder.data_dir
        )
        print(f"Preparing dataset {builder.info.full_name} (first use only) ...", flush=True)
        builder.download_and_prepare()
    return builder


@dataclasses.dataclass
class DatasetInfo:
    """What the model and the training loop need to know about a dataset.

    Attributes:
      num_classes: Number of classes of the label feature.
      class_names: Their names, indexed by label.
      split_sizes: Examples per split name (e.g. {"train": 2400, "test": 600}).
    """

    num_classes: int
    class_names: list[str]
    split_sizes: dict[str, int]


def dataset_info(data_cfg: ml_collections.ConfigDict) -> DatasetInfo:
    """Returns the classes and split sizes of `data_cfg`'s dataset (preparing it if needed)."""
    info = load_builder(data_cfg).info
    label = info.features[data_cfg.label_key]
    return DatasetInfo(
        num_classes=int(label.num_classes),
        class_names=list(label.names),
        split_sizes={name: int(split.num_examples) for name, split in info.splits.items()},
    )


# ---------------------------------------------------------------------------- ops
# Plain TF functions of one example; `seed` is a stateless seed, int32/int64 (2,).


def sample_clip(video: tf.Tensor, *, num_frames: int, stride: int, seed: tf.Tensor) -> tf.Tensor:
    """Samples `num_frames` frames `stride` apart from a uniformly random start.

    Videos shorter than the clip span loop around (frame indices modulo T).

    Args:
      video: (T, H, W, C) video of any dtype.
      num_frames: Frames in the clip.
      stride: Step between sampled frames.
      seed: Stateless seed (2,).

    Returns:
      (num_frames, H, W, C) clip, same dtype.
    """
    length = tf.shape(video)[0]
    span = (num_frames - 1) * stride + 1
    max_start = tf.maximum(length - span, 0)
    start = tf.random.stateless_uniform(
        [], seed=seed, minval=0, maxval=max_start + 1, dtype=tf.int32
    )
    return tf.gather(video, (start + tf.range(num_frames) * stride) % length)


def uniform_clips(video: tf.Tensor, *, num_frames: int, stride: int, num_clips: int) -> tf.Tensor:
    """Takes `num_clips` uniformly spaced clips (the central one if `num_clips` is 1).

    Args:
      video: (T, H, W, C) video.
      num_frames: Frames per clip.
      stride: Step between frames of a clip.
      num_clips: Clips to take.

    Returns:
      (num_clips, num_frames, H, W, C) clips; short videos loop around.
    """
    length = tf.shape(video)[0]
    span = (num_frames - 1) * stride + 1
    max_start = tf.cast(tf.maximum(length - span, 0), tf.float32)
    if num_clips == 1:
        starts = tf.reshape(tf.round(max_start / 2), [1])
    else:
        starts = tf.round(tf.linspace(0.0, max_start, num_clips))
    starts = tf.cast(starts, tf.int32)
    index = starts[:, None] + tf.range(num_frames)[None, :] * stride  # (num_clips, num_frames)
    return tf.gather(video, index % length)


def random_crop_box(
    height: tf.Tensor,
    width: tf.Tensor,
    *,
    scale: tuple[float, float],
    aspect_ratio: tuple[float, float],
    seed: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The box of :func:`random_resized_crop` for frames of `height` x `width`.

    Returns:
      int32 scalars (y0, x0, crop_h, crop_w).
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h * w * tf.random.stateless_uniform([], seeds[0], scale[0], scale[1])
    log_ratio = tf.random.stateless_uniform(
        [], seeds[1], math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    )
    ratio = tf.exp(log_ratio)
    crop_w = tf.cast(tf.clip_by_value(tf.round(tf.sqrt(area * ratio)), 1.0, w), tf.int32)
    crop_h = tf.cast(tf.clip_by_value(tf.round(tf.sqrt(area / ratio)), 1.0, h), tf.int32)
    y0 = tf.random.stateless_uniform([], seeds[2], 0, height - crop_h + 1, dtype=tf.int32)
    x0 = tf.random.stateless_uniform([], seeds[3], 0, width - crop_w + 1, dtype=tf.int32)
    return y0, x0, crop_h, crop_w


def random_resized_crop(
    video: tf.Tensor,
    *,
    size: int,
    scale: tuple[float, float],
    aspect_ratio: tuple[float, float],
    seed: tf.Tensor,
) -> tf.Tensor:
    """Crops one random box (same for all frames) and resizes it to `size` x `size`.

    The box covers a uniform fraction in `scale` of the frame area with a log-uniform
    aspect ratio (width / height) in `aspect_ratio`, clipped to the frame, at a uniform
    position (Inception-style crop without rejection sampling).

    Args:
      video: (T, H, W, C) video, uint8 or float.
      size: Output height and width.
      scale: (min, max) area fraction.
      aspect_ratio: (min, max) aspect ratio.
      seed: Stateless seed (2,).

    Returns:
      float32 (T, size, size, C), values in the input's range.
    """
    shape = tf.shape(video)
    y0, x0, crop_h, crop_w = random_crop_box(
        shape[1], shape[2], scale=scale, aspect_ratio=aspect_ratio, seed=seed
    )
    crop = video[:, y0 : y0 + crop_h, x0 : x0 + crop_w]
    return resize(crop, (size, size))


# libjpeg treats a crop window's edges as the image's when it upsamples chroma, so
# decode_and_crop_jpeg's first and last columns can differ from a full decode's (by up
# to ~30 levels, measured); decoding this many more pixels on each side and slicing
# them off gives exactly the full decode's pixels (tests/test_pipeline.py checks).
_JPEG_CROP_MARGIN = 2


def decode_frames(frames: tf.Tensor, *, box: tuple | None = None, jpeg: bool = False) -> tf.Tensor:
    """Decodes encoded frames, optionally only a window of each.

    Args:
      frames: string (N,) JPEG or PNG frames of one video (all the same size).
      box: (y0, x0, h, w) window to return, or None for whole frames.
      jpeg: The frames are JPEG: the window is decoded alone (libjpeg skips the rows
        and blocks outside it), with the exact pixels of a full decode.

    Returns:
      uint8 (N, H, W, 3), or (N, h, w, 3) with `box`.
    """
    spec = tf.TensorSpec([None, None, 3], tf.uint8)
    if box is None or not jpeg:

        def decode(frame):
            return tf.io.decode_image(frame, channels=3, dtype=tf.uint8, expand_animations=False)

        video = tf.map_fn(decode, frames, fn_output_signature=spec)
        if box is None:
            return video
        y0, x0, h, w = box
        return video[:, y0 : y0 + h, x0 : x0 + w]
    y0, x0, h, w = box
    shape = tf.io.extract_jpeg_shape(frames[0], output_type=tf.int32)
    top, left = tf.maximum(y0 - _JPEG_CROP_MARGIN, 0), tf.maximum(x0 - _JPEG_CROP_MARGIN, 0)
    bottom = tf.minimum(y0 + h + _JPEG_CROP_MARGIN, shape[0])
    right = tf.minimum(x0 + w + _JPEG_CROP_MARGIN, shape[1])
    window = tf.stack([top, left, bottom - top, right - left])
    video = tf.map_fn(
        lambda frame: tf.io.decode_and_crop_jpeg(frame, window, channels=3),
        frames,
        fn_output_signature=spec,
    )
    return video[:, y0 - top : y0 - top + h, x0 - left : x0 - left + w]


def resize(video: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Bilinear (antialiased when shrinking) resize of every frame: float32 (..., T, h, w, C)."""
    video = tf.cast(video, tf.float32)
    return tf.image.resize(video, size, method="bilinear", antialias=True)


def resize_short_side(video: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes frames so that their short side is `size`, keeping the aspect ratio.

    Args:
      video: (T, H, W, C) video.
      size: Target short side.

    Returns:
      float32 (T, H', W', C) with min(H', W') == size.
    """
    shape = tf.shape(video)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    factor = size / tf.minimum(h, w)
    new_h = tf.maximum(tf.cast(tf.round(h * factor), tf.int32), size)
    new_w = tf.maximum(tf.cast(tf.round(w * factor), tf.int32), size)
    return resize(video, tf.stack([new_h, new_w]))


def spatial_crops(video: tf.Tensor, *, size: int, num_crops: int) -> tf.Tensor:
    """Takes `num_crops` square crops: 1 = center; 3 = start/center/end of the long side.

    Args:
      video: (T, H, W, C) video with min(H, W) >= size (see `resize_short_side`).
      size: Crop side.
      num_crops: 1 or 3.

    Returns:
      (num_crops, T, size, size, C) crops.
    """
    if num_crops not in (1, 3):
        raise ValueError(f"eval_num_crops must be 1 or 3, got {num_crops}.")
    shape = tf.shape(video)
    h, w = shape[1], shape[2]
    cy, cx = (h - size) // 2, (w - size) // 2
    if num_crops == 1:
        offsets = [(cy, cx)]
    else:
        # Along the long side (for square frames, along the width).
        offsets = tf.cond(
            h > w,
            lambda: tf.stack([[0, cx], [cy, cx], [h - size, cx]]),
            lambda: tf.stack([[cy, 0], [cy, cx], [cy, w - size]]),
        )
        offsets = [(offsets[i, 0], offsets[i, 1]) for i in range(3)]
    crops = [video[:, y : y + size, x : x + size] for y, x in offsets]
    return tf.stack(crops)


def random_flip(video: tf.Tensor, *, seed: tf.Tensor) -> tf.Tensor:
    """Flips all frames left-right with probability 1/2. (T, H, W, C) -> same."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(video, axis=[2]), lambda: video)


def normalize(video: tf.Tensor, *, mean: tuple[float, ...], std: tuple[float, ...]) -> tf.Tensor:
    """Maps [0, 255] pixel values to ((x / 255) - mean) / std, per channel; float32."""
    video = tf.cast(video, tf.float32) / 255.0
    return (video - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def crop_clip(
    frames: tf.Tensor,
    *,
    size: int,
    scale: tuple[float, float],
    aspect_ratio: tuple[float, float],
    seed: tf.Tensor,
    encoding: str | None = None,
) -> tf.Tensor:
    """`random_resized_crop` of a clip's frames, decoded or still encoded.

    Args:
      frames: uint8 (T, H, W, 3) frames, or string (T,) encoded ones (`encoding`): only
        these are decoded, and for JPEG only the crop window of each, with the same box
        and pixels as cropping the decoded frames (tests/test_pipeline.py checks).
      size, scale, aspect_ratio, seed: as `random_resized_crop`.
      encoding: "jpeg" or "png" for encoded frames (`frame_encoding`), else None.

    Returns:
      float32 (T, size, size, 3), values in [0, 255].
    """
    crop = dict(scale=tuple(scale), aspect_ratio=tuple(aspect_ratio), seed=seed)
    if encoding == "jpeg":
        shape = tf.io.extract_jpeg_shape(frames[0], output_type=tf.int32)
        box = random_crop_box(shape[0], shape[1], **crop)
        return resize(decode_frames(frames, box=box, jpeg=True), (size, size))
    if encoding is not None:
        frames = decode_frames(frames)
    return random_resized_crop(frames, size=size, **crop)


# ---------------------------------------------------------------------- datasets


def process_share(split: str, process_index: int | None, process_count: int | None):
    """(this process's sub-split, every process's sub-split) of `split`.

    `process_index` and `process_count` default to JAX's (`jax.process_index()`, ...).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    shares = tfds.even_splits(split, n=process_count)
    return shares[process_index], shares


def frame_encoding(builder: tfds.core.DatasetBuilder, data_cfg) -> str | None:
    """The frame encoding ("jpeg" or "png") of a tfds Video feature, else None."""
    feature = builder.info.features[data_cfg.video_key]
    if isinstance(feature, tfds.features.Video):
        return feature.feature.encoding_format
    return None


def _read(
    builder: tfds.core.DatasetBuilder, split, data_cfg, *, keep_encoded: bool = False
) -> tf.data.Dataset:
    """Reads a split in its stored (deterministic) order, keeping only video and label.

    `keep_encoded` leaves a tfds Video's frames encoded (string (T,)), for pipelines
    that decode only the frames they sample.
    """
    decoders = {data_cfg.video_key: tfds.decode.SkipDecoding()} if keep_encoded else None
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders=decoders,
        read_config=tfds.ReadConfig(add_tfds_id=False),
    )
    video_key, label_key = data_cfg.video_key, data_cfg.label_key
    return ds.map(
        lambda ex: {"video": ex[video_key], "label": tf.cast(ex[label_key], tf.int32)},
        num_parallel_calls=AUTOTUNE,
    )


def stored_frames(builder: tfds.core.DatasetBuilder, data_cfg) -> str | None:
    """The frame encoding when the pipeline should decode frames itself, else None.

    A clip uses a few of a video's frames (16 of a 10-s Kinetics video's 250), so
    decoding only those (and, for JPEG, only the crop window) is most of the input
    pipeline's speed. With `data.cache` the decoded videos are kept in memory instead.
    """
    return None if data_cfg.cache else frame_encoding(builder, data_cfg)


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


def example_batches(
    data_cfg: ml_collections.ConfigDict,
    split: str,
    make_example: Callable[[dict[str, tf.Tensor], tf.Tensor, str | None], dict[str, tf.Tensor]],
    *,
    batch_size: int,
    seed: int,
    stream: int,
    train: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tf.data.Dataset:
    """The skeleton of the sampling pipelines (supervised training, pretext tasks).

    This process's share of `split`, read in its stored order (a tfds Video's frames
    left encoded unless `data.cache`: see `stored_frames`) -> cache (`data.cache`) ->
    with `train`, a seeded shuffle and repeat forever -> ``make_example(example, seed,
    encoding)`` for each example -> whole batches -> prefetch, deterministic.

    Args:
      data_cfg: The config's `data` section.
      split: TFDS split (``train[:30%]`` style slices work).
      make_example: Maps ``{"video", "label"}`` (video uint8 (T, H, W, 3), or string
        (T,) encoded frames when `encoding` is "jpeg" or "png") and a stateless seed (2,)
        to the example to batch. Decode only the frames it samples (`crop_clip`).
      batch_size: Examples per batch of this process.
      seed: Seeds the shuffle and every example's seed (same seed -> same batches).
      stream: Told apart from other pipelines of the same seed (their examples get
        independent seeds).
      train: Shuffle and repeat; else one pass in the stored order.
      process_index: This process (default `jax.process_index()`).
      process_count: Processes sharing the split (default `jax.process_count()`).
    """
    builder = load_builder(data_cfg)
    share, _ = process_share(split, process_index, process_count)
    process_index = jax.process_index() if process_index is None else process_index
    encoding = stored_frames(builder, data_cfg)
    ds = _read(builder, share, data_cfg, keep_encoded=encoding is not None)
    if data_cfg.cache:
        ds = ds.cache()
    if train:
        ds = ds.shuffle(data_cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat()
    # Per-example seed = f(seed, stream, process, position in the stream): independent of
    # thread scheduling, unlike stateful TF random ops.
    base_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, stream], tf.int64), process_index
    )

    def sample(index, ex):
        return make_example(
            ex, tf.random.experimental.stateless_fold_in(base_seed, index), encoding
        )

    ds = ds.enumerate().map(sample, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True)
    return _deterministic(ds.prefetch(data_cfg.prefetch))


def train_dataset(
    data_cfg: ml_collections.ConfigDict,
    *,
    batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tf.data.Dataset:
    """Infinite, shuffled, augmented training batches of this process's share of the data.

    Args:
      data_cfg: The config's `data` section.
      batch_size: Examples per batch of this process (the global batch / process count).
      seed: Seeds the shuffle and every augmentation (same seed -> same batches).
      process_index: This process (default `jax.process_index()`).
      process_count: Processes sharing the split (default `jax.process_count()`).

    Returns:
      A dataset of {"video": float32 (b, T, S, S, 3), "label": int32 (b,)} with
      b = batch_size, T = num_frames, S = crop_size.
    """

    def augment(ex, seed, encoding):
        s_time, s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        video = sample_clip(
            ex["video"], num_frames=data_cfg.num_frames, stride=data_cfg.frame_stride, seed=s_time
        )
        video = crop_clip(
            video,
            size=data_cfg.crop_size,
            scale=data_cfg.train_scale,
            aspect_ratio=data_cfg.train_aspect_ratio,
            seed=s_crop,
            encoding=encoding,
        )
        if data_cfg.random_flip:
            video = random_flip(video, seed=s_flip)
        video = normalize(video, mean=tuple(data_cfg.mean), std=tuple(data_cfg.std))
        size = data_cfg.crop_size
        video = tf.ensure_shape(video, (data_cfg.num_frames, size, size, None))
        return {"video": video, "label": ex["label"]}

    return example_batches(
        data_cfg,
        data_cfg.train_split,
        augment,
        batch_size=batch_size,
        seed=seed,
        stream=0,
        process_index=process_index,
        process_count=process_count,
    )


def eval_views(
    video: tf.Tensor, data_cfg: ml_collections.ConfigDict, *, normalized: bool = True
) -> tf.Tensor:
    """All evaluation views of one video: clips x crops, clip-major.

    Args:
      video: uint8 (T, H, W, 3) video, or string (T,) encoded frames (only the
        sampled ones are decoded).
      data_cfg: The config's `data` section (or any object with its sampling fields).
      normalized: False returns float32 pixel values in [0, 255] (exported models
        normalize inside).

    Returns:
      float32 normalized (V, num_frames, S, S, 3), V = eval_num_clips * eval_num_crops.
    """
    clips = uniform_clips(
        video,
        num_frames=data_cfg.num_frames,
        stride=data_cfg.frame_stride,
        num_clips=data_cfg.eval_num_clips,
    )
    if clips.dtype == tf.string:
        frames = decode_frames(tf.reshape(clips, [-1]))
        clips = tf.reshape(frames, tf.concat([tf.shape(clips), tf.shape(frames)[1:]], 0))
    views = []
    for i in range(data_cfg.eval_num_clips):
        clip = resize_short_side(clips[i], data_cfg.crop_size)
        views.append(
            spatial_crops(clip, size=data_cfg.crop_size, num_crops=data_cfg.eval_num_crops)
        )
    views = tf.concat(views, axis=0)
    num_views = data_cfg.eval_num_clips * data_cfg.eval_num_crops
    size = data_cfg.crop_size
    # Static shape, so that padding and batching know it.
    views = tf.ensure_shape(views, (num_views, data_cfg.num_frames, size, size, None))
    if not normalized:
        return tf.cast(views, tf.float32)
    return normalize(views, mean=tuple(data_cfg.mean), std=tuple(data_cfg.std))


def eval_dataset(
    data_cfg: ml_collections.ConfigDict,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    normalized: bool = True,
) -> tf.data.Dataset:
    """Finite multi-view evaluation batches of this process's share of `eval_split`.

    Every example appears exactly once with mask True; the last batch is padded with
    masked (mask False, zero video, label 0) examples, and processes with a shorter
    share add fully masked batches so that all processes yield the same number.

    Args:
      data_cfg: The config's `data` section.
      batch_size: Videos per batch of this process.
      process_index: This process (default `jax.process_index()`).
      process_count: Processes sharing the split (default `jax.process_count()`).
      normalized: False gives pixel values in [0, 255] (see `eval_views`).

    Returns:
      A dataset of {"video": float32 (b, V, T, S, S, 3), "label": int32 (b,),
      "mask": bool (b,)}, V = eval_num_clips * eval_num_crops.
    """
    builder = load_builder(data_cfg)
    split, shares = process_share(data_cfg.eval_split, process_index, process_count)
    sizes = [builder.info.splits[share].num_examples for share in shares]
    num_batches = math.ceil(max(sizes) / batch_size)
    num_local = builder.info.splits[split].num_examples
    ds = _read(builder, split, data_cfg, keep_encoded=stored_frames(builder, data_cfg) is not None)
    if data_cfg.cache:
        ds = ds.cache()
    ds = ds.map(
        lambda ex: {
            "video": eval_views(ex["video"], data_cfg, normalized=normalized),
            "label": ex["label"],
            "mask": tf.constant(True),
        },
        num_parallel_calls=AUTOTUNE,
    )
    pad = tf.data.Dataset.from_tensors(
        tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
    ).repeat(num_batches * batch_size - num_local)
    ds = ds.concatenate(pad).batch(batch_size, drop_remainder=True)
    return _deterministic(ds.prefetch(data_cfg.prefetch))
