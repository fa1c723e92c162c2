"""The Ray runtime environment for `ray job submit`: the project's dependencies and quiet settings.

`python experiments/run.py runtime-env` prints it as JSON for `--runtime-env-json`:

    ray job submit --working-dir . --runtime-env-json "$(python experiments/run.py runtime-env)" \\
        -- python experiments/run.py train --config my.yaml

The pip list is pyproject.toml's `[project].dependencies` minus Ray itself (the cluster's Ray
must stay the one the cluster runs; a runtime env that reinstalls Ray breaks the worker).
Ray builds that environment on top of the nodes' Python, so packages the image already holds
are not downloaded again. With `--image URI` the dependencies come from a pre-built image instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_runtime_env", "main", "project_requirements"]

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# Left out of the pip list: the cluster provides Ray.
ALWAYS_EXCLUDED = ("ray",)


def _dist_name(requirement: str) -> str:
    """'ray[default,train]>=2.60' -> 'ray' (PEP 503 normalised)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not m:
        raise ValueError(f"cannot read the package name of requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def project_requirements(pyproject: str | Path = PYPROJECT, exclude: tuple[str, ...] = ()) -> list[str]:
    """`[project].dependencies` of `pyproject`, without Ray and without the names in `exclude`."""
    p = Path(pyproject)
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # 3.10: the installed package's metadata holds the same list
        tomllib = None
    if tomllib is not None and p.is_file():
        deps = tomllib.loads(p.read_text())["project"]["dependencies"]
    else:
        from importlib.metadata import PackageNotFoundError, requires

        try:
            deps = [r for r in requires("rob_ray") or [] if "extra ==" not in r]
        except PackageNotFoundError:
            raise FileNotFoundError(f"{p} not found: run from a rob_ray checkout, or pass --image") from None
    drop = {_dist_name(n) for n in (*ALWAYS_EXCLUDED, *exclude)}
    return [d for d in deps if _dist_name(d) not in drop]


def build_runtime_env(pip: bool = True, image_uri: str | None = None, exclude: tuple[str, ...] = (),
                      pyproject: str | Path = PYPROJECT) -> dict[str, Any]:
    """A Ray `runtime_env` dict: `env_vars` always; `pip` (from pyproject) or `image_uri`."""
    from rob_ray.train.launch import QUIET_ENV

    env: dict[str, Any] = {"env_vars": dict(QUIET_ENV)}
    if image_uri:
        env["image_uri"] = image_uri  # Ray allows only env_vars beside an image
    elif pip:
        env["pip"] = {"packages": project_requirements(pyproject, exclude), "pip_check": False}
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="experiments/run.py runtime-env",
                                description="print the runtime_env JSON for `ray job submit --runtime-env-json`")
    p.add_argument("--no-pip", action="store_true", help="env_vars only (the nodes already have the dependencies)")
    p.add_argument("--image", default=None, help="a pre-built container image holding the dependencies")
    p.add_argument("--exclude", nargs="*", default=[], help="packages the nodes already have, e.g. torch torchvision")
    args = p.parse_args(argv)
    print(json.dumps(build_runtime_env(pip=not args.no_pip, image_uri=args.image, exclude=tuple(args.exclude))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
