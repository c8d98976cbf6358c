"""Writes constraints.txt: the exact versions installed now of everything vkd_jax's
core and its extras pull in (the transitive closure of their requirements), vkd_jax
itself excluded. Run in the environment CI's numbers come from:

  python tools/freeze_constraints.py --extras train,test,torch,export,gcs > constraints.txt

`gpu` and `tpu` are left out: their jaxlib plugins install only on those machines, and
their `jax` pin is the same as the core's.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re

import tomllib
from packaging.requirements import Requirement

# Local build tags (torch's "+cpu") name an index other than PyPI; the constraint keeps
# the release, which PyPI and the PyTorch CPU index both serve.
_LOCAL = re.compile(r"\+.*$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _own_requirements(extras: list[str]) -> list[Requirement]:
    """The core's and the extras' requirements, read from pyproject.toml (the installed
    metadata may be older), with self-references (vkd_jax[train]) expanded."""
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    reqs, todo, done = [Requirement(r) for r in project["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        for line in project["optional-dependencies"][extra]:
            req = Requirement(line)
            if _norm(req.name) == "vkd-jax":
                todo.extend(req.extras)
            else:
                reqs.append(req)
    return reqs


def closure(extras: list[str]) -> dict[str, str]:
    seen: dict[str, str] = {}
    todo = _own_requirements(extras)
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # An optional requirement for another platform.
        if name in seen:
            continue
        seen[name] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(
                sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})
            ):
                if _norm(sub.name) not in seen:
                    todo.append(sub)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="train,test,torch,export,gcs")
    args = parser.parse_args()
    pins = closure(args.extras.split(","))
    print("# The exact set CI tests (tools/freeze_constraints.py): pip install -c constraints.txt")
    for name in sorted(pins):
        print(f"{name}=={_LOCAL.sub('', pins[name])}")


if __name__ == "__main__":
    main()
