"""`synthetic_actions`: a procedurally generated video action dataset (TFDS builder).

Nothing can be downloaded on a fresh machine, yet a run must work out of the box
and show the differences between the distillation methods. This builder draws
action clips with vectorized NumPy, deterministically for a seed, with
`train`, `validation` and `test` splits drawn from different seeds (tune on
`validation`; report on `test`).

The world is a torus (objects leaving one edge re-enter on the opposite one), so
the position of a moving object in any single frame is uniform whatever its
velocity: no frame statistic tells which way anything moves. Every clip holds
the same cast:

- a static background texture (a random tint plus random colour gratings),
- two *discs* and one *bar*, the actors, each with a random bright colour,
- `num_distractors` small *squares* moving in random directions at random
  speeds (every class has moving things, so "something moves" is no cue).

Actors not involved in a class stay still. The 12 classes:

| id | name            | what happens                                              |
|----|-----------------|-----------------------------------------------------------|
| 0  | move_right      | one disc moves right                                      |
| 1  | move_left       | one disc moves left (time reversal of move_right)         |
| 2  | move_down       | one disc moves down                                       |
| 3  | move_up         | one disc moves up (time reversal of move_down)            |
| 4  | grow            | one disc grows                                            |
| 5  | shrink          | one disc shrinks (time reversal of grow)                  |
| 6  | rotate_cw       | the bar rotates clockwise (as seen on screen, y down)     |
| 7  | rotate_ccw      | the bar rotates counter-clockwise (reversal of rotate_cw) |
| 8  | approach        | the two discs, far apart, move towards each other         |
| 9  | separate        | the two discs move apart (time reversal of approach)      |
| 10 | move_together   | both discs, far apart, move with the same velocity        |
| 11 | move_opposite   | both discs move with opposite velocities, sliding past    |
|    |                 | each other (perpendicular to the line joining them)       |

Design properties (why the dataset separates the methods):

- (a, b) Classes 1, 3, 5, 7, 9 are rendered as the time-reversed videos of
  classes 0, 2, 4, 6, 8 drawn from the same distribution, so each such pair has
  *exactly* the same distribution of the set of frames: a model that sees one
  frame at a random time, or the frames in shuffled order, is at chance within
  every pair. Only the order of events separates them. Measured by
  tools/measure_frame_vs_clip.py (one small CNN, tiny geometry): clip 0.855
  top-1, shuffled frames 0.538, one frame 0.152 (chance 0.083).
- (c) approach/separate and move_together/move_opposite depend on the relation
  between two discs that start far apart (0.2 to 0.46 of the frame), which a
  global-attention (ViT) teacher captures more easily than a small CNN whose
  pooled local motion features look alike ("a disc moving right" and "a disc
  moving left" occur in both approach and separate).
- (d) Colours, sizes, speeds, start positions, directions, background textures
  and distractors are random per clip; all classes share the same cast, so no
  pixel statistic of a single frame identifies the class (only mild second
  order cues remain, e.g. grow/shrink sweep a slightly wider range of radii).

Resolution and clip length come from the builder config: `tiny` (8 frames of
32x32, a few hundred clips, for tests) and `default` (16 frames of 64x64,
4800 / 600 / 600 train / validation / test clips) and
`long` (64 frames of 32x32, same split sizes, other clips: drawn from another seed, lit
from above, moving as far per frame as in `default`), the pretraining data of the
self-supervised pretext tasks (docs/pretext.md), and `long_ood` (`long` in another visual
domain: diamonds, checkerboard backgrounds, more distractors, a panning camera), the
out-of-distribution pretraining data of docs/ensembles.md.
Videos are stored as zlib-compressed uint8 tensors (faster to write and read than per-frame PNG).
Each example also carries `id`, its index within the split.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from etils import epath

from vkd_jax import _deps

with _deps.extra("train", __name__):
    import tensorflow_datasets as tfds

CLASS_NAMES = (
    "move_right",
    "move_left",
    "move_down",
    "move_up",
    "grow",
    "shrink",
    "rotate_cw",
    "rotate_ccw",
    "approach",
    "separate",
    "move_together",
    "move_opposite",
)
NUM_CLASSES = len(CLASS_NAMES)
# Classes rendered as the time reversal of the class before them.
_REVERSED = np.array(
    [name in ("move_left", "move_up", "shrink", "rotate_ccw", "separate") for name in CLASS_NAMES]
)
# Clips generated together in one vectorized call (bounds memory: ~25 MB at 16x64x64).
_CHUNK = 32


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Clip geometry of the generated videos.

    Attributes:
      num_frames: Frames per clip T.
      height: Frame height H in pixels.
      width: Frame width W in pixels.
      num_distractors: Moving distractor squares per clip.
      light_from_above: Largest top-to-bottom brightness step of the background (0: none).
        A world with an "up", as real videos have (sky, gravity, light): without it every
        rotation of a clip is as likely as the clip, and RotNet has nothing to learn.
      motion_scale: How far things travel over the clip, relative to the base design
        (translations, the bar's turn, the distractors; not growing or approaching, which
        the frame bounds). `long` uses 4: 64 frames at the per-frame speeds (in frame
        widths) of `default`'s 16, so that a pretext clip of consecutive frames moves like
        a downstream clip, and playback rates or clip order change what is seen.
      light_fading: Largest fraction by which the light dims from the first frame to the
        last (0: none), drawn per clip in [1/2, 1] of it: an arrow of time, as real videos
        have (things fall, people walk forwards) and the base design deliberately lacks
        (its class pairs are time reversals). Without one, no pooled feature orders two
        clips of a video and VCOP has nothing to learn (it stays at chance without one:
        docs/pretext.md, "On the built-in data").
      actor_shape: "disc" or "diamond" (the two round actors drawn as squares turned by
        45 degrees, of the same area): another look for the same actions (`long_ood`).
      background: "gratings" (colour gratings) or "checker" (the gratings under a
        coarse random checkerboard and per-pixel noise, both static).
      camera_motion: How far a panning camera moves over the clip, in frame sizes (0: a
        still camera). The whole frame shifts (on the torus) in a random direction.
    """

    num_frames: int
    height: int
    width: int
    num_distractors: int = 3
    light_from_above: float = 0.0
    motion_scale: float = 1.0
    light_fading: float = 0.0
    actor_shape: str = "disc"
    background: str = "gratings"
    camera_motion: float = 0.0


def _bright_colours(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random saturated colours whose largest channel is in [0.75, 1] (contrast with the bg)."""
    c = rng.uniform(0.0, 1.0, shape + (3,)) ** 2
    return c / c.max(-1, keepdims=True) * rng.uniform(0.75, 1.0, shape + (1,))


def _background(rng: np.random.Generator, n: int, geo: Geometry) -> np.ndarray:
    """Static random textures: a dark tinted base plus three colour gratings. (n, H, W, 3)."""
    y = np.arange(geo.height, dtype=np.float32)[:, None] / geo.height
    x = np.arange(geo.width, dtype=np.float32)[None, :] / geo.width
    base = rng.uniform(0.15, 0.4, (n, 1, 1, 1)) + rng.uniform(-0.08, 0.08, (n, 1, 1, 3))
    bg = np.broadcast_to(base, (n, geo.height, geo.width, 3)).astype(np.float32)
    for _ in range(3):
        # Integer frequencies keep the texture periodic, like the torus the objects live on.
        fx = rng.integers(-4, 5, (n, 1, 1))
        fy = rng.integers(0, 5, (n, 1, 1))
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        wave = np.sin(2 * np.pi * (fx * x + fy * y) + phase)
        amp = rng.uniform(0.02, 0.08, (n, 1, 1, 3))
        bg = bg + (wave[..., None] * amp).astype(np.float32)
    if geo.light_from_above > 0:
        # Drawn after the gratings, so the clips of configs without light are unchanged.
        step = rng.uniform(0.5, 1.0, (n, 1, 1, 1)) * geo.light_from_above
        bg = bg + (step * (0.5 - y)[None, :, :, None]).astype(np.float32)
    if geo.background == "checker":
        # Cells of 4 or 8 pixels (a divisor of the frame keeps the torus seamless), a random
        # contrast and colour, and static per-pixel noise.
        cell = rng.choice([4, 8], (n, 1, 1))
        yi, xi = np.arange(geo.height)[:, None], np.arange(geo.width)[None, :]
        checker = ((yi // cell + xi // cell) % 2).astype(np.float32) - 0.5
        amp = rng.uniform(0.08, 0.16, (n, 1, 1, 3))
        noise = rng.normal(0.0, 0.03, (n, geo.height, geo.width, 1))
        bg = bg + (checker[..., None] * amp + noise).astype(np.float32)
    elif geo.background != "gratings":
        raise ValueError(f"background must be gratings or checker, got {geo.background!r}")
    return bg


def _wrapped(grid: np.ndarray, centre: np.ndarray, period: int) -> np.ndarray:
    """Signed torus distance grid - centre in [-period/2, period/2)."""
    return (grid - centre + period / 2) % period - period / 2


def _composite(frames: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """In place: frames (n,T,H,W,3) <- over-composite a shape of alpha (n,T,H,W), colour (n,3)."""
    # frames += alpha * (colour - frames), only where alpha > 0: shapes cover a few percent
    # of the pixels, so the sparse update is several times faster than a dense one.
    idx = np.nonzero(alpha)
    a = alpha[idx][:, None]
    frames[idx] += a * (colour.astype(np.float32)[idx[0]] - frames[idx])


def generate_clips(labels: np.ndarray, geo: Geometry, rng: np.random.Generator) -> np.ndarray:
    """Renders one clip per label.

    Args:
      labels: Class ids, int (n,).
      geo: Clip geometry.
      rng: Source of all randomness (the clips are a pure function of its state).

    Returns:
      uint8 videos (n, T, H, W, 3).
    """
    labels = np.asarray(labels)
    n, t_len, h, w = len(labels), geo.num_frames, geo.height, geo.width
    s = float(min(h, w))  # Size unit: sizes and speeds are fractions of the short side.
    # tau in [-1/2, 1/2]: time relative to the clip centre, in clip lengths.
    tau = (np.arange(t_len, dtype=np.float32) / max(t_len - 1, 1) - 0.5)[None, :]
    name = np.array(CLASS_NAMES)[labels]
    is_ = lambda *names: np.isin(name, names)[:, None]  # (n, 1) masks broadcast over time.

    def uniform(lo: float, hi: float, shape: tuple[int, ...] = ()) -> np.ndarray:
        return rng.uniform(lo, hi, (n,) + shape).astype(np.float32)

    def unit(angle: np.ndarray) -> np.ndarray:
        return np.stack([np.cos(angle), np.sin(angle)], -1)

    # ---- discs: centres (n, 2 discs, T, 2) in pixels (x, y), radii (n, 2, T).
    start = uniform(0, 1, (2, 1, 2)) * np.array([w, h], np.float32)
    disp = uniform(0.35, 0.6) * s * geo.motion_scale  # Displacement over the whole clip.
    # Single-disc motion classes: disc 0 moves along an axis, with a small transverse drift.
    axis = np.where(is_("move_right", "move_left"), 0.0, np.pi / 2)[:, 0]
    drift = uniform(-0.2, 0.2)
    move = unit(axis + drift) * disp[:, None]
    moving = is_("move_right", "move_left", "move_down", "move_up")
    centres = np.repeat(start, t_len, axis=2)
    centres[:, 0] += np.where(moving[..., None], move[:, None, :] * tau[..., None], 0.0)
    # Two-disc relational classes: place both discs around a common midpoint.
    mid = uniform(0, 1, (2,)) * np.array([w, h], np.float32)
    phi = uniform(0, 2 * np.pi)
    # approach: separation shrinks from [0.38, 0.46] to [0.16, 0.22] of the frame (< 1/2 so
    # the shortest way round the torus is the direct one and the motion is unambiguous).
    d_far, d_near = uniform(0.38, 0.46) * s, uniform(0.16, 0.22) * s
    sep = d_far[:, None] + (d_near - d_far)[:, None] * (tau + 0.5)  # (n, T)
    off_appr = unit(phi)[:, None, :] * sep[..., None] / 2  # (n, T, 2)
    # move_together: fixed offset, common velocity in a random direction.
    m_tog = uniform(0.2, 0.45) * s
    vel_tog = unit(uniform(0, 2 * np.pi)) * disp[:, None]
    off_tog = np.broadcast_to((unit(phi) * m_tog[:, None] / 2)[:, None, :], (n, t_len, 2))
    # move_opposite: offset m at mid-clip, velocities +-v perpendicular to it (no collision).
    m_opp = uniform(0.2, 0.35) * s
    vel_opp = unit(phi + np.pi / 2) * disp[:, None] / 2
    off_opp = (unit(phi) * m_opp[:, None] / 2)[:, None, :] + vel_opp[:, None, :] * tau[..., None]
    shift_tog = vel_tog[:, None, :] * tau[..., None]
    pair_off = np.where(
        is_("approach", "separate")[..., None],
        off_appr,
        np.where(is_("move_together")[..., None], off_tog, off_opp),
    )
    pair_shift = np.where(is_("move_together")[..., None], shift_tog, 0.0)
    pair = is_("approach", "separate", "move_together", "move_opposite")[..., None]
    centres[:, 0] = np.where(pair, mid[:, None, :] - pair_off + pair_shift, centres[:, 0])
    centres[:, 1] = np.where(pair, mid[:, None, :] + pair_off + pair_shift, centres[:, 1])

    radii = np.repeat(uniform(0.07, 0.14, (2, 1)) * s, t_len, axis=2)
    # The approaching discs are kept small so that they never touch.
    radii = np.where(
        is_("approach", "separate")[:, :, None], uniform(0.06, 0.08, (2, 1)) * s, radii
    )
    r_from, r_to = uniform(0.05, 0.07) * s, uniform(0.14, 0.17) * s
    r_grow = r_from[:, None] + (r_to - r_from)[:, None] * (tau + 0.5)
    radii[:, 0] = np.where(is_("grow", "shrink"), r_grow, radii[:, 0])

    # ---- bar: static centre, angle (n, T); angle grows clockwise on screen (y points down).
    bar_centre = uniform(0, 1, (2,)) * np.array([w, h], np.float32)
    turn = np.deg2rad(uniform(60, 120)) * geo.motion_scale
    angle = uniform(0, np.pi)[:, None] + np.where(
        is_("rotate_cw", "rotate_ccw"), turn[:, None] * tau, 0.0
    )
    bar_len, bar_w = uniform(0.3, 0.45) * s, np.maximum(0.07 * s, 1.5)

    # ---- distractors: (n, K, T, 2) centres on straight torus paths, half sizes (n, K).
    k = geo.num_distractors
    d_start = uniform(0, 1, (k, 1, 2)) * np.array([w, h], np.float32)
    d_vel = unit(uniform(0, 2 * np.pi, (k,))) * uniform(0.0, 0.6, (k, 1)) * s * geo.motion_scale
    d_centres = d_start + d_vel[:, :, None, :] * tau[:, None, :, None]
    d_half = np.maximum(uniform(0.025, 0.045, (k,)) * s, 1.0)

    # ---- render: background, distractors, bar, discs (actors occlude distractors).
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float32)[None, :] + 0.5
    frames = np.repeat(_background(rng, n, geo)[:, None], t_len, axis=1)
    col_d = _bright_colours(rng, (n, k))
    col_bar = _bright_colours(rng, (n,))
    col_disc = _bright_colours(rng, (n, 2))

    def grid(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Wrapped offsets (n, T, H, W) of every pixel from centres c (n, T, 2)."""
        dx = _wrapped(xs[None, None], c[..., 0][..., None, None], w)
        dy = _wrapped(ys[None, None], c[..., 1][..., None, None], h)
        return dx, dy

    # Soft (anti-aliased) edges: alpha ramps over one pixel around the boundary.
    ramp = lambda v: np.clip(v + 0.5, 0.0, 1.0)
    for j in range(k):
        dx, dy = grid(d_centres[:, j])
        half = d_half[:, j, None, None, None]
        _composite(frames, ramp(half - np.abs(dx)) * ramp(half - np.abs(dy)), col_d[:, j])
    dx, dy = grid(np.broadcast_to(bar_centre[:, None, :], (n, t_len, 2)))
    ca, sa = np.cos(angle)[..., None, None], np.sin(angle)[..., None, None]
    along, across = dx * ca + dy * sa, -dx * sa + dy * ca
    bar_alpha = ramp(bar_len[:, None, None, None] / 2 - np.abs(along)) * ramp(
        bar_w / 2 - np.abs(across)
    )
    _composite(frames, bar_alpha, col_bar)
    if geo.actor_shape not in ("disc", "diamond"):
        raise ValueError(f"actor_shape must be disc or diamond, got {geo.actor_shape!r}")
    for j in range(2):
        dx, dy = grid(centres[:, j])
        if geo.actor_shape == "disc":
            dist = np.sqrt(dx * dx + dy * dy)
        else:  # An L1 ball of the disc's area: pi r^2 = 2 r'^2.
            dist = (np.abs(dx) + np.abs(dy)) / np.sqrt(np.pi / 2)
        _composite(frames, ramp(radii[:, j][..., None, None] - dist), col_disc[:, j])

    # Reversed classes: the same distribution played backwards (identical frame sets).
    rev = _REVERSED[labels]
    frames[rev] = frames[rev, ::-1]
    if geo.light_fading > 0:
        # After the reversal, so that every clip dims forwards in time. Drawn last, so the
        # clips of configs without fading are unchanged.
        fade = uniform(0.5, 1.0) * geo.light_fading
        frames *= (1.0 - fade[:, None] * (tau + 0.5))[:, :, None, None, None]
    if geo.camera_motion > 0:
        # A panning camera: every frame shifts by whole pixels along a random direction
        # (drawn after everything else, so configs without a camera are unchanged).
        pan = unit(uniform(0, 2 * np.pi)) * (uniform(0.5, 1.0) * geo.camera_motion * s)[:, None]
        shift = np.round(pan[:, None, :] * tau[..., None]).astype(np.int64)  # (n, T, 2)
        rows = (np.arange(h)[None, None, :] - shift[..., 1:2]) % h  # (n, T, H)
        cols = (np.arange(w)[None, None, :] - shift[..., 0:1]) % w  # (n, T, W)
        ni, ti = np.arange(n)[:, None, None, None], np.arange(t_len)[None, :, None, None]
        frames = frames[ni, ti, rows[..., :, None], cols[..., None, :]]
    return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def split_labels(num_examples: int, seed: int, split_id: int) -> np.ndarray:
    """Class-balanced labels of a split (counts differ by at most one), shuffled by the seed."""
    rng = np.random.default_rng([seed, split_id, 0])
    return rng.permutation(np.arange(num_examples) % NUM_CLASSES)


def generate_split(num_examples: int, geo: Geometry, seed: int, split_id: int):
    """Yields (index, video, label) of a split, chunk by chunk, deterministically.

    Chunk c is drawn from its own generator seeded by (seed, split_id, 1, c), so the
    clips do not depend on how many were generated before (or on chunking elsewhere).

    Args:
      num_examples: Clips in the split.
      geo: Clip geometry.
      seed: Dataset seed.
      split_id: 0 for train, 1 for test, 2 for validation (different seeds per split).

    Yields:
      (index, uint8 video (T, H, W, 3), label) tuples.
    """
    labels = split_labels(num_examples, seed, split_id)
    for c, lo in enumerate(range(0, num_examples, _CHUNK)):
        rng = np.random.default_rng([seed, split_id, 1, c])
        chunk_labels = labels[lo : lo + _CHUNK]
        videos = generate_clips(chunk_labels, geo, rng)
        for i, (video, label) in enumerate(zip(videos, chunk_labels)):
            yield lo + i, video, int(label)


class SyntheticActionsConfig(tfds.core.BuilderConfig):
    """Builder config: clip geometry, split sizes and seed."""

    def __init__(
        self,
        *,
        num_frames: int,
        height: int,
        width: int,
        num_train: int,
        num_validation: int,
        num_test: int,
        num_distractors: int = 3,
        light_from_above: float = 0.0,
        motion_scale: float = 1.0,
        light_fading: float = 0.0,
        actor_shape: str = "disc",
        background: str = "gratings",
        camera_motion: float = 0.0,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.geometry = Geometry(
            num_frames,
            height,
            width,
            num_distractors,
            light_from_above,
            motion_scale,
            light_fading,
            actor_shape,
            background,
            camera_motion,
        )
        self.num_train = num_train
        self.num_validation = num_validation
        self.num_test = num_test
        self.seed = seed


class SyntheticActions(tfds.core.GeneratorBasedBuilder):
    """Procedurally generated action clips whose classes need temporal order and global context.

    See the module docstring of `vkd_jax.data.synthetic` for the classes and their design.
    """

    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: 12 classes.",
        "1.1.0": "A validation split (for tuning; the test split is for reporting only); "
        "default: 4800 train clips instead of 2400. The `long` config (64 frames).",
        "1.2.0": "`long` moves at `default`'s per-frame speeds (motion_scale 4); its clips "
        "in 1.1.0 moved 4x slower per frame, below a pixel per frame at 32x32. `tiny` and "
        "`default` are unchanged.",
        "1.3.0": "The `long_ood` config (another visual domain for out-of-distribution "
        "teachers). The clips of `tiny`, `default` and `long` are unchanged.",
    }
    BUILDER_CONFIGS = [
        SyntheticActionsConfig(
            name="tiny",
            description="Tests: 8 frames of 32x32, 360 train / 120 validation / 120 test clips.",
            num_frames=8,
            height=32,
            width=32,
            num_train=360,
            num_validation=120,
            num_test=120,
            num_distractors=2,
        ),
        SyntheticActionsConfig(
            name="default",
            description=(
                "The embedded default: 16 frames of 64x64, 4800 train / 600 validation / 600 "
                "test clips."
            ),
            num_frames=16,
            height=64,
            width=64,
            num_train=4800,
            num_validation=600,
            num_test=600,
            num_distractors=3,
        ),
        SyntheticActionsConfig(
            name="long",
            description=(
                "Self-supervised pretraining: the same 12 actions over 64 frames of 32x32, "
                "moving at `default`'s per-frame speeds (relative to the frame; growing and "
                "approaching, bounded by the frame, are 4x slower per frame), lit from above "
                "(the background brightens towards the top: the world has an up, which "
                "RotNet needs), 4800 train / 600 validation / 600 test clips. Long enough "
                "for the pretext tasks that sample clips at several playback rates (PRP's "
                "rate 8 on 8 frames spans 57)."
            ),
            num_frames=64,
            height=32,
            width=32,
            num_train=4800,
            num_validation=600,
            num_test=600,
            num_distractors=3,
            light_from_above=0.3,
            motion_scale=4.0,
            light_fading=0.5,
            seed=1,
        ),
        SyntheticActionsConfig(
            name="long_ood",
            description=(
                "Out-of-distribution pretraining data: `long`'s 12 actions, geometry, light "
                "and speeds in another visual domain: the round actors are diamonds, the "
                "background a coarse checkerboard with pixel noise over the gratings, five "
                "distractors instead of three, and a camera that pans by a quarter of the "
                "frame over each clip; other clips (seed 2). 4800 train / 600 validation / "
                "600 test clips."
            ),
            num_frames=64,
            height=32,
            width=32,
            num_train=4800,
            num_validation=600,
            num_test=600,
            num_distractors=5,
            light_from_above=0.3,
            motion_scale=4.0,
            light_fading=0.5,
            actor_shape="diamond",
            background="checker",
            camera_motion=0.25,
            seed=2,
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. Overridden because TFDS 4.9.10's lookup needs `importlib_resources`,
        which it does not declare as a dependency on Python >= 3.9."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        geo = self.builder_config.geometry
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "video": tfds.features.Tensor(
                        shape=(geo.num_frames, geo.height, geo.width, 3),
                        dtype=np.uint8,
                        encoding=tfds.features.Encoding.ZLIB,
                    ),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "id": np.int64,
                }
            ),
            supervised_keys=("video", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the clips are generated.
        cfg = self.builder_config
        return {
            "train": self._generate_examples(cfg.num_train, split_id=0),
            "validation": self._generate_examples(cfg.num_validation, split_id=2),
            "test": self._generate_examples(cfg.num_test, split_id=1),
        }

    def _generate_examples(self, num_examples: int, split_id: int):
        cfg = self.builder_config
        for index, video, label in generate_split(num_examples, cfg.geometry, cfg.seed, split_id):
            yield index, {"video": video, "label": label, "id": index}
