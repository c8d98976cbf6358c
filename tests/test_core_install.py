"""The core (``pip install vkd_jax``, no extras) works without TensorFlow and its
company, and a module that needs the ``train`` extra says so in one line.

The train extra's packages are hidden from a fresh interpreter by a meta-path finder
(this environment has them installed); CI also installs the core alone in a fresh
environment and runs tools/check_core_install.py there (.ci/run).
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_ONLY = ("tensorflow", "tensorflow_datasets", "clu", "av", "matplotlib", "tqdm", "PIL")
_BLOCK = (
    "import sys\n"
    "class _Absent:\n"
    f"    names = {TRAIN_ONLY!r}\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in self.names:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "        return None\n"
    "sys.meta_path.insert(0, _Absent())\n"
)


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


def test_core_computes_the_stored_values_without_the_train_extra():
    out = _run(
        "import runpy\n"
        "sys.argv = ['check_core_install.py']\n"
        "runpy.run_path('tools/check_core_install.py', run_name='__main__')\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "values match, no TensorFlow" in out.stdout, out.stdout


def test_core_modules_import_without_the_train_extra():
    out = _run(
        "import importlib, pkgutil\n"
        "import vkd_jax.losses, vkd_jax.models, vkd_jax.cka, vkd_jax.convert\n"
        "import vkd_jax.stages, vkd_jax.train_step, vkd_jax.checkpoint, vkd_jax.sharding\n"
        "import vkd_jax.evaluation, vkd_jax.errors\n"
        "from vkd_jax import models\n"
        "for name in models.families():\n"
        "    models.family_module(name)\n"
        "for pkg in (vkd_jax.convert, vkd_jax.losses):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "print('OK')\n"
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_a_module_of_the_train_extra_names_the_extra_in_one_line():
    for module in ("vkd_jax.train", "vkd_jax.data.pipeline", "vkd_jax.modes", "vkd_jax.pretrain"):
        out = _run(
            "from vkd_jax import errors\n"
            "try:\n"
            f"    import {module}\n"
            "except errors.MissingExtraError as e:\n"
            "    print('MISSING', e)\n"
        )
        assert out.returncode == 0, out.stderr[-3000:]
        lines = out.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("MISSING "), (module, out.stdout)
        assert "pip install 'vkd_jax[train]'" in lines[0], lines[0]


def test_a_figure_without_the_extra_names_it():
    out = _run(
        "import numpy as np\n"
        "from vkd_jax import errors, evaluation\n"
        "try:\n"
        "    evaluation.plot_confusion(np.eye(2), ['a', 'b'], 'x.png')\n"
        "except errors.MissingExtraError as e:\n"
        "    print('MISSING', e)\n"
    )
    assert "MISSING vkd_jax.evaluation needs matplotlib" in out.stdout, out.stderr[-3000:]


def test_the_command_line_without_the_extra_is_one_line(tmp_path):
    out = _run(
        "import runpy\n"
        "sys.argv = ['main', '--config', 'configs/default.py', '--workdir', sys.argv[1]]\n"
        "runpy.run_module('vkd_jax.main', run_name='__main__')\n",
        str(tmp_path / "run"),
    )
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("vkd_jax: error: ") and "pip install 'vkd_jax[train]'" in last, last
    assert "Traceback" not in out.stderr
