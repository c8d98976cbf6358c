"""Looking at a dataset: per-class counts and a contact sheet of clips (``mode=data``)."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from vkd_jax import _deps, storage

with _deps.extra("train", __name__):
    import matplotlib

    matplotlib.use("Agg")  # Files only; no display on servers.
    import matplotlib.pyplot as plt
    import tensorflow as tf
    from tqdm import tqdm


def class_counts(builder: Any, split: str, label_key: str) -> collections.Counter:
    """Examples per class index in ``split``, reading labels only."""
    ds = builder.as_dataset(split=split, decoders=None)
    ds = ds.map(lambda ex: ex[label_key], num_parallel_calls=tf.data.AUTOTUNE)
    counts: collections.Counter = collections.Counter()
    for batch in tqdm(ds.batch(1024).as_numpy_iterator(), desc=f"counting {split}", leave=False):
        counts.update(batch.tolist())
    return counts


def contact_sheet(
    builder: Any,
    split: str,
    path: str,
    *,
    video_key: str = "video",
    label_key: str = "label",
    clips_per_class: int = 2,
    frames_per_clip: int = 6,
    max_classes: int = 20,
) -> None:
    """Writes a PNG: one row per clip (``clips_per_class`` per class), frames across.

    People would rather look at data than read about it: each row shows evenly
    spaced frames of one clip, labelled with its class name.
    """
    names = builder.info.features[label_key].names
    wanted = {c: clips_per_class for c in range(min(len(names), max_classes))}
    rows: list[tuple[str, np.ndarray]] = []
    for ex in builder.as_dataset(split=split).as_numpy_iterator():
        label = int(ex[label_key])
        if wanted.get(label, 0) > 0:
            wanted[label] -= 1
            video = ex[video_key]
            idx = np.linspace(0, len(video) - 1, frames_per_clip).round().astype(int)
            rows.append((names[label], video[idx]))
        if not any(wanted.values()):
            break
    rows.sort(key=lambda r: names.index(r[0]))
    fig, axes = plt.subplots(
        len(rows),
        frames_per_clip,
        figsize=(1.3 * frames_per_clip, 1.3 * len(rows)),
        squeeze=False,
    )
    for r, (name, frames) in enumerate(rows):
        for f in range(frames_per_clip):
            ax = axes[r, f]
            ax.imshow(frames[f])
            ax.set_xticks([])
            ax.set_yticks([])
            if f == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0:
                ax.set_title(f"frame {f + 1}", fontsize=8)
    fig.tight_layout()
    storage.savefig(fig, path, dpi=80)
    plt.close(fig)
