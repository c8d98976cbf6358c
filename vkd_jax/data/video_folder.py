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

This module is the builder; the decoding is `vkd_jax.data.decode` and the
layouts' annotation parsers are `vkd_jax.data.layouts` (a new dataset is a new
parser there), both re-exported here.

The builder's parameters live in a `VideoFolderConfig` whose name encodes
them (e.g. `ucf101_split1_short128_fps0_frames0_all_jpeg`), so layouts, splits
and subsets built into one `data_dir` do not collide.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from etils import epath

from vkd_jax import _deps, errors

with _deps.extra("train", __name__):
    import tensorflow_datasets as tfds
    import tqdm
from vkd_jax.data import decode

# The parts of the builder, re-exported: decoding and the layouts' annotation parsers.
from vkd_jax.data.decode import (  # noqa: F401
    ENCODINGS,
    VideoDecodeError,
    decode_video,
    encode_frame,
    iter_frames,
    source_fps,
)
from vkd_jax.data.layouts import (  # noqa: F401
    LAYOUTS,
    VIDEO_EXTENSIONS,
    Catalog,
    VideoItem,
    balanced_subset,
    parse_timestamp,
    read_catalog,
)

SKIPPED_REPORT = "skipped_videos.json"


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
        self._pool = decode.DecoderPool(0)
        super().__init__(config=config, **kwargs)

    def _catalog(self) -> Catalog:
        if self._catalog_cache is None:
            if not self._root:
                raise errors.ConfigError(
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
            decode.DecodeTask(
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
            for index, (frames, rate, reason) in self._pool.map_unordered(
                decode.decode_task, tasks
            ):
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
        self._pool = decode.DecoderPool(self._num_workers)
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
