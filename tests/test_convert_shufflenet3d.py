"""Efficient-3DCNNs 3D-ShuffleNet -> vkd_jax conversion: parity and strict key checks.

The reference models come from ``tests/reference_shufflenet3d.py``, a port of
okankop/Efficient-3DCNNs (not pip installable) with the official module names.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch_compat

from vkd_jax import convert
from vkd_jax.convert import shufflenet3d as convert_shufflenet3d

torch = torch_compat.import_torch()
reference = pytest.importorskip("reference_shufflenet3d")

WIDTHS = (0.25, 0.5, 1.0, 1.5, 2.0)


def _reference(version: str, width: float, num_classes: int = 600):
    if version == "v1":
        return reference.ShuffleNet(groups=3, width_mult=width, num_classes=num_classes)
    return reference.ShuffleNetV2(num_classes=num_classes, sample_size=112, width_mult=width)


def _hooked(model, version: str) -> dict[str, torch.nn.Module]:
    """Our feature name -> the reference module whose output it is."""
    if version == "v1":
        return {
            "stem": model.maxpool,
            "stage1": model.layer1,
            "stage2": model.layer2,
            "stage3": model.layer3,
        }
    ends = np.cumsum(model.stage_repeats) - 1
    return {
        "stem": model.maxpool,
        **{f"stage{i + 1}": model.features[int(e)] for i, e in enumerate(ends)},
        "conv_last": model.conv_last,
    }


# v1 at 1.0 has the ungrouped first pointwise conv, at 0.5 the grouped one. v1 clips need
# T % 16 == 0, and the reference's shortcut pooling needs H, W >= 48.
@pytest.mark.parametrize(
    "version,width,clip",
    [("v1", 1.0, (16, 48, 48)), ("v1", 0.5, (16, 48, 48)), ("v2", 1.0, (8, 32, 32))],
)
def test_parity_with_reference(version, width, clip):
    torch.manual_seed(0)
    ref = _reference(version, width).eval()
    torch_compat.randomize_batch_norm(torch, ref, linear_std=0.3)
    captured = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out.numpy())
        )
        for name, module in _hooked(ref, version).items()
    ]
    x = torch.randn(2, 3, *clip, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x).numpy()
    for h in hooks:
        h.remove()

    arch = f"shufflenet3d_{version}_{width}"
    # Released checkpoints are DataParallel-wrapped: {"state_dict": {"module.conv1.0...": ...}}.
    checkpoint = {
        "arch": arch,
        "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()},
    }
    module, variables = convert.from_torch(arch, checkpoint)
    logits, feats = jax.jit(module.apply)(variables, np.transpose(x.numpy(), (0, 2, 3, 4, 1)))

    assert np.abs(want).max() > 1.0  # A meaningful scale for the absolute tolerance.
    np.testing.assert_allclose(logits, want, atol=1e-4, rtol=0)
    for name, value in captured.items():
        theirs = np.transpose(value, (0, 2, 3, 4, 1))
        assert feats[name].shape == theirs.shape, name
        np.testing.assert_allclose(feats[name], theirs, atol=1e-4, rtol=1e-4, err_msg=name)
    last = captured["stage3" if version == "v1" else "conv_last"]
    np.testing.assert_allclose(feats["pre_logits"], last.mean(axis=(2, 3, 4)), atol=1e-5)


def _zeros_state_dict(version: str, width: float, num_classes: int = 600) -> dict:
    with torch.device("meta"):  # Layout only: no weights allocated or initialized.
        ref = _reference(version, width, num_classes)
    return {k: np.zeros(v.shape, np.float32) for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("width", WIDTHS)
def test_every_width_converts_with_reference_counts(version, width):
    with torch.device("meta"):
        ref = _reference(version, width, num_classes=101)
    sd = {k: np.zeros(v.shape, np.float32) for k, v in ref.state_dict().items()}
    module, variables = convert_shufflenet3d.ARCHS[f"shufflenet3d_{version}_{width}"](
        sd, num_classes=None
    )
    assert module.num_classes == 101
    n_params = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"]))
    n_stats = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["batch_stats"]))
    assert n_params == sum(p.numel() for p in ref.parameters())
    assert n_stats == sum(b.numel() for n, b in ref.named_buffers() if "running" in n)


def test_registered_architectures():
    want = {f"shufflenet3d_{v}_{w}" for v in ("v1", "v2") for w in WIDTHS}
    assert want == set(convert_shufflenet3d.ARCHS)
    assert want <= set(convert.architectures())


def test_num_classes_mismatch_names_both():
    with pytest.raises(convert.ConversionError, match=r"num_classes=51.*600"):
        convert.from_torch("shufflenet3d_v2_1.0", _zeros_state_dict("v2", 1.0), num_classes=51)


def test_missing_key_is_named():
    sd = _zeros_state_dict("v2", 0.5)
    del sd["features.4.banch1.3.running_mean"]
    with pytest.raises(convert.ConversionError, match=r"features\.4\.banch1\.3\.running_mean"):
        convert.from_torch("shufflenet3d_v2_0.5", sd)


def test_unexpected_key_is_named():
    sd = _zeros_state_dict("v1", 1.0)
    sd["layer3.4.conv1.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(convert.ConversionError, match=r"layer3\.4\.conv1\.weight"):
        convert.from_torch("shufflenet3d_v1_1.0", sd)


def test_wrong_shape_is_named():
    sd = _zeros_state_dict("v1", 1.0)
    sd["layer2.3.conv2.weight"] = np.zeros((120, 1, 3, 3, 1), np.float32)
    with pytest.raises(convert.ConversionError, match=r"layer2\.3\.conv2\.weight.*layer2_3/conv2"):
        convert.from_torch("shufflenet3d_v1_1.0", sd)


def test_wrong_width_is_rejected():
    # A 0.5x checkpoint offered as 1.0x: the stems agree (24), the first unit does not.
    with pytest.raises(convert.ConversionError, match=r"features\.0\.banch1\.2\.weight"):
        convert.from_torch("shufflenet3d_v2_1.0", _zeros_state_dict("v2", 0.5))
