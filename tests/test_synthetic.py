"""Tests of the `synthetic_actions` generator and TFDS builder (tiny config)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vkd_jax.data import synthetic

GEO = synthetic.Geometry(num_frames=8, height=32, width=32, num_distractors=2)


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    b = tfds.builder("synthetic_actions", config="tiny", data_dir=tmp_path_factory.mktemp("tfds"))
    b.download_and_prepare()
    return b


def _split(n, seed, split_id, geo=GEO):
    ids, videos, labels = zip(*synthetic.generate_split(n, geo, seed, split_id))
    return np.array(ids), np.stack(videos), np.array(labels)


def test_class_names():
    assert len(synthetic.CLASS_NAMES) == synthetic.NUM_CLASSES >= 10
    assert len(set(synthetic.CLASS_NAMES)) == synthetic.NUM_CLASSES
    for name in synthetic.CLASS_NAMES:
        assert f"| {name} " in synthetic.__doc__  # Every class is documented.


def test_generate_shapes_and_range():
    ids, videos, labels = _split(40, 0, 0)
    assert videos.shape == (40, 8, 32, 32, 3) and videos.dtype == np.uint8
    np.testing.assert_array_equal(ids, np.arange(40))
    assert videos.min() < 60 and videos.max() > 200  # Dark background, bright objects.
    assert not np.array_equal(videos[:, 0], videos[:, -1])  # Things move.


def test_generate_deterministic_and_splits_differ():
    _, a, la = _split(40, 0, 0)
    _, b, lb = _split(40, 0, 0)
    _, c, _ = _split(40, 0, 1)
    _, d, _ = _split(40, 1, 0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_labels_balanced():
    labels = synthetic.split_labels(365, seed=0, split_id=0)
    counts = np.bincount(labels, minlength=synthetic.NUM_CLASSES)
    assert counts.max() - counts.min() <= 1
    assert not np.array_equal(labels[:12], np.arange(12))  # Shuffled, not round robin.


@pytest.mark.parametrize(
    "forward, backward",
    [
        ("move_right", "move_left"),
        ("move_down", "move_up"),
        ("grow", "shrink"),
        ("rotate_cw", "rotate_ccw"),
        ("approach", "separate"),
    ],
)
def test_reversed_classes_have_identical_frames(forward, backward):
    """Same random draws: the backward class is the forward clip played in reverse,
    so the two classes have exactly the same distribution of frame sets."""
    names = list(synthetic.CLASS_NAMES)
    f = synthetic.generate_clips(np.array([names.index(forward)]), GEO, np.random.default_rng(7))
    b = synthetic.generate_clips(np.array([names.index(backward)]), GEO, np.random.default_rng(7))
    np.testing.assert_array_equal(b[0], f[0, ::-1])
    assert not np.array_equal(b[0], f[0])


def test_move_right_moves_right():
    """Without distractors only the moving disc changes the frames of move_right; the
    column profile of the changes shifts right from one frame pair to the next."""
    geo = synthetic.Geometry(num_frames=8, height=64, width=64, num_distractors=0)
    label = list(synthetic.CLASS_NAMES).index("move_right")
    videos = synthetic.generate_clips(np.full(8, label), geo, np.random.default_rng(0))
    change = np.abs(np.diff(videos.astype(np.float32), axis=1)).sum(-1).sum(2)  # (n, T-1, W)
    shifts = []
    for clip in change:
        # Circular cross-correlation of consecutive change profiles (the world is a torus).
        scores = [
            sum(np.dot(clip[t], np.roll(clip[t + 1], -s)) for t in range(len(clip) - 1))
            for s in range(-4, 5)
        ]
        shifts.append(int(np.argmax(scores)) - 4)
    assert all(s > 0 for s in shifts), shifts


def test_builder(builder):
    info = builder.info
    assert info.features["label"].names == list(synthetic.CLASS_NAMES)
    assert info.splits["train"].num_examples == 360
    assert info.splits["test"].num_examples == 120
    assert info.features["video"].shape == (8, 32, 32, 3)
    examples = list(tfds.as_numpy(builder.as_dataset(split="test")))
    ids = np.array([ex["id"] for ex in examples])
    assert sorted(ids) == list(range(120))
    labels = np.bincount([ex["label"] for ex in examples], minlength=12)
    assert labels.min() == labels.max() == 10
    # The stored clips are exactly the generator's (deterministic build).
    geo = builder.builder_config.geometry
    want_ids, want, want_labels = _split(120, builder.builder_config.seed, 1, geo)
    by_id = {ex["id"]: ex for ex in examples}
    for i in (0, 37, 119):
        np.testing.assert_array_equal(by_id[i]["video"], want[i])
        assert by_id[i]["label"] == want_labels[i]


def _rendered_without(geo, **changes):
    """Clips of every class from one generator state, with some geometry fields changed."""
    import dataclasses

    geo = dataclasses.replace(geo, **changes)
    return synthetic.generate_clips(np.arange(12), geo, np.random.default_rng(3))


def test_motion_scale_moves_further_per_frame():
    """motion_scale multiplies how far things travel: more change between frames, the
    same first frame of a forward class (only velocities are scaled, not positions), and
    growing (bounded by the frame) unchanged."""
    geo = synthetic.Geometry(num_frames=16, height=32, width=32, num_distractors=2)
    slow = _rendered_without(geo)
    fast = _rendered_without(geo, motion_scale=4.0)
    motion = lambda v: np.abs(np.diff(v.astype(np.float32), axis=1)).mean()
    assert motion(fast) > 2.0 * motion(slow)
    grow = synthetic.CLASS_NAMES.index("grow")
    no_distractors = dict(num_distractors=0)
    np.testing.assert_array_equal(
        _rendered_without(geo, **no_distractors)[grow],
        _rendered_without(geo, motion_scale=4.0, **no_distractors)[grow],
    )


def test_light_fading_is_an_arrow_of_time():
    """Every clip, reversed classes included, dims from its first frame to its last, so
    the time-reversal pairs no longer share their frame sets; without fading the clips
    are exactly those of the base design (the fade is drawn last)."""
    geo = synthetic.Geometry(num_frames=16, height=32, width=32, num_distractors=2)
    base = _rendered_without(geo)
    faded = _rendered_without(geo, light_fading=0.5)
    brightness = faded.astype(np.float32).mean(axis=(2, 3, 4))  # (12 classes, T)
    assert (np.diff(brightness, axis=1) < 0).mean() > 0.9
    ratio = brightness[:, -1] / brightness[:, 0]
    assert np.all((ratio > 0.4) & (ratio < 0.85)), ratio  # Dims by 1/4 to 1/2 of the light.
    np.testing.assert_array_equal(_rendered_without(geo, light_fading=0.0), base)
    assert not np.array_equal(faded, base)


def test_long_config_geometry():
    long = {c.name: c for c in synthetic.SyntheticActions.BUILDER_CONFIGS}["long"]
    geo = long.geometry
    assert (geo.num_frames, geo.height, geo.width) == (64, 32, 32)
    assert geo.motion_scale == 4.0 and geo.light_fading > 0 and geo.light_from_above > 0


def test_other_domain_changes_the_look_not_the_actions():
    """actor_shape, background and camera_motion (long_ood) change every clip's pixels;
    off, the clips are exactly the base design's (their draws come only when on)."""
    geo = synthetic.Geometry(num_frames=16, height=32, width=32, num_distractors=2)
    base = _rendered_without(geo)
    for change in (
        dict(actor_shape="diamond"),
        dict(background="checker"),
        dict(camera_motion=0.25),
    ):
        other = _rendered_without(geo, **change)
        assert other.shape == base.shape and not np.array_equal(other, base), change
    np.testing.assert_array_equal(
        _rendered_without(geo, actor_shape="disc", background="gratings", camera_motion=0.0), base
    )
    # A panning camera moves the static background: frames differ where a still camera's
    # background pixels would not.
    still = _rendered_without(geo, num_distractors=0)
    panned = _rendered_without(geo, num_distractors=0, camera_motion=0.25)
    grow = synthetic.CLASS_NAMES.index("rotate_cw")
    motion = lambda v: np.abs(np.diff(v.astype(np.float32), axis=0)).mean()
    assert motion(panned[grow]) > 2 * motion(still[grow])
    with pytest.raises(ValueError, match="actor_shape"):
        _rendered_without(geo, actor_shape="star")
    with pytest.raises(ValueError, match="background"):
        _rendered_without(geo, background="plaid")
    configs = {c.name: c for c in synthetic.SyntheticActions.BUILDER_CONFIGS}
    ood, long = configs["long_ood"].geometry, configs["long"].geometry
    assert (ood.num_frames, ood.height, ood.width) == (long.num_frames, long.height, long.width)
    assert (ood.motion_scale, ood.light_fading) == (long.motion_scale, long.light_fading)
    assert configs["long_ood"].seed not in (configs["long"].seed, configs["default"].seed)
