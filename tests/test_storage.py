"""Local and bucket paths through vkd_jax.storage, and the stages' files in a bucket.

Bucket paths run against the in-memory ``fake_gcs`` fixture (conftest.py): the same
epath calls a real ``gs://`` workdir makes, with no network. Orbax's array writes
(TensorStore's own GCS driver) and TensorBoard's event files (TensorFlow's GCS
client) do not go through epath and are not exercised here.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from vkd_jax import storage


@pytest.fixture(params=["local", "bucket"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    request.getfixturevalue("fake_gcs")
    return "gs://bucket/runs/x"


def test_resolve_keeps_urls_and_makes_local_paths_absolute():
    assert storage.resolve("gs://bucket/runs/x/") == "gs://bucket/runs/x"
    assert storage.resolve("runs/x") == os.path.abspath("runs/x")
    assert storage.resolve("~/x") == os.path.join(os.path.expanduser("~"), "x")
    assert storage.is_remote("gs://b/x") and not storage.is_remote("/tmp/x")
    # What resolve avoids: abspath folds the scheme's "//".
    assert "gs://" not in os.path.abspath("gs://bucket/x")


def test_files_round_trip(root):
    storage.makedirs(os.path.join(root, "a", "b"))
    assert storage.isdir(root) and storage.isdir(os.path.join(root, "a", "b"))
    storage.write_json(os.path.join(root, "r.json"), {"top1": 0.5}, indent=2)
    storage.write_text(os.path.join(root, "a", "t.md"), "| x |\n")
    assert storage.read_json(os.path.join(root, "r.json")) == {"top1": 0.5}
    assert storage.read_text(os.path.join(root, "a", "t.md")) == "| x |\n"
    assert storage.isfile(os.path.join(root, "r.json"))
    assert not storage.isfile(os.path.join(root, "a"))
    assert not storage.exists(os.path.join(root, "r.json.tmp"))  # Written whole, no leftover.
    history = os.path.join(root, "h.jsonl")
    storage.append_text(history, "1\n")
    storage.append_text(history, "2\n")
    assert storage.read_text(history) == "1\n2\n"
    assert storage.listdir(root) == ["a", "h.jsonl", "r.json"]
    walked = {os.path.relpath(d, root): sorted(f) for d, _, f in storage.walk(root)}
    assert walked["a"] == ["t.md"] and walked["."] == ["h.jsonl", "r.json"]
    with storage.open(os.path.join(root, "bin"), "wb") as f:
        f.write(b"\x00\x01")
    with storage.open(os.path.join(root, "bin"), "rb") as f:
        assert f.read() == b"\x00\x01"
    storage.rmtree(os.path.join(root, "a"))
    assert not storage.exists(os.path.join(root, "a"))


@pytest.mark.parametrize("source", ["local", "same"])
def test_replace_dir_moves_a_finished_directory_over_the_old_one(root, tmp_path, source):
    src = str(tmp_path / "staged") if source == "local" else root + "_staged"
    if not storage.is_remote(root) and source == "same":
        src = str(tmp_path / "staged_same")
    storage.makedirs(os.path.join(src, "variables"))
    storage.write_text(os.path.join(src, "vkd_model.json"), "{}")
    storage.write_text(os.path.join(src, "variables", "x"), "new")
    storage.makedirs(root)
    storage.write_text(os.path.join(root, "stale"), "old")
    storage.replace_dir(src, root)
    assert storage.listdir(root) == ["variables", "vkd_model.json"]
    assert storage.read_text(os.path.join(root, "variables", "x")) == "new"
    assert not storage.exists(src)


def test_savefig_writes_a_png_to_a_bucket(fake_gcs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    storage.savefig(fig, "gs://bucket/fig.png", dpi=20)
    plt.close(fig)
    with storage.open("gs://bucket/fig.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "/bucket/fig.png" in fake_gcs


def test_stage_files_land_in_the_bucket(fake_gcs):
    """What stages write besides checkpoints (results, eval summary, metric history,
    CKA maps, model metadata) with a gs:// workdir, read back by the same code."""
    from vkd_jax import checkpoint, cka_maps, evaluation, experiment, mechanism

    workdir = "gs://bucket/runs/k400"
    storage.makedirs(workdir)
    experiment._write_results(workdir, {"top1": 0.5}, "| top1 |\n", name="results")
    assert storage.read_json(f"{workdir}/results.json") == {"top1": 0.5}
    assert storage.read_text(f"{workdir}/results.md") == "| top1 |\n"
    evaluation.write_eval(workdir, {"top1": 0.25})
    assert storage.read_json(f"{workdir}/{evaluation.EVAL_FILE}")["top1"] == 0.25
    mechanism.append_history(workdir, 10, {"loss": 2.0})
    mechanism.append_history(workdir, 20, {"loss": 1.0})
    mechanism.append_history(workdir, 20, {"loss": 0.5})  # After a resume: the last one wins.
    assert mechanism.read_history(workdir) == [
        {"step": 10, "loss": 2.0},
        {"step": 20, "loss": 0.5},
    ]
    maps = {"student": (np.eye(2), ["a", "b"], ["a", "b"])}
    cka_maps.save_cka_json(f"{workdir}/cka/maps.json", maps)
    loaded = cka_maps.load_cka_json(f"{workdir}/cka/maps.json")
    np.testing.assert_array_equal(loaded["student"][0], np.eye(2))
    model = f"{workdir}/student_distill/model"
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.read_metadata(model)
    storage.makedirs(f"{model}/variables")
    storage.write_json(f"{model}/{checkpoint.METADATA_FILE}", {"name": "x3d", "variant": "s"})
    assert checkpoint.read_metadata(model)["name"] == "x3d"
    assert "/bucket/runs/k400/results.json" in fake_gcs


def test_orbax_manager_gets_the_bucket_url_unchanged(fake_gcs, monkeypatch):
    """Orbax is handed the URL itself (no abspath folding it into "gs:/...") and makes
    the directory through epath. Orbax asks the real bucket whether it has a
    hierarchical namespace (google-cloud-storage, the `gcs` extra): answered here."""
    from orbax.checkpoint._src.path import gcs_utils

    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    manager = checkpoint_manager("gs://bucket/runs/k400/teacher_cnn/checkpoints")
    assert str(manager.directory) == "gs://bucket/runs/k400/teacher_cnn/checkpoints"
    assert storage.isdir("gs://bucket/runs/k400/teacher_cnn/checkpoints")
    assert manager.latest_step() is None
    manager.close()


def checkpoint_manager(path):
    from vkd_jax import checkpoint

    return checkpoint.checkpoint_manager(path, max_to_keep=1)
