"""Tests of the tf.data input pipeline on the `tiny` synthetic_actions config.

Each op runs eagerly and inside tf.data with the same seed (big_vision-style).
The dataset tests read ids by pointing `label_key` at the per-example `id`
feature, which makes "every example exactly once" checkable.
"""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from vkd_jax.data import pipeline


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory) -> ml_collections.ConfigDict:
    """The default config's data section on tiny synthetic_actions, built once per module."""
    # A local copy of the declared schema (configs/ is not a package on the test path).
    c = ml_collections.ConfigDict()
    c.name = "synthetic_actions"
    c.builder_config = "tiny"
    c.data_dir = str(tmp_path_factory.mktemp("tfds"))
    c.train_split = "train"
    c.eval_split = "test"
    c.video_key = "video"
    c.label_key = "label"
    c.num_frames = 4
    c.frame_stride = 2
    c.crop_size = 24
    c.train_scale = (0.6, 1.0)
    c.train_aspect_ratio = (0.75, 1.333)
    c.random_flip = False
    c.mean = (0.45, 0.45, 0.45)
    c.std = (0.225, 0.225, 0.225)
    c.eval_num_clips = 2
    c.eval_num_crops = 1
    c.shuffle_buffer = 64
    c.cache = True
    c.prefetch = 1
    pipeline.load_builder(c)  # Builds the dataset into the tmp dir.
    return c


def _with(cfg: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.update(overrides)
    return cfg


def _video(t=10, h=12, w=16) -> tf.Tensor:
    """uint8 (t, h, w, 3) whose channels encode (frame, row, column) indices."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return tf.constant(np.stack([tt, yy, xx], -1).astype(np.uint8))


def _eager_and_graph(fn, video, seed):
    """fn(video, seed) eagerly and inside tf.data.Dataset.map."""
    eager = fn(video, tf.constant(seed, tf.int64)).numpy()
    ds = tf.data.Dataset.from_tensors((video, tf.constant(seed, tf.int64))).map(fn)
    graph = next(iter(ds)).numpy()
    return eager, graph


# ------------------------------------------------------------------------- ops


@pytest.mark.parametrize(
    "name, fn",
    [
        ("sample_clip", lambda v, s: pipeline.sample_clip(v, num_frames=3, stride=2, seed=s)),
        (
            "random_resized_crop",
            lambda v, s: pipeline.random_resized_crop(
                v, size=8, scale=(0.3, 1.0), aspect_ratio=(0.5, 2.0), seed=s
            ),
        ),
        ("random_flip", lambda v, s: pipeline.random_flip(v, seed=s)),
        ("normalize", lambda v, s: pipeline.normalize(v, mean=(0.4, 0.5, 0.6), std=(0.2,) * 3)),
        ("resize_short_side", lambda v, s: pipeline.resize_short_side(v, 6)),
        ("spatial_crops", lambda v, s: pipeline.spatial_crops(v, size=10, num_crops=3)),
        (
            "uniform_clips",
            lambda v, s: pipeline.uniform_clips(v, num_frames=2, stride=3, num_clips=3),
        ),
    ],
)
def test_op_eager_equals_tf_data(name, fn):
    for seed in ([0, 1], [5, 7]):
        eager, graph = _eager_and_graph(fn, _video(), seed)
        np.testing.assert_array_equal(eager, graph, err_msg=name)


def test_sample_clip_stride_start_and_loop():
    video = _video(t=10)
    starts = set()
    for i in range(40):
        clip = pipeline.sample_clip(video, num_frames=3, stride=2, seed=tf.constant([i, 0])).numpy()
        frames = clip[:, 0, 0, 0].astype(int)
        assert frames[1] - frames[0] == 2 and frames[2] - frames[1] == 2
        starts.add(frames[0])
    assert starts == set(range(10 - 5 + 1))  # Every valid start occurs, no other.
    # A video shorter than the span loops around.
    clip = pipeline.sample_clip(_video(t=3), num_frames=4, stride=2, seed=tf.constant([0, 0]))
    np.testing.assert_array_equal(clip.numpy()[:, 0, 0, 0], [0, 2, 1, 0])


def test_uniform_clips_spacing():
    clips = pipeline.uniform_clips(_video(t=20), num_frames=3, stride=2, num_clips=3).numpy()
    np.testing.assert_array_equal(clips[:, :, 0, 0, 0], [[0, 2, 4], [8, 10, 12], [15, 17, 19]])
    centre = pipeline.uniform_clips(_video(t=20), num_frames=3, stride=2, num_clips=1).numpy()
    np.testing.assert_array_equal(centre[:, :, 0, 0, 0], [[8, 10, 12]])


def test_random_resized_crop_full_box_is_identity():
    video = _video(t=2, h=12, w=12)
    out = pipeline.random_resized_crop(
        video, size=12, scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0), seed=tf.constant([3, 4])
    )
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), video.numpy().astype(np.float32), atol=1e-4)


def test_random_resized_crop_varies_with_seed():
    video = _video(t=2, h=32, w=32)
    outs = [
        pipeline.random_resized_crop(
            video, size=8, scale=(0.2, 0.5), aspect_ratio=(0.75, 1.33), seed=tf.constant([i, 0])
        ).numpy()
        for i in range(4)
    ]
    assert outs[0].shape == (2, 8, 8, 3)
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_spatial_crops_along_long_side():
    video = _video(t=1, h=10, w=16)
    crops = pipeline.spatial_crops(video, size=10, num_crops=3).numpy()
    assert crops.shape == (3, 1, 10, 10, 3)
    np.testing.assert_array_equal(crops[:, 0, 0, 0, 2], [0, 3, 6])  # Left, centre, right.
    tall = pipeline.spatial_crops(_video(t=1, h=16, w=10), size=10, num_crops=3).numpy()
    np.testing.assert_array_equal(tall[:, 0, 0, 0, 1], [0, 3, 6])  # Top, centre, bottom.
    one = pipeline.spatial_crops(video, size=10, num_crops=1).numpy()
    np.testing.assert_array_equal(one[0], crops[1])


def test_resize_short_side_keeps_aspect():
    assert pipeline.resize_short_side(_video(t=2, h=12, w=24), 6).shape == (2, 6, 12, 3)
    assert pipeline.resize_short_side(_video(t=2, h=24, w=12), 6).shape == (2, 12, 6, 3)


def test_random_flip_both_ways():
    video = _video(t=1)
    outcomes = set()
    for i in range(16):
        out = pipeline.random_flip(video, seed=tf.constant([i, 1])).numpy()
        if np.array_equal(out, video.numpy()):
            outcomes.add("same")
        else:
            np.testing.assert_array_equal(out, video.numpy()[:, :, ::-1])
            outcomes.add("flipped")
    assert outcomes == {"same", "flipped"}


def _encoded_frames(encoding: str, t=3, h=57, w=83) -> tuple[np.ndarray, tf.Tensor]:
    """(full decodes, string (t,) frames) of noise with a bright bar: textured, so that a
    chroma error at a window's edge shows. Odd sizes leave partial 16x16 blocks."""
    rng = np.random.default_rng(7)
    video = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    video[:, :, 20:30] = 255
    encode = tf.io.encode_jpeg if encoding == "jpeg" else tf.io.encode_png
    frames = tf.stack([encode(tf.constant(f)) for f in video])
    full = np.stack([tf.io.decode_image(f, channels=3).numpy() for f in frames])
    return full, frames


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
def test_decode_frames_window_equals_cropped_full_decode(encoding):
    """Decoding only a window (decode_and_crop_jpeg plus a margin) gives exactly a full
    decode's pixels, for windows on 16-pixel block edges, at the frame's edges and
    inside it; without the margin libjpeg's first/last columns differ (measured)."""
    full, frames = _encoded_frames(encoding)
    np.testing.assert_array_equal(pipeline.decode_frames(frames).numpy(), full)
    boxes = [(0, 0, 57, 83), (0, 16, 20, 16), (16, 32, 9, 33), (5, 3, 50, 77), (56, 82, 1, 1)]
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = rng.integers(1, 58), rng.integers(1, 84)
        boxes.append((rng.integers(0, 58 - h), rng.integers(0, 84 - w), h, w))
    jpeg = encoding == "jpeg"

    @tf.function
    def decode(frames, box):
        return pipeline.decode_frames(frames, box=tuple(tf.unstack(box)), jpeg=jpeg)

    for y, x, h, w in boxes:
        got = decode(frames, tf.constant([y, x, h, w], tf.int32)).numpy()
        np.testing.assert_array_equal(got, full[:, y : y + h, x : x + w], err_msg=str((y, x, h, w)))
    if jpeg:  # The margin is needed: libjpeg's window alone differs at its edge columns.
        alone = tf.io.decode_and_crop_jpeg(frames[0], [0, 16, 20, 16], channels=3).numpy()
        assert not np.array_equal(alone, full[0, 0:20, 16:32])


def test_normalize_values():
    video = tf.constant(np.array([0, 255], np.uint8).reshape(2, 1, 1, 1) * np.ones((1, 1, 1, 3)))
    out = pipeline.normalize(tf.cast(video, tf.uint8), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.5))
    np.testing.assert_allclose(out.numpy()[0, 0, 0], [-2.0, -2.0, -1.2], rtol=1e-6)
    np.testing.assert_allclose(out.numpy()[1, 0, 0], [3.0, 2.0, 0.8], rtol=1e-6)


# --------------------------------------------------------------------- datasets


def _batches(ds, n):
    return [b for _, b in zip(range(n), ds.as_numpy_iterator())]


def _ids(cfg, split) -> set[int]:
    """Ids of a (sub-)split, read directly with TFDS (stored order is not id order)."""
    ds = pipeline.load_builder(cfg).as_dataset(split=split)
    return {int(ex["id"]) for ex in ds.as_numpy_iterator()}


def test_dataset_info(data_cfg):
    info = pipeline.dataset_info(data_cfg)
    assert info.num_classes == 12 == len(info.class_names)
    assert info.class_names[0] == "move_right"
    assert info.split_sizes == {"train": 360, "validation": 120, "test": 120}


def test_train_batches_shapes_and_normalization(data_cfg):
    (batch,) = _batches(pipeline.train_dataset(data_cfg, batch_size=6, seed=0), 1)
    assert batch["video"].shape == (6, 4, 24, 24, 3) and batch["video"].dtype == np.float32
    assert batch["label"].shape == (6,) and batch["label"].dtype == np.int32
    # uint8 pixels map into [(0 - mean) / std, (1 - mean) / std].
    assert batch["video"].min() >= -0.45 / 0.225 - 1e-5
    assert batch["video"].max() <= 0.55 / 0.225 + 1e-5
    assert batch["video"].std() > 0.1


def test_train_deterministic_for_a_seed(data_cfg):
    a = _batches(pipeline.train_dataset(data_cfg, batch_size=4, seed=3), 3)
    b = _batches(pipeline.train_dataset(data_cfg, batch_size=4, seed=3), 3)
    c = _batches(pipeline.train_dataset(data_cfg, batch_size=4, seed=4), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["video"], y["video"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not all(np.array_equal(x["video"], z["video"]) for x, z in zip(a, c))


def test_train_process_shares_disjoint_and_cover(data_cfg):
    cfg = _with(data_cfg, label_key="id", train_split="train[:60]")
    shares = []
    for index in range(2):
        ds = pipeline.train_dataset(
            cfg, batch_size=10, seed=0, process_index=index, process_count=2
        )
        # One epoch of this process's 30 examples, then the second epoch starts.
        ids = np.concatenate([b["label"] for b in _batches(ds, 6)])
        assert sorted(ids[:30]) == sorted(ids[30:])  # Repeats the same share.
        shares.append(set(ids[:30].tolist()))
    assert len(shares[0]) == len(shares[1]) == 30
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == _ids(data_cfg, "train[:60]")


def test_eval_every_example_once_and_lockstep(data_cfg):
    cfg = _with(data_cfg, label_key="id", eval_split="test[:50]", eval_num_crops=3)
    seen, num_batches = [], []
    for index in range(3):  # Shares of 17, 17 and 16 examples.
        batches = list(
            pipeline.eval_dataset(
                cfg, batch_size=8, process_index=index, process_count=3
            ).as_numpy_iterator()
        )
        num_batches.append(len(batches))
        for b in batches:
            assert b["video"].shape == (8, 6, 4, 24, 24, 3) and b["video"].dtype == np.float32
            assert b["mask"].dtype == np.bool_ and b["label"].dtype == np.int32
            assert np.all(b["video"][~b["mask"]] == 0)
            seen.extend(b["label"][b["mask"]].tolist())
        masks = np.concatenate([b["mask"] for b in batches])
        # Real examples first, then padding.
        assert masks.sum() in (16, 17) and not masks[masks.sum() :].any()
    assert num_batches == [3, 3, 3]
    assert len(seen) == len(set(seen)) == 50
    assert set(seen) == _ids(data_cfg, "test[:50]")


def test_eval_views_are_distinct_clips(data_cfg):
    (batch,) = _batches(pipeline.eval_dataset(data_cfg, batch_size=4), 1)
    video = batch["video"]  # (4, 2 clips, T, S, S, 3)
    assert video.shape == (4, 2, 4, 24, 24, 3)
    assert not np.array_equal(video[:, 0], video[:, 1])
    assert batch["mask"].all()


# ------------------------------------------------------------- TFDS's own datasets


def test_tfds_ucf101_through_the_pipeline(data_cfg, tmp_path):
    """TFDS's own `ucf101` builder (its real features: a tfds Video of 256x256 frames and a
    101-way ClassLabel) runs through the same pipeline. Its videos cannot be downloaded here,
    so TFDS's mock serves random examples of that spec from split metadata written below."""
    import tensorflow_datasets as tfds

    n = 5
    builder = tfds.builder("ucf101/ucf101_1_256", data_dir=str(tmp_path))
    builder.info.set_splits(
        tfds.core.SplitDict(
            [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s in ("train", "test")]
        )
    )
    tf.io.gfile.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    cfg = _with(
        data_cfg,
        name="ucf101",
        builder_config="ucf101_1_256",
        data_dir=str(tmp_path),
        random_flip=True,
        eval_num_crops=3,
        cache=False,
    )
    mock = tfds.testing.mock_data(
        num_examples=n, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)
    )
    with mock:
        info = pipeline.dataset_info(cfg)
        assert info.num_classes == 101 and info.class_names[0] == "ApplyEyeMakeup"
        assert info.split_sizes == {"train": n, "test": n}
        (batch,) = _batches(pipeline.train_dataset(cfg, batch_size=2, seed=0), 1)
        assert batch["video"].shape == (2, 4, 24, 24, 3) and batch["video"].dtype == np.float32
        assert batch["label"].dtype == np.int32
        batches = list(pipeline.eval_dataset(cfg, batch_size=4).as_numpy_iterator())
        stored = [int(ex["label"]) for ex in pipeline.load_builder(cfg).as_dataset(split="test")]
    assert [b["video"].shape for b in batches] == [(4, 6, 4, 24, 24, 3)] * 2
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.tolist() == [True] * n + [False] * 3
    assert np.concatenate([b["label"] for b in batches])[mask].tolist() == stored
