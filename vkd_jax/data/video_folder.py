"""Real video datasets as TFDS datasets: the `video_folder` builder.

Videos are decoded with PyAV, resampled to a frame rate, resized so their short
side has a given length, and stored frame by frame (JPEG or PNG) in a
`tfds.features.Video`. The result is an ordinary TFDS dataset: once built into a
`data_dir` it is read back with `tfds.builder("video_folder/<config>",
data_dir=...)` or `tfds.load(...)` without the source videos.

Layouts (`data.folder.layout`), each read with its official split files:

- `ucf101`: `<root>/<Class>/v_<Class>_gXX_cYY.avi`; `ucfTrainTestlist/classInd.txt`,
  `trainlist0N.txt`, `testlist0N.txt` (splits 1-3).
- `hmdb51`: `<root>/<class>/<video>.avi`; `<class>_test_splitN.txt` with lines
  `<video>.avi 1|2|0` (1 = train, 2 = test, 0 = unused; splits 1-3).
- `kinetics400`: CSVs `label,youtube_id,time_start,time_end,split`; files
  `<youtube_id>_<start:06d>_<end:06d>.mp4` anywhere under the root (e.g.
  `<split>/<label>/` or flat).
- `ssv2`: `labels.json` (name -> index), `train.json` / `validation.json`
  entries `{"id", "label", "template", "placeholders"}`; videos `<id>.webm`.
- `epic_kitchens100`: `EPIC_100_train.csv` / `EPIC_100_validation.csv`; action
  segments cut by `start_timestamp` / `stop_timestamp` from
  `<root>/<participant>/videos/<video_id>.MP4`. Features `verb` and `noun`
  are added; `label` is the action: the (verb, noun) pairs seen in the train
  and validation annotations, sorted by (verb, noun).
- `generic`: `<root>/<class>/<video>`; optional `train.txt` / `test.txt` (and
  `validation.txt`) of paths relative to the root, otherwise a seeded 80/20
  split per class.

Decoding runs in `num_workers` processes. A video that cannot be decoded
(missing, empty, corrupt, truncated, no frames) is skipped: it is listed with
its reason in `skipped_videos.json` beside the dataset's files, a warning gives
the count, and the build completes. TFDS writes into a temporary directory and
renames it when the build succeeds, so an interrupted build never reads as
prepared.

The builder's parameters live in a `VideoFolderConfig` whose name encodes
them (e.g. `ucf101_split1_short128_fps0_frames0_all_jpeg`), so layouts, splits
and subsets built into one `data_dir` do not collide.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import process as futures_process
from typing import Any

import av
import numpy as np
import tensorflow_datasets as tfds
import tqdm
from av.video.reformatter import Interpolation
from etils import epath

from vkd_jax import config_lib

LAYOUTS = ("generic", "ucf101", "hmdb51", "kinetics400", "ssv2", "epic_kitchens100")
ENCODINGS = ("jpeg", "png")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".webm", ".mkv", ".mov", ".mpg", ".mpeg", ".m4v", ".flv")
SKIPPED_REPORT = "skipped_videos.json"

# Tolerance (seconds) when comparing frame timestamps with segment bounds and
# resampling targets: container timestamps are rationals rounded to floats.
_TIME_EPS = 1e-6
_SWS_CHROMA = Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND
# JPEG quality of the stored frames (TensorFlow's encode_jpeg default).
_JPEG_QUALITY = 95


class VideoDecodeError(Exception):
    """A video could not be decoded into frames."""


# ------------------------------------------------------------------ decoding


def _output_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side resized to `short_side` (0 = keep)."""
    if short_side <= 0:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def parse_timestamp(text: str) -> float:
    """Seconds of an `HH:MM:SS.ff` (or `MM:SS.ff`, `SS.ff`) timestamp."""
    seconds = 0.0
    for part in text.strip().split(":"):
        seconds = seconds * 60.0 + float(part)
    return seconds


def iter_frames(
    path: str | os.PathLike,
    *,
    short_side: int = 0,
    fps: float = 0.0,
    max_frames: int = 0,
    start: float | None = None,
    stop: float | None = None,
) -> Iterator[np.ndarray]:
    """Decodes a video with PyAV, yielding uint8 `(H, W, 3)` RGB frames.

    Args:
      path: The video file.
      short_side: Frames are resized so their short side is this; 0 keeps the
        size. Every frame gets the size computed from the first one.
      fps: Frames are resampled to this rate (each output time `k / fps` takes
        the last source frame shown at or before it); 0 keeps every frame.
      max_frames: Stop after this many output frames; 0 = all.
      start: Segment start in seconds from the start of the stream; frames
        before it are dropped (the decoder seeks to the keyframe before it).
      stop: Segment end in seconds (exclusive).

    Yields:
      Frames in presentation order.

    Raises:
      VideoDecodeError: The file has no video stream.
      av.FFmpegError: The file cannot be opened or decoded.
    """
    with av.open(os.fspath(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError("no video stream")
        stream = container.streams.video[0]
        # Frame-level threads speed up long-GOP codecs; harmless for tiny videos.
        stream.thread_type = "AUTO"
        src_rate = float(stream.average_rate or stream.guessed_rate or 0.0)
        time_base = stream.time_base
        stream_start = float(stream.start_time * time_base) if stream.start_time else 0.0
        if start is not None and start > 0:
            # Seek to the keyframe at or before `start`, then decode forward.
            container.seek(int((start + stream_start) / time_base), stream=stream, backward=True)

        size: tuple[int, int] | None = None
        origin = start
        emitted = 0
        pending: list[Any] = []  # [frame, rgb or None]: the last frame seen (fps > 0).
        next_target = 0
        last_time = prev_time = None

        def rgb(frame: av.VideoFrame) -> np.ndarray:
            # Area averaging when shrinking (no aliasing), bicubic otherwise;
            # full-resolution, accurately rounded chroma: swscale's default
            # point-samples 4:2:0 chroma (several units of 255 off).
            shrink = size[0] < frame.height
            flags = _SWS_CHROMA | (Interpolation.AREA if shrink else Interpolation.BICUBIC)
            return frame.reformat(
                width=size[1], height=size[0], format="rgb24", interpolation=flags
            ).to_ndarray()

        def pending_rgb() -> np.ndarray:
            if pending[1] is None:
                pending[1] = rgb(pending[0])
            return pending[1]

        def full() -> bool:
            return max_frames > 0 and emitted >= max_frames

        for index, frame in enumerate(container.decode(stream)):
            if frame.time is not None:
                time = frame.time - stream_start
            else:  # No timestamps: assume a constant rate.
                time = index / src_rate if src_rate else float(index)
            if start is not None and time < start - _TIME_EPS:
                continue
            if stop is not None and time >= stop - _TIME_EPS:
                break
            if origin is None:
                origin = time
            if size is None:
                size = _output_size(frame.height, frame.width, short_side)
            prev_time, last_time = last_time, time
            if fps <= 0:
                yield rgb(frame)
                emitted += 1
            else:
                # The previous frame is shown until this one: it fills every
                # output time before `time`.
                while pending and origin + next_target / fps < time - _TIME_EPS and not full():
                    yield pending_rgb()
                    emitted += 1
                    next_target += 1
                pending[:] = [frame, None]
            if full():
                return

        if fps > 0 and pending:
            if src_rate:
                duration = 1.0 / src_rate
            elif prev_time is not None:
                duration = last_time - prev_time
            else:
                duration = 1.0 / fps
            end = last_time + duration
            if stop is not None:
                end = min(end, stop)
            while origin + next_target / fps < end - _TIME_EPS and not full():
                yield pending_rgb()
                emitted += 1
                next_target += 1


def source_fps(path: str | os.PathLike) -> float:
    """The average frame rate of a video's first video stream (0 if unknown)."""
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate or 0.0)


def decode_video(path: str | os.PathLike, **kwargs: Any) -> np.ndarray:
    """Decodes a whole video (or segment) into a uint8 `(T, H, W, 3)` array.

    Args:
      path: The video file.
      **kwargs: Options of `iter_frames` (short_side, fps, max_frames, start, stop).

    Returns:
      The frames; raises `VideoDecodeError` when there are none.
    """
    frames = list(iter_frames(path, **kwargs))
    if not frames:
        raise VideoDecodeError("no frames decoded")
    return np.stack(frames)


def encode_frame(frame: np.ndarray, encoding: str) -> bytes:
    """Encodes one uint8 `(H, W, 3)` frame as JPEG or PNG bytes."""
    from PIL import Image  # Pillow comes with matplotlib; imported where used.

    buffer = io.BytesIO()
    image = Image.fromarray(frame)
    if encoding == "jpeg":
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    else:
        # Fast PNG: the frames are large in number, size matters less than time.
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class _DecodeTask:
    """One video (or segment) to decode, as sent to a worker process."""

    path: str
    start: float | None
    stop: float | None
    short_side: int
    fps: float
    max_frames: int
    encoding: str


def _decode_task(task: _DecodeTask) -> tuple[list[bytes] | None, float, str | None]:
    """Worker: decodes and encodes one video; never raises.

    Returns:
      (encoded frames, frame rate, None) on success, (None, 0, reason) otherwise.
    """
    try:
        if not os.path.isfile(task.path):
            return None, 0.0, "missing file"
        if os.path.getsize(task.path) == 0:
            return None, 0.0, "empty file"
        encoded = [
            encode_frame(frame, task.encoding)
            for frame in iter_frames(
                task.path,
                short_side=task.short_side,
                fps=task.fps,
                max_frames=task.max_frames,
                start=task.start,
                stop=task.stop,
            )
        ]
        if not encoded:
            return None, 0.0, "no frames decoded"
        rate = task.fps if task.fps > 0 else source_fps(task.path)
        return encoded, rate, None
    except Exception as e:  # noqa: BLE001 - any decoder failure skips the video.
        return None, 0.0, f"{type(e).__name__}: {e}"


class _DecoderPool:
    """Decoding worker processes, shared by the splits of one build.

    `num_workers` spawned (not forked: the parent may run TensorFlow threads)
    processes; 0 runs every task in this process.
    """

    def __init__(self, num_workers: int):
        self.num_workers = num_workers
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def _get_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.num_workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._executor

    def close(self) -> None:
        """Stops the workers (tasks not started are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map_unordered(
        self, fn: Callable[[Any], Any], tasks: Sequence[Any]
    ) -> Iterator[tuple[int, Any]]:
        """Yields `(index, fn(tasks[index]))` as results arrive.

        At most a few tasks per worker are in flight so results do not pile up
        in memory. A task whose worker process dies (a decoder crash takes the
        whole pool down) is retried once in a fresh pool; a second death gives
        the result `(None, 0.0, "worker crashed ...")`.
        """
        if self.num_workers <= 0:
            for index, task in enumerate(tasks):
                yield index, fn(task)
            return
        queue = collections.deque((index, 0) for index in range(len(tasks)))
        in_flight: dict[concurrent.futures.Future, tuple[int, int]] = {}
        try:
            while queue or in_flight:
                executor = self._get_executor()
                while queue and len(in_flight) < 4 * self.num_workers:
                    index, attempt = queue.popleft()
                    in_flight[executor.submit(fn, tasks[index])] = (index, attempt)
                done, _ = concurrent.futures.wait(
                    in_flight, return_when=concurrent.futures.FIRST_COMPLETED
                )
                broken = False
                for future in done:
                    index, attempt = in_flight.pop(future)
                    try:
                        result = future.result()
                    except futures_process.BrokenProcessPool as e:
                        broken = True
                        if attempt == 0:
                            queue.append((index, 1))
                            continue
                        result = (None, 0.0, f"worker crashed: {e}")
                    yield index, result
                if broken:
                    # Every task still in flight died with the pool: run them again.
                    queue.extendleft(in_flight.values())
                    in_flight.clear()
                    self._executor.shutdown(wait=False, cancel_futures=True)
                    self._executor = None
        finally:
            # Also when the consumer stops early (an exception): drop queued work.
            for future in in_flight:
                future.cancel()


# --------------------------------------------------------------- annotations


@dataclasses.dataclass
class VideoItem:
    """One example to build: a video file, or a segment of one."""

    video_id: str
    path: str
    label: int
    start: float | None = None
    stop: float | None = None
    verb: int = -1
    noun: int = -1


@dataclasses.dataclass
class Catalog:
    """What a layout's annotations say: classes and the videos of each split.

    Attributes:
      class_names: Names of the `label` classes, index = label.
      splits: Split name -> its videos.
      verb_names: EPIC-KITCHENS verb classes (empty for other layouts).
      noun_names: EPIC-KITCHENS noun classes (empty for other layouts).
      problems: `(split, video_id, path, reason)` for annotated videos that
        cannot be built (e.g. an unknown label); reported as skipped.
    """

    class_names: list[str]
    splits: dict[str, list[VideoItem]]
    verb_names: list[str] = dataclasses.field(default_factory=list)
    noun_names: list[str] = dataclasses.field(default_factory=list)
    problems: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def _strip_ext(path: str) -> str:
    return os.path.splitext(path)[0]


def _find_file(folder: str, candidates: Iterable[str], what: str) -> str:
    """The first existing `folder/<candidate>` (also looked for one level down)."""
    candidates = list(candidates)
    for base in [folder] + sorted(
        os.path.join(folder, d)
        for d in (os.listdir(folder) if os.path.isdir(folder) else [])
        if os.path.isdir(os.path.join(folder, d))
    ):
        for name in candidates:
            path = os.path.join(base, name)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(f"No {what} ({', '.join(candidates)}) in {folder!r}.")


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _index_videos(root: str) -> dict[str, str]:
    """File stem -> path of every video file under `root` (first one wins)."""
    index: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if _is_video(name):
                index.setdefault(_strip_ext(name), os.path.join(dirpath, name))
    return index


def _unique_names(names: Sequence[str]) -> list[str]:
    """Makes class names unique (ClassLabel requires it) by suffixing `#index`."""
    counts = collections.Counter(names)
    return [f"{n}#{i}" if counts[n] > 1 else n for i, n in enumerate(names)]


def _ucf101_catalog(root: str, annotations: str, split: int) -> Catalog:
    class_ind = _find_file(annotations, ["classInd.txt"], "UCF101 class index")
    folder = os.path.dirname(class_ind)
    by_index = {}
    for line in _read_lines(class_ind):
        index, name = line.split()
        by_index[int(index)] = name
    class_names = [by_index[i] for i in sorted(by_index)]
    labels = {name: i for i, name in enumerate(class_names)}
    # The official lists spell some classes differently from classInd
    # (e.g. HandStandPushups): match case-insensitively.
    lower = {name.lower(): i for i, name in enumerate(class_names)}
    catalog = Catalog(class_names, {})
    for split_name, prefix in (("train", "trainlist"), ("test", "testlist")):
        items = []
        for line in _read_lines(os.path.join(folder, f"{prefix}{split:02d}.txt")):
            rel = line.split()[0].replace("\\", "/")
            cls = rel.split("/")[0]
            label = labels.get(cls, lower.get(cls.lower()))
            path = os.path.join(root, rel)
            if label is None:
                catalog.problems.append((split_name, _strip_ext(rel), path, "unknown class"))
                continue
            items.append(VideoItem(_strip_ext(rel), path, label))
        catalog.splits[split_name] = items
    return catalog


def _hmdb51_catalog(root: str, annotations: str, split: int) -> Catalog:
    pattern = re.compile(rf"^(.+)_test_split{split}\.txt$")
    folder = annotations
    files = (
        sorted(f for f in os.listdir(folder) if pattern.match(f)) if os.path.isdir(folder) else []
    )
    if not files:  # The splits may sit one folder down (testTrainMulti_7030_splits/).
        for sub in sorted(os.listdir(folder)):
            sub_path = os.path.join(folder, sub)
            if os.path.isdir(sub_path) and any(pattern.match(f) for f in os.listdir(sub_path)):
                folder = sub_path
                files = sorted(f for f in os.listdir(folder) if pattern.match(f))
                break
    if not files:
        raise FileNotFoundError(f"No HMDB51 '<class>_test_split{split}.txt' in {annotations!r}.")
    class_names = sorted(pattern.match(f).group(1) for f in files)
    catalog = Catalog(class_names, {"train": [], "test": []})
    for label, cls in enumerate(class_names):
        for line in _read_lines(os.path.join(folder, f"{cls}_test_split{split}.txt")):
            name, flag = line.rsplit(maxsplit=1)
            split_name = {"1": "train", "2": "test"}.get(flag)
            if split_name is not None:  # 0 = not used in this split.
                video_id = f"{cls}/{_strip_ext(name)}"
                catalog.splits[split_name].append(
                    VideoItem(video_id, os.path.join(root, cls, name), label)
                )
    return catalog


_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validate": "validation",
    "validation": "validation",
    "test": "test",
    "testing": "test",
}


def _split_from_filename(name: str) -> str | None:
    name = name.lower()
    for key, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        if key in name:
            return split
    return None


def _kinetics_catalog(root: str, annotations: str) -> Catalog:
    if os.path.isfile(annotations):
        csv_files = [annotations]
    else:
        csv_files = sorted(
            os.path.join(annotations, f)
            for f in os.listdir(annotations)
            if f.lower().endswith(".csv") and _split_from_filename(f)
        )
    if not csv_files:
        raise FileNotFoundError(f"No Kinetics train/val/test CSV files in {annotations!r}.")
    rows: list[tuple[str, dict[str, str]]] = []
    for path in csv_files:
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                split = _SPLIT_ALIASES.get((row.get("split") or "").strip().lower())
                split = split or _split_from_filename(os.path.basename(path))
                if split and (row.get("label") or "").strip():
                    rows.append((split, row))
    class_names = sorted({row["label"].strip() for _, row in rows})
    labels = {name: i for i, name in enumerate(class_names)}
    index = _index_videos(root)
    catalog = Catalog(class_names, {})
    seen = set()
    for split, row in rows:
        youtube_id = row["youtube_id"].strip()
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        video_id = f"{youtube_id}_{start:06d}_{end:06d}"
        if (split, video_id) in seen:
            continue
        seen.add((split, video_id))
        # Some downloads name files by the YouTube id alone.
        path = index.get(video_id) or index.get(youtube_id)
        item = VideoItem(video_id, path or os.path.join(root, video_id + ".mp4"), 0)
        item.label = labels[row["label"].strip()]
        catalog.splits.setdefault(split, []).append(item)
    return catalog


def _ssv2_catalog(root: str, annotations: str) -> Catalog:
    def find(suffix: str) -> str | None:
        try:
            return _find_file(
                annotations,
                [f"{suffix}.json", f"something-something-v2-{suffix}.json"],
                f"SSv2 {suffix}.json",
            )
        except FileNotFoundError:
            return None

    labels_path = find("labels")
    if labels_path is None:
        raise FileNotFoundError(f"No SSv2 labels.json in {annotations!r}.")
    with open(labels_path, encoding="utf-8") as f:
        name_to_index = {name: int(i) for name, i in json.load(f).items()}
    class_names = [""] * len(name_to_index)
    for name, i in name_to_index.items():
        class_names[i] = name
    lower = {name.lower(): i for name, i in name_to_index.items()}
    index = _index_videos(root)
    catalog = Catalog(class_names, {})
    for split in ("train", "validation"):
        path = find(split)
        if path is None:
            continue
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
        items = []
        for entry in entries:
            video_id = str(entry["id"])
            # The class is the template without the placeholder brackets.
            name = entry["template"].replace("[", "").replace("]", "")
            label = name_to_index.get(name, lower.get(name.lower()))
            video_path = index.get(video_id) or os.path.join(root, video_id + ".webm")
            if label is None:
                catalog.problems.append((split, video_id, video_path, f"unknown label {name!r}"))
                continue
            items.append(VideoItem(video_id, video_path, label))
        catalog.splits[split] = items
    return catalog


def _epic_class_names(folder: str, kind: str, rows: list[dict[str, str]]) -> list[str]:
    """Verb or noun class names: the official class CSV, else the annotations."""
    path = os.path.join(folder, f"EPIC_100_{kind}_classes.csv")
    names: dict[int, str] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                names[int(row["id"])] = row["key"]
    else:
        for row in rows:
            names.setdefault(int(row[f"{kind}_class"]), row.get(kind) or "")
    size = max(names) + 1 if names else 0
    return _unique_names([names.get(i) or f"{kind}_{i}" for i in range(size)])


def _epic_catalog(root: str, annotations: str) -> Catalog:
    train_csv = _find_file(annotations, ["EPIC_100_train.csv"], "EPIC-KITCHENS-100 train CSV")
    folder = os.path.dirname(train_csv)
    rows_per_split: dict[str, list[dict[str, str]]] = {}
    for split, name in (("train", "EPIC_100_train.csv"), ("validation", "EPIC_100_validation.csv")):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", newline="") as f:
                rows_per_split[split] = list(csv.DictReader(f))
    all_rows = [row for rows in rows_per_split.values() for row in rows]
    verb_names = _epic_class_names(folder, "verb", all_rows)
    noun_names = _epic_class_names(folder, "noun", all_rows)
    # Action classes: every (verb, noun) pair of the labelled annotations.
    pairs = sorted({(int(r["verb_class"]), int(r["noun_class"])) for r in all_rows})
    actions = {pair: i for i, pair in enumerate(pairs)}
    class_names = _unique_names([f"{verb_names[v]} {noun_names[n]}" for v, n in pairs])
    index: dict[str, str] | None = None
    catalog = Catalog(class_names, {}, verb_names, noun_names)
    for split, rows in rows_per_split.items():
        items = []
        for row in rows:
            participant, video = row["participant_id"], row["video_id"]
            path = os.path.join(root, participant, "videos", video + ".MP4")
            if not os.path.isfile(path):
                if index is None:  # Other layouts (lower-case, flat): look the stem up.
                    index = _index_videos(root)
                path = index.get(video, path)
            verb, noun = int(row["verb_class"]), int(row["noun_class"])
            items.append(
                VideoItem(
                    row["narration_id"],
                    path,
                    actions[(verb, noun)],
                    start=parse_timestamp(row["start_timestamp"]),
                    stop=parse_timestamp(row["stop_timestamp"]),
                    verb=verb,
                    noun=noun,
                )
            )
        catalog.splits[split] = items
    return catalog


def _videos_under(root: str, folder: str) -> list[str]:
    """Paths (relative to ``root``, with ``/``) of every video file under ``root/folder``."""
    rels = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
        dirnames.sort()
        rels += [
            os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
            for f in sorted(filenames)
            if _is_video(f)
        ]
    return rels


def _generic_catalog(root: str, annotations: str, seed: int) -> Catalog:
    folders = sorted(
        d
        for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    videos = {d: _videos_under(root, d) for d in folders}
    # A folder without any video file (split lists, notes, an emptied class) is no class.
    class_names = [d for d in folders if videos[d]]
    not_classes = [d for d in folders if not videos[d]]
    if not_classes:
        logging.warning(
            "video_folder: %d sub-folder(s) of %s hold no video file and are not classes: %s",
            len(not_classes),
            root,
            ", ".join(not_classes),
        )
    if not class_names:
        raise FileNotFoundError(
            f"No class folder with a video file ({', '.join(VIDEO_EXTENSIONS)}) in {root!r}: "
            "the generic layout is root/<class>/<video>."
        )
    labels = {name: i for i, name in enumerate(class_names)}
    catalog = Catalog(class_names, {})
    lists = {}
    for split, names in (
        ("train", ["train.txt"]),
        ("validation", ["validation.txt", "val.txt"]),
        ("test", ["test.txt"]),
    ):
        for name in names:
            if os.path.isfile(os.path.join(annotations, name)):
                lists[split] = os.path.join(annotations, name)
                break
    if lists:
        for split, list_path in lists.items():
            items = []
            for line in _read_lines(list_path):
                rel = line.replace("\\", "/")
                parts = rel.rsplit(maxsplit=1)
                # Allow a trailing label column ("path 3"); paths may hold spaces.
                if len(parts) == 2 and parts[1].lstrip("-").isdigit() and _is_video(parts[0]):
                    rel = parts[0]
                cls = rel.split("/")[0]
                path = os.path.join(root, rel)
                if cls not in labels:
                    catalog.problems.append((split, _strip_ext(rel), path, "unknown class"))
                    continue
                items.append(VideoItem(_strip_ext(rel), path, labels[cls]))
            catalog.splits[split] = items
        return catalog
    # No split lists: a seeded 80/20 split of each class.
    rng = np.random.default_rng(seed)
    catalog.splits = {"train": [], "test": []}
    for label, cls in enumerate(class_names):
        rels = videos[cls]
        order = rng.permutation(len(rels))
        num_test = round(0.2 * len(rels)) if len(rels) >= 5 else (1 if len(rels) >= 2 else 0)
        for rank, i in enumerate(order):
            item = VideoItem(_strip_ext(rels[i]), os.path.join(root, rels[i]), label)
            catalog.splits["test" if rank < num_test else "train"].append(item)
    for items in catalog.splits.values():
        items.sort(key=lambda item: item.video_id)
    return catalog


def read_catalog(
    layout: str, root: str, annotations: str = "", split: int = 1, seed: int = 0
) -> Catalog:
    """Reads a layout's annotations into classes and per-split videos.

    Args:
      layout: One of `LAYOUTS`.
      root: Folder holding the videos.
      annotations: Folder (or Kinetics CSV file) with the annotations; "" = root.
      split: Official split number (UCF101 and HMDB51: 1-3).
      seed: Seed of the generic layout's 80/20 split when it has no lists.

    Returns:
      The catalog.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data.folder.root {root!r}: no such folder of videos")
    annotations = annotations or root
    if layout == "ucf101":
        return _ucf101_catalog(root, annotations, split)
    if layout == "hmdb51":
        return _hmdb51_catalog(root, annotations, split)
    if layout == "kinetics400":
        return _kinetics_catalog(root, annotations)
    if layout == "ssv2":
        return _ssv2_catalog(root, annotations)
    if layout == "epic_kitchens100":
        return _epic_catalog(root, annotations)
    if layout == "generic":
        return _generic_catalog(root, annotations, seed)
    raise ValueError(f"Unknown video_folder layout {layout!r}; expected one of {LAYOUTS}.")


def balanced_subset(items: Sequence[VideoItem], size: int, seed: int) -> list[VideoItem]:
    """A seeded class-balanced subset of `size` videos.

    Classes take turns (in a seeded order) giving one video each (in a seeded
    order) until `size` are chosen, so class counts differ by at most one
    except where a class runs out of videos.

    Args:
      items: The videos to choose from.
      size: Number of videos wanted; all are returned if there are fewer.
      seed: Seed of the choice.

    Returns:
      The chosen videos, sorted by video_id.
    """
    if size <= 0 or size >= len(items):
        return sorted(items, key=lambda item: item.video_id)
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[VideoItem]] = collections.defaultdict(list)
    for item in sorted(items, key=lambda item: item.video_id):
        by_class[item.label].append(item)
    queues = {
        label: collections.deque(group[i] for i in rng.permutation(len(group)))
        for label, group in by_class.items()
    }
    order = [sorted(queues)[i] for i in rng.permutation(len(queues))]
    chosen: list[VideoItem] = []
    while len(chosen) < size:
        for label in order:
            if queues[label] and len(chosen) < size:
                chosen.append(queues[label].popleft())
    return sorted(chosen, key=lambda item: item.video_id)


# ------------------------------------------------------------------- builder


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
    """Parameters of a built video dataset (their values are in its name).

    Attributes:
      layout: One of `LAYOUTS`.
      split: Official split number (UCF101, HMDB51).
      short_side: Short side of the stored frames; 0 = source size.
      fps: Frame rate of the stored frames; 0 = source rate.
      max_frames: Frames kept per video (the first ones); 0 = all.
      subset: Seeded class-balanced subset of this many training videos; 0 = all.
      seed: Seed of the subset and of the generic layout's 80/20 split.
      encoding: Frame encoding in the TFRecords, "jpeg" or "png" (lossless).
    """

    layout: str = "generic"
    split: int = 1
    short_side: int = 128
    fps: float = 0.0
    max_frames: int = 0
    subset: int = 0
    seed: int = 0
    encoding: str = "jpeg"

    @classmethod
    def make(cls, name: str = "", **params: Any) -> VideoFolderConfig:
        """A config named `name`, or by its parameters when `name` is ""."""
        config = cls(name=name or "_", version=VideoFolder.VERSION, **params)
        config.validate()
        if not name:
            config.name = config.default_name()
        config.description = f"video_folder {json.dumps(config.params(), sort_keys=True)}"
        return config

    def params(self) -> dict[str, Any]:
        """The parameters that shape the built data."""
        return {
            "layout": self.layout,
            "split": self.split,
            "short_side": self.short_side,
            "fps": self.fps,
            "max_frames": self.max_frames,
            "subset": self.subset,
            "seed": self.seed,
            "encoding": self.encoding,
        }

    def validate(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"Unknown layout {self.layout!r}; expected one of {LAYOUTS}.")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"Unknown encoding {self.encoding!r}; expected one of {ENCODINGS}.")
        if self.layout in ("ucf101", "hmdb51") and self.split not in (1, 2, 3):
            raise ValueError(f"{self.layout} has splits 1-3, got {self.split}.")
        if self.short_side < 0 or self.fps < 0 or self.max_frames < 0 or self.subset < 0:
            raise ValueError("short_side, fps, max_frames and subset must be >= 0.")

    def default_name(self) -> str:
        """e.g. `ucf101_split1_short128_fps0_frames0_all_jpeg`."""
        parts = [self.layout]
        if self.layout in ("ucf101", "hmdb51"):
            parts.append(f"split{self.split}")
        fps = f"{self.fps:g}".replace(".", "p")
        parts += [f"short{self.short_side}", f"fps{fps}", f"frames{self.max_frames}"]
        parts.append(f"sub{self.subset}seed{self.seed}" if self.subset else "all")
        if self.layout == "generic" and not self.subset:
            parts.append(f"seed{self.seed}")  # The seed picks the 80/20 split.
        parts.append(self.encoding)
        return "_".join(parts)


class VideoFolder(tfds.core.GeneratorBasedBuilder):
    """Videos from a folder (UCF101, HMDB51, Kinetics-400, SSv2, EPIC-KITCHENS-100, generic).

    Features: `video` uint8 (T, H, W, 3) (`tfds.features.Video`), `label`
    (ClassLabel with names), `video_id` (text), `fps` (float32, the stored
    frame rate); for EPIC-KITCHENS-100 also `verb` and `noun` (ClassLabels).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    # Configs are made from the experiment config (`builder_from_config`); a
    # built config is found again by name in the data_dir.
    BUILDER_CONFIGS: list[VideoFolderConfig] = []

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. TFDS 4.9.10's own lookup needs the undeclared `importlib_resources`."""
        return epath.Path(__file__)

    def __init__(
        self,
        *,
        config: VideoFolderConfig,
        root: str = "",
        annotations: str = "",
        num_workers: int = 2,
        on_video: Callable[[str, str, str | None], None] | None = None,
        **kwargs: Any,
    ):
        """Creates the builder.

        Args:
          config: The dataset's parameters (`VideoFolderConfig.make(...)`).
          root: Folder holding the source videos; only needed to build.
          annotations: Annotation folder/file; "" = root.
          num_workers: Decoding processes; 0 decodes in this process.
          on_video: Called as `on_video(split, video_id, skip_reason_or_None)`
            after each video is decoded (progress hooks, tests).
          **kwargs: `tfds.core.DatasetBuilder` arguments (data_dir, ...).
        """
        # Set before the base constructor: it calls `_info`.
        self._root = os.fspath(root)
        self._annotations = os.fspath(annotations)
        self._num_workers = num_workers
        self._on_video = on_video
        self._catalog_cache: Catalog | None = None
        self._skipped: list[dict[str, str]] = []
        self._pool = _DecoderPool(0)
        super().__init__(config=config, **kwargs)

    def _catalog(self) -> Catalog:
        if self._catalog_cache is None:
            if not self._root:
                raise config_lib.ConfigError(
                    f"video_folder/{self.builder_config.name} is not prepared in "
                    f"{self.data_dir_root!r} and data.folder.root is empty: give the "
                    "folder of the source videos to build it."
                )
            cfg = self.builder_config
            self._catalog_cache = read_catalog(
                cfg.layout, self._root, self._annotations, cfg.split, cfg.seed
            )
        return self._catalog_cache

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        # Without the source folder (reading a built dataset back, maybe on
        # another machine) the names are restored by TFDS from the label files
        # beside the data; a build without it fails in `_split_generators`.
        catalog = None
        if self._root:
            try:
                catalog = self._catalog()
            except OSError as e:
                logging.info("video_folder: no annotations (%s); reading the built data.", e)

        def class_label(names: list[str] | None) -> tfds.features.ClassLabel:
            return tfds.features.ClassLabel(names=names) if names else tfds.features.ClassLabel()

        features = {
            "video": tfds.features.Video(shape=(None, None, None, 3), encoding_format=cfg.encoding),
            "label": class_label(catalog.class_names if catalog else None),
            "video_id": tfds.features.Text(),
            "fps": np.float32,
        }
        if cfg.layout == "epic_kitchens100":
            features["verb"] = class_label(catalog.verb_names if catalog else None)
            features["noun"] = class_label(catalog.noun_names if catalog else None)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("video", "label"),
            description=(
                f"Videos of the {cfg.layout} layout decoded with PyAV: short side "
                f"{cfg.short_side or 'as source'}, {cfg.fps or 'source'} fps, "
                f"frames stored as {cfg.encoding}."
            ),
        )

    def download_and_prepare(self, *, download_config=None, **kwargs: Any) -> None:
        """Builds the dataset (a no-op when it is already prepared).

        Unlike the TFDS default, this never looks for the dataset on GCS and
        skips statistics (a pass over every video).
        """
        if download_config is None:
            download_config = tfds.download.DownloadConfig(
                try_download_gcs=False,
                compute_stats=tfds.download.ComputeStatsMode.SKIP,
            )
        super().download_and_prepare(download_config=download_config, **kwargs)
        skipped = read_skipped(self)
        if skipped:
            logging.warning(
                "video_folder/%s: skipped %d videos that could not be decoded; see %s.",
                self.builder_config.name,
                len(skipped),
                os.fspath(epath.Path(self.data_path) / SKIPPED_REPORT),
            )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Videos are read from the local root.
        cfg = self.builder_config
        catalog = self._catalog()
        self._skipped = [
            {"split": split, "video_id": video_id, "path": path, "reason": reason}
            for split, video_id, path, reason in catalog.problems
        ]
        generators = {}
        for split, items in catalog.splits.items():
            if split == "train" and cfg.subset:
                if cfg.subset > len(items):
                    logging.warning(
                        "folder.subset=%d but the train split has %d videos: using all.",
                        cfg.subset,
                        len(items),
                    )
                items = balanced_subset(items, cfg.subset, cfg.seed)
            generators[split] = self._generate_examples(split, items)
        return generators

    def _generate_examples(self, split: str, items: list[VideoItem]):
        cfg = self.builder_config
        tasks = [
            _DecodeTask(
                item.path,
                item.start,
                item.stop,
                cfg.short_side,
                float(cfg.fps),
                cfg.max_frames,
                cfg.encoding,
            )
            for item in items
        ]
        is_epic = cfg.layout == "epic_kitchens100"
        skipped = 0
        with tqdm.tqdm(total=len(items), desc=f"Decoding {split}", unit="video") as bar:
            for index, (frames, rate, reason) in self._pool.map_unordered(_decode_task, tasks):
                item = items[index]
                bar.update(1)
                if reason is not None:
                    skipped += 1
                    bar.set_postfix(skipped=skipped)
                    self._skipped.append(
                        {
                            "split": split,
                            "video_id": item.video_id,
                            "path": item.path,
                            "reason": reason,
                        }
                    )
                if self._on_video is not None:
                    self._on_video(split, item.video_id, reason)
                if reason is not None:
                    continue
                example = {
                    "video": frames,
                    "label": item.label,
                    "video_id": item.video_id,
                    "fps": np.float32(rate),
                }
                if is_epic:
                    example["verb"] = item.verb
                    example["noun"] = item.noun
                yield item.video_id, example

    def _download_and_prepare(self, dl_manager, download_config=None) -> None:
        self._pool = _DecoderPool(self._num_workers)
        try:
            super()._download_and_prepare(dl_manager, download_config=download_config)
        finally:
            self._pool.close()
        # `self.data_dir` is still the temporary directory here: the report is
        # renamed into place with the data, never left by a failed build.
        report = epath.Path(self.data_dir) / SKIPPED_REPORT
        report.write_text(json.dumps(self._skipped, indent=1, sort_keys=True))


# ------------------------------------------------------------------ config API


def config_from_data_config(data_cfg: Any) -> VideoFolderConfig:
    """The `VideoFolderConfig` of `data_cfg.folder` (see configs/default.py)."""
    f = data_cfg.folder
    return VideoFolderConfig.make(
        name=f.get("name", ""),
        layout=f.layout,
        split=int(f.split),
        short_side=int(f.short_side),
        fps=float(f.fps),
        max_frames=int(f.max_frames),
        subset=int(f.subset),
        seed=int(f.get("seed", 0)),
        encoding=f.get("encoding", "jpeg"),
    )


def builder_from_config(data_cfg: Any, **kwargs: Any) -> VideoFolder:
    """The `video_folder` builder of an experiment's `config.data`.

    Args:
      data_cfg: `config.data`; reads `data_dir` and the `folder` section.
      **kwargs: Extra `VideoFolder` arguments (e.g. `on_video`).

    Returns:
      The builder; `builder.download_and_prepare()` builds it when it is not
      prepared yet (that needs `data.folder.root`).
    """
    f = data_cfg.folder
    return VideoFolder(
        config=config_from_data_config(data_cfg),
        data_dir=data_cfg.data_dir or None,
        root=f.root,
        annotations=f.annotations,
        num_workers=int(f.num_workers),
        **kwargs,
    )


def prepare(data_cfg: Any, **kwargs: Any) -> VideoFolder:
    """Builds the dataset of `data_cfg` unless it is prepared; returns its builder."""
    builder = builder_from_config(data_cfg, **kwargs)
    builder.download_and_prepare()
    return builder


def read_skipped(builder: tfds.core.DatasetBuilder) -> list[dict[str, str]]:
    """The skipped-videos report of a prepared dataset (split, video_id, path, reason)."""
    path = epath.Path(builder.data_path) / SKIPPED_REPORT
    return json.loads(path.read_text()) if path.exists() else []
