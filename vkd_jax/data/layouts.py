"""Annotation parsers of the video_folder builder: one function per layout reads its
official class and split files into a `Catalog` (classes and the videos of each split).

Adding a dataset means adding its parser here and its name to `LAYOUTS`; the builder
(`video_folder`) and the decoding (`decode`) do not change. The layouts and their
files are listed in `video_folder`'s docstring.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

LAYOUTS = ("generic", "ucf101", "hmdb51", "kinetics400", "ssv2", "epic_kitchens100")
VIDEO_EXTENSIONS = (".avi", ".mp4", ".webm", ".mkv", ".mov", ".mpg", ".mpeg", ".m4v", ".flv")


def parse_timestamp(text: str) -> float:
    """Seconds of an `HH:MM:SS.ff` (or `MM:SS.ff`, `SS.ff`) timestamp."""
    seconds = 0.0
    for part in text.strip().split(":"):
        seconds = seconds * 60.0 + float(part)
    return seconds


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
