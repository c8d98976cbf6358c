"""PyAV decoding of the video_folder builder: frames of a video or a segment of one,
resampled and resized, encoded for storage, in worker processes.

Separate from the builder (`video_folder`) and the annotation parsers (`layouts`), so
that each changes alone.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import process as futures_process
from typing import Any

import numpy as np

from vkd_jax import _deps, errors

with _deps.extra("train", __name__):
    import av
    from av.video.reformatter import Interpolation

ENCODINGS = ("jpeg", "png")
# Tolerance (seconds) when comparing frame timestamps with segment bounds and
# resampling targets: container timestamps are rationals rounded to floats.
_TIME_EPS = 1e-6
_SWS_CHROMA = Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND
# JPEG quality of the stored frames (TensorFlow's encode_jpeg default).
_JPEG_QUALITY = 95


# Defined in the leaf module vkd_jax.errors; kept importable from here.
VideoDecodeError = errors.VideoDecodeError


def _output_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side resized to `short_side` (0 = keep)."""
    if short_side <= 0:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


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
class DecodeTask:
    """One video (or segment) to decode, as sent to a worker process."""

    path: str
    start: float | None
    stop: float | None
    short_side: int
    fps: float
    max_frames: int
    encoding: str


def decode_task(task: DecodeTask) -> tuple[list[bytes] | None, float, str | None]:
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


class DecoderPool:
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
