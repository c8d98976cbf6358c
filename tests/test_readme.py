"""The README's Python example runs as written, and its commands match CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", _readme(), flags=re.S)
    assert blocks, "README has no python example"
    out = subprocess.run(
        [sys.executable, "-c", blocks[0]], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    value = float(out.stdout.strip().splitlines()[-1])
    assert value == value and value > 0  # A finite, positive total loss.


def test_ci_runs_the_readme_test_command():
    bash_blocks = re.findall(r"```bash\n(.*?)```", _readme(), flags=re.S)
    test_command = next(b.strip() for b in bash_blocks if "pytest" in b)
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    for part in test_command.split(" && "):
        assert part in ci, f"CI does not run the README's {part!r}"
