"""Tiny real video datasets written with PyAV, in each layout `video_folder` reads.

Every writer returns a `FixtureDataset`: where the videos and annotations are,
the class names, the expected label of every video per split, the frames that
were encoded (to compare with what is read back), and the videos that are
expected to be skipped (corrupt, empty, truncated, missing).
"""

from __future__ import annotations

import csv
import dataclasses
import fractions
import json
import os

import av
import numpy as np
from av.video.reformatter import Interpolation

_SWS_FLAGS = Interpolation.BICUBIC | Interpolation.FULL_CHR_H_INP | Interpolation.ACCURATE_RND


@dataclasses.dataclass
class FixtureDataset:
    """A written dataset and what building it must give.

    Attributes:
      root: Folder holding the videos.
      annotations: Folder holding the annotation/split files.
      class_names: Expected `label` names, index = label.
      expected: Split -> {video_id: label} of the videos that must be built.
      frames: video_id -> the uint8 (T, H, W, 3) frames encoded for it.
      bad: Split -> {video_id: substring expected in the skip reason}.
      extra: Layout-specific expectations (e.g. EPIC verb/noun, frame counts).
    """

    root: str
    annotations: str
    class_names: list[str]
    expected: dict[str, dict[str, int]]
    frames: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    bad: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)


def pattern_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth moving colour waves, uint8 (T, H, W, 3); `seed` picks the motion.

    Low spatial frequencies keep lossy codecs (and 4:2:0 chroma) accurate, so
    decoded frames can be compared with these within a few units of 255.
    """
    rng = np.random.default_rng(seed)
    fy, fx = rng.uniform(0.2, 0.6, size=2)
    speed = rng.uniform(0.2, 0.6) * (1 if seed % 2 else -1)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    t = np.arange(num_frames)[:, None, None, None]
    y = np.arange(height)[None, :, None, None] / height
    x = np.arange(width)[None, None, :, None] / width
    wave = np.sin(2 * np.pi * (fx * x + fy * y) + speed * t + phase)
    return np.clip(128 + 90 * wave, 0, 255).astype(np.uint8)


def write_video(path: str, frames: np.ndarray, fps: float = 10.0) -> None:
    """Writes uint8 (T, H, W, 3) frames with PyAV; the codec follows the extension.

    .mp4: H.264 4:4:4 at crf 0 (lossless but for RGB<->YUV rounding);
    .avi: MPEG-4 part 2 at the highest quality (as UCF101/HMDB51);
    .webm: VP9 lossless (as SSv2).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ext = os.path.splitext(path)[1].lower()
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(path, "w") as container:
        if ext == ".avi":
            stream = container.add_stream("mpeg4", rate=rate)
            stream.pix_fmt = "yuv420p"
            # Fixed quantizer 1 (ffmpeg's -qscale:v 1); the default rate control
            # drifts by tens of units on tiny frames.
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = 118  # 1 * FF_QP2LAMBDA.
        elif ext == ".webm":
            stream = container.add_stream("libvpx-vp9", rate=rate)
            stream.pix_fmt = "yuv444p"
            stream.options = {"lossless": "1", "deadline": "realtime", "cpu-used": "8"}
        else:
            stream = container.add_stream("libx264", rate=rate)
            stream.pix_fmt = "yuv444p"
            stream.options = {"crf": "0", "preset": "ultrafast"}
        stream.height, stream.width = frames.shape[1:3]
        for array in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            # Convert here with full chroma precision: the encoder's implicit
            # conversion point-samples chroma and loses several units of 255.
            frame = frame.reformat(format=stream.pix_fmt, interpolation=_SWS_FLAGS)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_corrupt(path: str, seed: int = 0) -> None:
    """A file of random bytes with a video extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def write_empty(path: str) -> None:
    """A zero-byte file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def write_truncated(path: str, frames: np.ndarray) -> None:
    """A valid video cut to its first 40% of bytes (an interrupted download)."""
    write_video(path, frames)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * 0.4))


def _write_lines(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def make_ucf101(
    base: str, *, num_frames: int = 8, height: int = 24, width: int = 32
) -> FixtureDataset:
    """UCF101 layout: 3 classes x 4 groups, splits 1 and 2 (test = group 1 / 2).

    One listed training video of split 1 is corrupt, one empty, one missing.
    """
    root = os.path.join(base, "UCF-101")
    ann = os.path.join(base, "ucfTrainTestlist")
    classes = ["ApplyEyeMakeup", "Biking", "HandstandPushups"]
    # As in the real lists, one class's file names spell it differently.
    file_class = {"HandstandPushups": "HandStandPushups"}
    _write_lines(os.path.join(ann, "classInd.txt"), [f"{i + 1} {c}" for i, c in enumerate(classes)])
    ds = FixtureDataset(root, ann, classes, {})
    bad_train = {
        "Biking/v_Biking_g04_c01": "InvalidData",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g04_c01": "empty",
        "HandstandPushups/v_HandStandPushups_g04_c01": "missing",
    }
    for split in (1, 2):
        train, test = [], []
        expected = {"train": {}, "test": {}}
        for label, cls in enumerate(classes):
            for group in range(1, 5):
                video_id = f"{cls}/v_{file_class.get(cls, cls)}_g{group:02d}_c01"
                rel = video_id + ".avi"
                if group == split:
                    test.append(rel)
                    expected["test"][video_id] = label
                else:
                    train.append(f"{rel} {label + 1}")
                    if video_id not in bad_train:
                        expected["train"][video_id] = label
        _write_lines(os.path.join(ann, f"trainlist{split:02d}.txt"), train)
        _write_lines(os.path.join(ann, f"testlist{split:02d}.txt"), test)
        ds.extra[f"expected_split{split}"] = expected
    ds.expected = ds.extra["expected_split1"]
    ds.bad = {"train": bad_train}
    seed = 0
    for cls in classes:
        for group in range(1, 5):
            video_id = f"{cls}/v_{file_class.get(cls, cls)}_g{group:02d}_c01"
            path = os.path.join(root, video_id + ".avi")
            seed += 1
            if video_id in bad_train:
                if "Biking" in video_id:
                    write_corrupt(path, seed)
                elif "ApplyEyeMakeup" in video_id:
                    write_empty(path)
                continue  # The HandstandPushups one is missing.
            frames = pattern_frames(num_frames, height, width, seed)
            write_video(path, frames)
            ds.frames[video_id] = frames
    return ds


def make_hmdb51(base: str, *, num_frames: int = 8) -> FixtureDataset:
    """HMDB51 layout: 2 classes x 4 videos; split 1 flags 1 (train), 2 (test), 0 (unused).

    One training video is truncated.
    """
    root = os.path.join(base, "hmdb51")
    ann = os.path.join(base, "testTrainMulti_7030_splits")
    classes = ["brush_hair", "cartwheel"]
    flags = ["1", "1", "2", "0"]
    ds = FixtureDataset(root, ann, classes, {"train": {}, "test": {}}, bad={"train": {}})
    for label, cls in enumerate(classes):
        lines = []
        for i, flag in enumerate(flags):
            name = f"{cls}_video_{i}_u_nm_np1_fr_med_{i}.avi"
            lines.append(f"{name} {flag}")
            video_id = f"{cls}/{name[:-4]}"
            path = os.path.join(root, cls, name)
            frames = pattern_frames(num_frames, 24, 32, 100 + 10 * label + i)
            if cls == "cartwheel" and i == 0:
                write_truncated(path, frames)
                ds.bad["train"][video_id] = ""
                continue
            write_video(path, frames)
            ds.frames[video_id] = frames
            if flag in ("1", "2"):
                ds.expected["train" if flag == "1" else "test"][video_id] = label
        _write_lines(os.path.join(ann, f"{cls}_test_split1.txt"), lines)
        # Other splits exist in the real release; their flags must not be read.
        _write_lines(os.path.join(ann, f"{cls}_test_split2.txt"), [f"x.avi {f}" for f in flags])
    return ds


def make_kinetics(base: str, *, num_frames: int = 8) -> FixtureDataset:
    """Kinetics-400 layout: CSVs; train files under `train/<label>/`, val flat.

    One annotated training video was never downloaded (missing).
    """
    root = os.path.join(base, "kinetics400")
    ann = os.path.join(base, "annotations")
    classes = ["abseiling", "air drumming", "zumba"]
    ds = FixtureDataset(root, ann, classes, {"train": {}, "validation": {}}, bad={"train": {}})
    rows = {"train": [], "validate": []}
    seed = 200
    for label, cls in enumerate(classes):
        for split, count in (("train", 3), ("validate", 1)):
            for i in range(count):
                seed += 1
                youtube_id = f"yt{label}{split[0]}{i}-_Ab"
                start, end = 10 * i, 10 * i + 10
                video_id = f"{youtube_id}_{start:06d}_{end:06d}"
                rows[split].append([cls, youtube_id, start, end, split])
                tfds_split = "train" if split == "train" else "validation"
                if split == "train" and label == 2 and i == 2:
                    ds.bad["train"][video_id] = "missing"
                    continue
                folder = os.path.join(root, "train", cls) if split == "train" else root
                frames = pattern_frames(num_frames, 32, 32, seed)
                write_video(os.path.join(folder, video_id + ".mp4"), frames)
                ds.frames[video_id] = frames
                ds.expected[tfds_split][video_id] = label
    for split, split_rows in rows.items():
        os.makedirs(ann, exist_ok=True)
        with open(os.path.join(ann, f"{split}.csv"), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows(split_rows)
    return ds


def make_ssv2(base: str, *, num_frames: int = 8) -> FixtureDataset:
    """Something-Something v2 layout: labels.json, train/validation JSON, `<id>.webm`.

    One training entry has a template that is not a class (reported, skipped).
    """
    root = os.path.join(base, "20bn-something-something-v2")
    ann = os.path.join(base, "labels")
    templates = [
        "Pushing [something] from left to right",
        "Putting [something] on a surface",
        "Turning [something] upside down",
    ]
    classes = [t.replace("[", "").replace("]", "") for t in templates]
    # labels.json maps name -> index as a string, in no particular order.
    labels = {classes[i]: str(i) for i in (2, 0, 1)}
    os.makedirs(ann, exist_ok=True)
    with open(os.path.join(ann, "labels.json"), "w") as f:
        json.dump(labels, f)
    ds = FixtureDataset(root, ann, classes, {"train": {}, "validation": {}}, bad={"train": {}})
    video_number = 1000
    for split, count in (("train", 2), ("validation", 1)):
        entries = []
        for label, template in enumerate(templates):
            for _ in range(count):
                video_number += 1
                video_id = str(video_number)
                entries.append(
                    {
                        "id": video_id,
                        "label": template.replace("[something]", "a cup"),
                        "template": template,
                        "placeholders": ["a cup"],
                    }
                )
                frames = pattern_frames(num_frames, 24, 32, video_number)
                write_video(os.path.join(root, video_id + ".webm"), frames, fps=12.0)
                ds.frames[video_id] = frames
                ds.expected[split][video_id] = label
        if split == "train":
            entries.append(
                {"id": "999", "label": "x", "template": "Juggling [something]", "placeholders": []}
            )
            ds.bad["train"]["999"] = "unknown label"
        with open(os.path.join(ann, f"{split}.json"), "w") as f:
            json.dump(entries, f)
    return ds


EPIC_COLUMNS = [
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
]


def _timestamp(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60.0)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours:02d}:{minutes:02d}:{secs:05.2f}"


def make_epic_kitchens(base: str, *, fps: float = 30.0, seconds: float = 3.0) -> FixtureDataset:
    """EPIC-KITCHENS-100 layout: two long videos, segments in the train/validation CSVs.

    `extra["segments"]`: narration_id -> (video_id, start, stop, verb, noun);
    `extra["num_frames"]`: narration_id -> source frames inside [start, stop);
    `extra["verbs"]`, `extra["nouns"]`: the verb/noun class names.
    """
    root = os.path.join(base, "EPIC-KITCHENS")
    ann = os.path.join(base, "epic-kitchens-100-annotations")
    verbs = ["take", "put", "open", "close"]
    nouns = ["tap", "plate", "cupboard"]
    num_frames = round(fps * seconds)
    long_frames = {}
    for i, (participant, video) in enumerate((("P01", "P01_01"), ("P02", "P02_101"))):
        frames = pattern_frames(num_frames, 32, 48, 300 + i)
        write_video(os.path.join(root, participant, "videos", video + ".MP4"), frames, fps=fps)
        long_frames[video] = frames
    # (split, video, start, stop, verb, noun)
    segments = [
        ("train", "P01_01", 0.5, 1.0, 0, 0),
        ("train", "P01_01", 1.0, 2.5, 1, 1),
        ("train", "P01_01", 0.2, 0.9, 0, 0),
        ("train", "P02_101", 0.0, 1.2, 2, 2),
        ("train", "P02_101", 2.0, 2.9, 1, 1),
        ("validation", "P01_01", 2.0, 2.7, 3, 2),  # An action seen only in validation.
        ("validation", "P02_101", 0.4, 1.4, 0, 0),
    ]
    rows = {"train": [], "validation": []}
    ds = FixtureDataset(root, ann, [], {"train": {}, "validation": {}})
    ds.extra.update(segments={}, num_frames={}, verbs=verbs, nouns=nouns)
    counters: dict[str, int] = {}
    for split, video, start, stop, verb, noun in segments:
        index = counters[video] = counters.get(video, -1) + 1
        narration_id = f"{video}_{index}"
        participant = video.split("_")[0]
        rows[split].append(
            [
                narration_id,
                participant,
                video,
                _timestamp(start),
                _timestamp(start),
                _timestamp(stop),
                round(start * fps) + 1,
                round(stop * fps),
                f"{verbs[verb]} {nouns[noun]}",
                verbs[verb],
                verb,
                nouns[noun],
                noun,
                f"['{nouns[noun]}']",
                f"[{noun}]",
            ]
        )
        first, last = round(start * fps), round(stop * fps)  # Frames i with start <= i/fps < stop.
        ds.frames[narration_id] = long_frames[video][first:last]
        ds.extra["segments"][narration_id] = (video, start, stop, verb, noun)
        ds.extra["num_frames"][narration_id] = last - first
    pairs = sorted({(s[4], s[5]) for s in segments})
    ds.class_names = [f"{verbs[v]} {nouns[n]}" for v, n in pairs]
    for split, split_rows in rows.items():
        for row in split_rows:
            ds.expected[split][row[0]] = pairs.index((row[10], row[12]))
    os.makedirs(ann, exist_ok=True)
    for split, split_rows in rows.items():
        with open(os.path.join(ann, f"EPIC_100_{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(EPIC_COLUMNS)
            writer.writerows(split_rows)
    for kind, names in (("verb", verbs), ("noun", nouns)):
        with open(os.path.join(ann, f"EPIC_100_{kind}_classes.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "key", "instances", "category"])
            writer.writerows([i, name, "[]", "x"] for i, name in enumerate(names))
    return ds


def make_generic(
    base: str,
    *,
    classes: tuple[str, ...] = ("jump", "run", "walk"),
    per_class: int = 5,
    num_frames: int = 8,
    with_lists: bool = False,
    height: int = 24,
    width: int = 32,
) -> FixtureDataset:
    """Generic layout `root/<class>/<video>.mp4`, optionally with train/test lists.

    With lists the last video of each class is in test.txt; a corrupt video is
    added to the first class (listed in train.txt when there are lists).
    """
    root = os.path.join(base, "videos")
    ds = FixtureDataset(root, root, list(classes), {"train": {}, "test": {}}, bad={"train": {}})
    train, test = [], []
    for label, cls in enumerate(classes):
        for i in range(per_class):
            video_id = f"{cls}/clip_{i:02d}"
            frames = pattern_frames(num_frames, height, width, 400 + 10 * label + i)
            write_video(os.path.join(root, video_id + ".mp4"), frames)
            ds.frames[video_id] = frames
            split = "test" if i == per_class - 1 else "train"
            (test if split == "test" else train).append(video_id + ".mp4")
            ds.expected[split][video_id] = label
    bad_id = f"{classes[0]}/broken"
    write_corrupt(os.path.join(root, bad_id + ".mp4"))
    train.append(bad_id + ".mp4")
    ds.bad["train"][bad_id] = "InvalidData"
    if with_lists:
        _write_lines(os.path.join(root, "train.txt"), train)
        _write_lines(os.path.join(root, "test.txt"), test)
    return ds
