"""Converts a PyTorch video checkpoint into a vkd_jax model directory (a teacher).

    python tools/convert_checkpoint.py --arch x3d_m --src X3D_M.pyth --dst teachers/x3d_m_k400
    python tools/convert_checkpoint.py --arch mvit_v2_s --src mvit_v2_s.pth --dst teachers/mvit_k400

The directory holds the Flax variables and ``vkd_model.json`` (architecture,
variant, class count, input frames and size, normalization), so a config's
``teachers.<name>.checkpoint`` can point at it with no further code. Keys that
do not fit raise an error naming them: a model is never half converted.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vkd_jax import checkpoint, convert, models  # noqa: E402

# Input normalization each source trained with (mean, std of [0, 1] RGB).
_KINETICS_TORCHVISION = ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))
_KINETICS_PYTORCHVIDEO = ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225))


def family_and_variant(arch: str) -> tuple[str, str]:
    """``x3d_m`` -> (``x3d``, ``m``); ``mvit_v2_s`` -> (``mvit``, ``v2_s``); ..."""
    family, _, variant = arch.partition("_")
    if arch not in convert.architectures() or variant not in models.variants(family):
        raise convert.ConversionError(
            f"Unknown architecture {arch!r}; known architectures: {convert.architectures()}"
        )
    return family, variant


def default_normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if arch.startswith(("r2plus1d", "mvit")):
        return _KINETICS_TORCHVISION
    return _KINETICS_PYTORCHVIDEO


def load_torch_checkpoint(path: str, *, trust_pickle: bool = False):
    """Reads a ``.pth``/``.pyth`` file; plain tensors only unless ``trust_pickle``."""
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # torch raises UnpicklingError subclasses and RuntimeErrors here.
        if trust_pickle:
            raise
        raise SystemExit(
            f"{path!r} holds more than tensors (e.g. a pickled training config) and was not "
            f"loaded ({type(e).__name__}). If you trust its source, rerun with --trust-pickle."
        ) from e


def convert_file(
    arch: str,
    src: str,
    dst: str,
    *,
    num_classes: int | None = None,
    num_frames: int | None = None,
    crop_size: int | None = None,
    trust_pickle: bool = False,
) -> dict:
    """Converts ``src`` and writes the model directory ``dst``; returns its metadata."""
    family, variant = family_and_variant(arch)
    state = load_torch_checkpoint(src, trust_pickle=trust_pickle)
    module, variables = convert.from_torch(arch, state, num_classes=num_classes)
    standard = models.standard_input(family, variant) or (8, 32, 32)
    mean, std = default_normalization(arch)
    meta = {
        "name": family,
        "variant": variant,
        "num_classes": int(module.num_classes),
        "num_frames": int(num_frames or standard[0]),
        "crop_size": int(crop_size or standard[1]),
        "mean": list(mean),
        "std": list(std),
        "source": f"converted from {os.path.basename(src)} ({arch})",
    }
    checkpoint.save_model(dst, variables, meta)
    return meta


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, help=f"one of {convert.architectures()}")
    parser.add_argument("--src", required=True, help="PyTorch checkpoint file")
    parser.add_argument("--dst", required=True, help="model directory to write")
    parser.add_argument("--num-classes", type=int, help="expected class count (checked)")
    parser.add_argument("--num-frames", type=int, help="clip length (default: the standard)")
    parser.add_argument("--crop-size", type=int, help="input size (default: the standard)")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="allow pickled non-tensor objects"
    )
    args = parser.parse_args(argv)
    meta = convert_file(
        args.arch,
        args.src,
        args.dst,
        num_classes=args.num_classes,
        num_frames=args.num_frames,
        crop_size=args.crop_size,
        trust_pickle=args.trust_pickle,
    )
    print(f"Wrote {args.dst}: {meta}")


if __name__ == "__main__":
    main()
