"""The video_folder TFDS builder on tiny real videos written with PyAV.

Each layout is written in its official form (tests/video_fixtures.py), built
into a TFDS data_dir, and read back with `tfds.builder(...)` like any TFDS
dataset: frames, labels, split counts, skipped-video reports, subsets, EPIC
segment cutting, parallel decoding and interrupted builds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
import video_fixtures

from vkd_jax import config_lib
from vkd_jax.data import decode, video_folder

# Mean absolute error (units of 255) allowed between the frames written and the
# frames read back: H.264/VP9 4:4:4 lossless fixtures are off by RGB<->YUV
# rounding (~0.4), MPEG-4 part 2 at qscale 1 in 4:2:0 by 2-3.5, JPEG 95 adds ~1.
# A frame off by one in time or from another video is off by 20 or more.
LOSSLESS_TOL = 1.0
AVI_TOL = 5.0
JPEG_TOL = 3.0


def data_config(data_dir, ds=None, **folder) -> ml_collections.ConfigDict:
    """`config.data` for a video_folder dataset built into `data_dir`."""
    data = config_lib.default_config().data
    with data.unlocked():
        data.name = "video_folder"
        data.data_dir = str(data_dir)
        if "folder" not in data:  # Until configs/default.py declares the section.
            data.folder = ml_collections.ConfigDict(
                {
                    "root": "",
                    "annotations": "",
                    "layout": "generic",
                    "split": 1,
                    "short_side": 128,
                    "fps": 0.0,
                    "max_frames": 0,
                    "subset": 0,
                    "num_workers": 2,
                    "name": "",
                }
            )
        f = data.folder
        if ds is not None:
            f.root, f.annotations = ds.root, ds.annotations
        f.short_side = 0
        f.num_workers = 0
        for key, value in folder.items():
            f[key] = value
    return data


def read_split(builder, split: str) -> dict[str, dict]:
    """video_id -> numpy example of one split."""
    out = {}
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
        out[ex["video_id"].decode()] = ex
    return out


def read_back(data_dir, name: str):
    """The built dataset as TFDS finds it by name, without any source folder."""
    return tfds.builder(f"video_folder/{name}", data_dir=str(data_dir))


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def check_dataset(builder, ds: video_fixtures.FixtureDataset, *, tol: float) -> None:
    """Labels, per-split counts and frames of `builder` match the fixture."""
    assert builder.info.features["label"].names == ds.class_names
    assert set(builder.info.splits) == set(ds.expected)
    for split, expected in ds.expected.items():
        examples = read_split(builder, split)
        assert {k: int(ex["label"]) for k, ex in examples.items()} == expected, split
        assert builder.info.splits[split].num_examples == len(expected)
        for video_id, ex in examples.items():
            assert ex["video"].dtype == np.uint8
            assert mean_abs_error(ex["video"], ds.frames[video_id]) < tol, video_id


def check_skipped(builder, ds: video_fixtures.FixtureDataset) -> None:
    """The skipped report lists exactly the fixture's bad videos, with reasons."""
    skipped = video_folder.read_skipped(builder)
    got = {(s["split"], s["video_id"]): s["reason"] for s in skipped}
    want = {(split, vid): reason for split, bad in ds.bad.items() for vid, reason in bad.items()}
    assert set(got) == set(want)
    for key, reason in want.items():
        assert reason.lower() in got[key].lower(), (key, got[key])


# ------------------------------------------------------------------ decoding


def test_decode_resamples_resizes_and_truncates(tmp_path):
    frames = video_fixtures.pattern_frames(10, 24, 32, seed=1)
    path = str(tmp_path / "v.mp4")
    video_fixtures.write_video(path, frames, fps=10.0)

    same = video_folder.decode_video(path)
    assert mean_abs_error(same, frames) < LOSSLESS_TOL
    # Half the rate keeps every other frame.
    half = video_folder.decode_video(path, fps=5.0)
    assert half.shape[0] == 5
    np.testing.assert_array_equal(half, same[::2])
    # Double the rate shows every frame twice.
    double = video_folder.decode_video(path, fps=20.0)
    np.testing.assert_array_equal(double, np.repeat(same, 2, axis=0))
    # 4 fps: output times 0, .25, .5, .75 take source frames 0, 2, 5, 7.
    np.testing.assert_array_equal(video_folder.decode_video(path, fps=4.0), same[[0, 2, 5, 7]])
    # Short side 12: 24x32 -> 12x16, still close to a downscale of the source.
    small = video_folder.decode_video(path, short_side=12)
    assert small.shape == (10, 12, 16, 3)
    pooled = frames.reshape(10, 12, 2, 16, 2, 3).mean(axis=(2, 4))
    assert mean_abs_error(small, pooled) < 2.0
    assert video_folder.decode_video(path, max_frames=3).shape[0] == 3
    assert video_folder.decode_video(path, fps=5.0, max_frames=2).shape[0] == 2


def test_decode_task_reports_bad_files(tmp_path):
    def task(path):
        return decode.DecodeTask(str(path), None, None, 0, 0.0, 0, "png")

    video_fixtures.write_empty(str(tmp_path / "empty.mp4"))
    video_fixtures.write_corrupt(str(tmp_path / "corrupt.mp4"))
    frames = video_fixtures.pattern_frames(4, 16, 16, seed=2)
    video_fixtures.write_truncated(str(tmp_path / "cut.mp4"), frames)
    for name, reason in [
        ("missing.mp4", "missing file"),
        ("empty.mp4", "empty file"),
        ("corrupt.mp4", "InvalidData"),
        ("cut.mp4", "Error"),
    ]:
        encoded, _, got = decode.decode_task(task(tmp_path / name))
        assert encoded is None and reason in got, (name, got)
    video_fixtures.write_video(str(tmp_path / "ok.mp4"), frames, fps=8.0)
    encoded, fps, reason = decode.decode_task(task(tmp_path / "ok.mp4"))
    assert reason is None and len(encoded) == 4 and fps == pytest.approx(8.0)
    # A segment after the end of the video has no frames.
    late = dataclasses.replace(task(tmp_path / "ok.mp4"), start=5.0, stop=6.0)
    assert decode.decode_task(late) == (None, 0.0, "no frames decoded")


def test_timestamps():
    assert video_folder.parse_timestamp("00:00:01.50") == pytest.approx(1.5)
    assert video_folder.parse_timestamp("01:02:03.04") == pytest.approx(3723.04)


# ------------------------------------------------------------------- layouts


@pytest.fixture(scope="module")
def ucf101(tmp_path_factory):
    return video_fixtures.make_ucf101(str(tmp_path_factory.mktemp("ucf101")))


def test_ucf101_builds_reads_back_and_reports_bad_videos(ucf101, tmp_path):
    data = data_config(tmp_path / "tfds", ucf101, layout="ucf101", encoding="png")
    builder = video_folder.prepare(data)
    name = builder.builder_config.name
    assert name == "ucf101_split1_short0_fps0_frames0_all_png"
    check_skipped(builder, ucf101)

    # Read back by name with plain TFDS, without the source folder.
    reread = read_back(tmp_path / "tfds", name)
    assert reread.is_prepared()
    check_dataset(reread, ucf101, tol=AVI_TOL)
    ex = next(iter(read_split(reread, "test").values()))
    assert ex["fps"] == pytest.approx(10.0)
    # The same config without root finds the prepared data too.
    data.folder.root = data.folder.annotations = ""
    again = video_folder.builder_from_config(data)
    assert again.is_prepared()
    assert again.info.features["label"].names == ucf101.class_names
    assert again.info.splits["train"].num_examples == len(ucf101.expected["train"])


def test_ucf101_splits_do_not_collide(ucf101, tmp_path):
    data_dir = tmp_path / "tfds"
    one = video_folder.prepare(data_config(data_dir, ucf101, layout="ucf101", split=1))
    two = video_folder.prepare(data_config(data_dir, ucf101, layout="ucf101", split=2))
    assert one.data_path != two.data_path
    for split_number, builder in ((1, one), (2, two)):
        expected = ucf101.extra[f"expected_split{split_number}"]
        got = read_split(read_back(data_dir, builder.builder_config.name), "test")
        assert {k: int(ex["label"]) for k, ex in got.items()} == expected["test"]


def test_hmdb51(tmp_path):
    ds = video_fixtures.make_hmdb51(str(tmp_path / "src"))
    data = data_config(tmp_path / "tfds", ds, layout="hmdb51", encoding="png")
    builder = video_folder.prepare(data)
    check_skipped(builder, ds)
    check_dataset(read_back(tmp_path / "tfds", builder.builder_config.name), ds, tol=AVI_TOL)


def test_kinetics400(tmp_path):
    ds = video_fixtures.make_kinetics(str(tmp_path / "src"))
    data = data_config(tmp_path / "tfds", ds, layout="kinetics400")  # JPEG frames.
    builder = video_folder.prepare(data)
    check_skipped(builder, ds)
    check_dataset(read_back(tmp_path / "tfds", builder.builder_config.name), ds, tol=JPEG_TOL)


def test_ssv2(tmp_path):
    ds = video_fixtures.make_ssv2(str(tmp_path / "src"))
    data = data_config(tmp_path / "tfds", ds, layout="ssv2", encoding="png")
    builder = video_folder.prepare(data)
    check_skipped(builder, ds)
    check_dataset(read_back(tmp_path / "tfds", builder.builder_config.name), ds, tol=LOSSLESS_TOL)
    example = next(iter(read_split(builder, "validation").values()))
    assert example["fps"] == pytest.approx(12.0)


def test_epic_kitchens_cuts_segments_by_timestamps(tmp_path):
    ds = video_fixtures.make_epic_kitchens(str(tmp_path / "src"))
    data = data_config(tmp_path / "tfds", ds, layout="epic_kitchens100", encoding="png")
    builder = video_folder.prepare(data)
    assert video_folder.read_skipped(builder) == []
    reread = read_back(tmp_path / "tfds", builder.builder_config.name)
    check_dataset(reread, ds, tol=LOSSLESS_TOL)  # Also checks every segment's length.
    assert reread.info.features["verb"].names == ds.extra["verbs"]
    assert reread.info.features["noun"].names == ds.extra["nouns"]
    for split in ds.expected:
        for narration_id, ex in read_split(reread, split).items():
            _, _, _, verb, noun = ds.extra["segments"][narration_id]
            assert (int(ex["verb"]), int(ex["noun"])) == (verb, noun)
            assert ex["video"].shape == (ds.extra["num_frames"][narration_id], 32, 48, 3)

    # Resampled to 10 fps: a [0.5, 1.0) s segment has 5 frames, [1.0, 2.5) s 15.
    data10 = data_config(tmp_path / "tfds", ds, layout="epic_kitchens100", fps=10.0, short_side=16)
    resampled = read_split(video_folder.prepare(data10), "train")
    assert resampled["P01_01_0"]["video"].shape == (5, 16, 24, 3)
    assert resampled["P01_01_1"]["video"].shape == (15, 16, 24, 3)


def test_generic_with_split_lists(tmp_path):
    ds = video_fixtures.make_generic(str(tmp_path / "src"), with_lists=True)
    builder = video_folder.prepare(data_config(tmp_path / "tfds", ds, layout="generic"))
    check_skipped(builder, ds)
    check_dataset(read_back(tmp_path / "tfds", builder.builder_config.name), ds, tol=JPEG_TOL)


def test_generic_folders_without_videos_are_not_classes(tmp_path, caplog):
    """Split lists kept in root/splits/ and an emptied class folder: neither is a class
    (both once were, with a class `splits` of no video), and the build log says so."""
    ds = video_fixtures.make_generic(str(tmp_path / "src"), per_class=3, with_lists=True)
    splits = os.path.join(ds.root, "splits")
    os.makedirs(splits)
    for name in ("train.txt", "test.txt"):
        os.replace(os.path.join(ds.root, name), os.path.join(splits, name))
    os.makedirs(os.path.join(ds.root, "zzz_empty", "nested"))
    with caplog.at_level(logging.WARNING):
        catalog = video_folder.read_catalog("generic", ds.root, splits)
    assert catalog.class_names == ds.class_names
    assert "splits, zzz_empty" in caplog.text and "not classes" in caplog.text
    train_ids = {item.video_id for item in catalog.splits["train"]}
    assert train_ids == set(ds.expected["train"]) | set(ds.bad["train"])
    assert not catalog.problems


def test_generic_without_any_video_names_the_layout(tmp_path):
    os.makedirs(tmp_path / "root" / "notes")
    with pytest.raises(FileNotFoundError, match=r"root/<class>/<video>"):
        video_folder.read_catalog("generic", str(tmp_path / "root"))


def test_generic_seeded_split_without_lists(tmp_path):
    ds = video_fixtures.make_generic(str(tmp_path / "src"), per_class=10)
    catalogs = [video_folder.read_catalog("generic", ds.root, seed=seed) for seed in (0, 0, 1)]
    ids = [{s: [i.video_id for i in items] for s, items in c.splits.items()} for c in catalogs]
    assert ids[0] == ids[1] and ids[0] != ids[2]
    # 80/20 per class: the corrupt file makes the first class 11 videos (2 test).
    for label, cls in enumerate(ds.class_names):
        test = [i for i in catalogs[0].splits["test"] if i.label == label]
        assert len(test) == 2 and all(i.video_id.startswith(cls + "/") for i in test)
    assert len(catalogs[0].splits["train"]) == 31 - 6


def test_resize_short_side(tmp_path):
    ds = video_fixtures.make_generic(str(tmp_path / "src"), per_class=2, with_lists=True)
    builder = video_folder.prepare(
        data_config(tmp_path / "tfds", ds, layout="generic", short_side=12, max_frames=5)
    )
    for ex in read_split(builder, "train").values():
        assert ex["video"].shape == (5, 12, 16, 3)


# ------------------------------------------------------------------- subsets


def test_balanced_subset_unit():
    items = [video_folder.VideoItem(f"{c}/{i}", "", c) for c in range(3) for i in range(4 + 3 * c)]
    sub = video_folder.balanced_subset(items, 8, seed=0)
    counts = np.bincount([i.label for i in sub], minlength=3)
    assert len(sub) == 8 and counts.max() - counts.min() <= 1
    assert sub == video_folder.balanced_subset(items, 8, seed=0)
    assert sub != video_folder.balanced_subset(items, 8, seed=1)
    # A class with too few videos gives all it has; the others fill the rest.
    small = [i for i in items if i.label != 0 or i.video_id.endswith("/0")]
    counts = np.bincount([i.label for i in video_folder.balanced_subset(small, 9, 0)])
    assert counts.tolist() == [1, 4, 4]


def test_subset_build(tmp_path):
    ds = video_fixtures.make_generic(str(tmp_path / "src"), per_class=5, with_lists=True)
    data = data_config(tmp_path / "tfds", ds, layout="generic", subset=6)
    builder = video_folder.prepare(data)
    assert "sub6seed0" in builder.builder_config.name
    train = read_split(builder, "train")
    assert len(train) <= 6  # The corrupt video may be drawn and skipped.
    labels = [int(ex["label"]) for ex in train.values()]
    assert np.bincount(labels, minlength=3).tolist() in ([2, 2, 2], [1, 2, 2])
    assert set(train) <= set(ds.expected["train"])
    # The test split is never subsampled; TFDS slicing also works on top.
    assert builder.info.splits["test"].num_examples == 3
    assert len(list(builder.as_dataset(split="train[:3]"))) == 3


# ------------------------------------------------- robustness and parallelism


def test_parallel_workers_match_in_process(tmp_path):
    ds = video_fixtures.make_generic(str(tmp_path / "src"), per_class=3, with_lists=True)
    serial = video_folder.prepare(data_config(tmp_path / "a", ds, layout="generic", encoding="png"))
    parallel = video_folder.prepare(
        data_config(tmp_path / "b", ds, layout="generic", encoding="png", num_workers=2)
    )
    check_skipped(parallel, ds)
    for split in ("train", "test"):
        a, b = read_split(serial, split), read_split(parallel, split)
        assert set(a) == set(b) and len(a) > 0
        for key in a:
            np.testing.assert_array_equal(a[key]["video"], b[key]["video"])
            assert a[key]["label"] == b[key]["label"]


def test_interrupted_build_is_not_prepared_and_rebuilds(tmp_path):
    ds = video_fixtures.make_generic(str(tmp_path / "src"), per_class=3, with_lists=True)
    data = data_config(tmp_path / "tfds", ds, layout="generic")
    seen = []

    def interrupt(split, video_id, reason):
        seen.append(video_id)
        if len(seen) == 4:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        video_folder.prepare(data, on_video=interrupt)
    assert len(seen) == 4
    builder = video_folder.builder_from_config(data)
    assert not builder.is_prepared()
    assert not os.path.exists(builder.data_path)
    with pytest.raises(Exception):  # noqa: B017 - TFDS raises its own not-found error.
        read_back(tmp_path / "tfds", builder.builder_config.name).as_dataset(split="train")

    builder = video_folder.prepare(data)
    assert builder.is_prepared()
    check_dataset(read_back(tmp_path / "tfds", builder.builder_config.name), ds, tol=JPEG_TOL)
    # No temporary directory is left behind.
    leftovers = [
        p for p in os.listdir(os.path.dirname(builder.data_path)) if "incomplete" in p.lower()
    ]
    assert leftovers == []


def test_read_without_source_or_data_fails_clearly(tmp_path):
    data = data_config(tmp_path / "tfds", layout="ucf101")
    builder = video_folder.builder_from_config(data)
    assert not builder.is_prepared()
    with pytest.raises(ValueError, match="folder.root is empty"):
        builder.download_and_prepare()


def test_config_names():
    make = video_folder.VideoFolderConfig.make
    assert make(layout="hmdb51", split=2, short_side=128, fps=12.5).name == (
        "hmdb51_split2_short128_fps12p5_frames0_all_jpeg"
    )
    assert make(layout="kinetics400", subset=10000).name == (
        "kinetics400_short128_fps0_frames0_sub10000seed0_jpeg"
    )
    assert make(name="mine", layout="ssv2").name == "mine"
    with pytest.raises(ValueError):
        make(layout="ucf101", split=4)
    with pytest.raises(ValueError):
        make(layout="youtube8m")


# ----------------------------------------------------------------- pipeline


def test_pipeline_reads_built_dataset(tmp_path):
    from vkd_jax.data import pipeline

    ds = video_fixtures.make_hmdb51(str(tmp_path / "src"))
    data = data_config(tmp_path / "tfds", ds, layout="hmdb51")
    with data.unlocked():
        data.num_frames, data.frame_stride, data.crop_size = 4, 2, 16
        data.eval_num_clips, data.shuffle_buffer = 1, 8
    info = pipeline.dataset_info(data)  # Builds the dataset on first use.
    assert info.class_names == ds.class_names
    assert info.split_sizes == {s: len(v) for s, v in ds.expected.items()}
    batch = next(
        iter(pipeline.train_dataset(data, batch_size=2, seed=0, process_index=0, process_count=1))
    )
    assert batch["video"].shape == (2, 4, 16, 16, 3)
    batches = list(pipeline.eval_dataset(data, batch_size=4, process_index=0, process_count=1))
    labels = np.concatenate([b["label"].numpy()[b["mask"].numpy()] for b in batches])
    assert sorted(labels.tolist()) == sorted(ds.expected["test"].values())


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
def test_pipeline_decoding_only_sampled_frames_matches_decoding_all(tmp_path, encoding):
    """Without `data.cache` the pipeline decodes only a clip's frames (JPEG: only its crop
    window); the batches equal those of the cached path, which decodes whole videos."""
    from vkd_jax.data import pipeline

    ds = video_fixtures.make_generic(
        str(tmp_path / "src"), per_class=2, num_frames=12, with_lists=True, height=72, width=100
    )
    data = data_config(tmp_path / "tfds", ds, layout="generic", encoding=encoding)
    with data.unlocked():
        data.num_frames, data.frame_stride, data.crop_size = 4, 2, 32
        data.train_scale, data.random_flip = (0.1, 1.0), True
        data.eval_num_clips, data.eval_num_crops, data.shuffle_buffer = 2, 3, 8
    builder = pipeline.load_builder(data)
    assert pipeline.frame_encoding(builder, data) == encoding
    batches = {}
    for cache in (True, False):
        with data.unlocked():
            data.cache = cache
        train = pipeline.train_dataset(data, batch_size=2, seed=3, process_index=0, process_count=1)
        evals = pipeline.eval_dataset(data, batch_size=2, process_index=0, process_count=1)
        batches[cache] = [b["video"] for b in train.take(6).as_numpy_iterator()] + [
            b["video"] for b in evals.as_numpy_iterator()
        ]
    assert len(batches[True]) == len(batches[False]) > 6
    for decoded, lazy in zip(batches[True], batches[False]):
        np.testing.assert_array_equal(lazy, decoded)


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
def test_pretext_decodes_only_the_chosen_clips_and_matches_decoding_all(
    tmp_path, encoding, monkeypatch
):
    """Pretraining reads through the same building block as supervised training: frames
    stay encoded until a task has chosen its clips, then only those are decoded (JPEG: only
    the crop window); the batches equal those of the cached path, which decodes whole
    videos."""
    from vkd_jax import pretext
    from vkd_jax.data import pipeline
    from vkd_jax.data import pretext as pretext_data

    ds = video_fixtures.make_generic(
        str(tmp_path / "src"), per_class=2, num_frames=12, with_lists=True, height=72, width=100
    )
    data = data_config(tmp_path / "tfds", ds, layout="generic", encoding=encoding)
    with data.unlocked():
        data.num_frames, data.frame_stride, data.crop_size = 4, 2, 32
        data.train_scale, data.shuffle_buffer = (0.1, 1.0), 8
    assert pipeline.frame_encoding(pipeline.load_builder(data), data) == encoding
    decoded_lengths = []
    decode_frames = pipeline.decode_frames

    def recording_decode(frames, **kw):  # Runs when tf.data traces the map function.
        decoded_lengths.append(frames.shape[0])
        return decode_frames(frames, **kw)

    monkeypatch.setattr(pipeline, "decode_frames", recording_decode)
    for name in ("rotnet", "cvrl", "tdl"):  # Both augmentations: plain and contrastive.
        pcfg = config_lib.default_config().pretext
        pcfg.task = name
        task, _ = pretext.build(pcfg, data)
        batches = {}
        for cache in (True, False):
            with data.unlocked():
                data.cache = cache
            decoded_lengths.clear()
            train = pretext_data.pretext_dataset(
                data, pcfg, task, split="train", batch_size=2, seed=3, process_index=0,
                process_count=1,
            )  # fmt: skip
            held_out = pretext_data.pretext_dataset(
                data, pcfg, task, split="test", batch_size=2, seed=3, train=False,
                process_index=0, process_count=1,
            )  # fmt: skip
            batches[cache] = [b["views"] for b in train.take(3).as_numpy_iterator()] + [
                b["views"] for b in held_out.as_numpy_iterator()
            ]
            if cache:  # TFDS decoded the whole videos; the pipeline decoded nothing.
                assert decoded_lengths == []
            else:  # Every decode was of one clip's frames, never a whole video.
                assert decoded_lengths and set(decoded_lengths) == {task.num_frames}, name
        assert len(batches[True]) == len(batches[False]) > 3
        for decoded, lazy in zip(batches[True], batches[False]):
            np.testing.assert_array_equal(lazy, decoded, err_msg=name)


def test_skipped_report_is_json_beside_the_data(tmp_path):
    ds = video_fixtures.make_generic(str(tmp_path / "src"), per_class=2, with_lists=True)
    data = data_config(tmp_path / "tfds", ds, layout="generic")
    builder = video_folder.prepare(data)
    path = os.path.join(builder.data_path, video_folder.SKIPPED_REPORT)
    report = json.load(open(path))
    assert [r["video_id"] for r in report] == ["jump/broken"]
    assert report[0]["path"].endswith("jump/broken.mp4")
    # The built data stays readable when the sources are gone, also through a
    # config that still names them.
    shutil.rmtree(ds.root)
    assert len(read_split(read_back(tmp_path / "tfds", builder.builder_config.name), "test")) == 3
    again = video_folder.builder_from_config(data)
    assert again.is_prepared() and again.info.features["label"].names == ds.class_names
    assert set(read_split(again, "train")) == set(ds.expected["train"])


def test_short_training_run_on_a_built_video_folder_dataset(tmp_path):
    """The real-video path end to end: build, train a tiny student 2 steps, evaluate."""
    from conftest import tiny_config

    from vkd_jax import stages, train

    ds = video_fixtures.make_hmdb51(str(tmp_path / "src"))
    config = tiny_config(tmp_path / "tfds")
    config.data = data_config(tmp_path / "tfds", ds, layout="hmdb51")
    config.data.num_frames, config.data.frame_stride, config.data.crop_size = 4, 2, 16
    config.data.eval_num_clips, config.data.shuffle_buffer = 1, 8
    config.data.cache = False
    config.train.batch_size = 4
    config.train.eval_batch_size = 4
    loss = stages.supervised_loss(config.loss)
    summary = train.run(
        config, train.Stage("folder", str(tmp_path / "run"), config.student, loss, 2)
    )
    assert summary["num_examples"] == len(ds.expected["test"])
    assert len(summary["per_class_accuracy"]) == len(ds.class_names)
