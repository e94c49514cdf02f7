"""Run a script with only the GPU machine's packages importable, as on that bare machine.

    python -m testing.bare_machine --allow NAME,NAME -- SCRIPT ARGS...

Top-level modules (and, for namespace packages such as ``pyannote`` or ``opentelemetry``,
their second level) belonging to an installed distribution that is neither in
tests/fixtures/gpu-machine-packages.txt nor in ``--allow`` raise ModuleNotFoundError,
naming the distribution. So a rehearsal of scripts/device_check.py in this virtual
environment fails where the GPU machine would lack a package its carried wheels do not bring.
The standard library and this project stay importable. Versions are not checked: this
environment's versions differ from the machine's, and `ENVIRONMENT_EXTRAS` names what this
environment imports because of them, which the machine does not need.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.metadata
import re
import runpy
import sys
from pathlib import Path

PACKAGES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gpu-machine-packages.txt"
# huggingface_hub 2.x here imports httpx2, httpcore2 and truststore (the machine's 1.x uses
# httpx, which it has); transformers imports `kernels` when it finds it installed, as here.
ENVIRONMENT_EXTRAS = ("httpx2", "httpcore2", "truststore", "kernels")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def machine_packages() -> set[str]:
    lines = PACKAGES.read_text().splitlines()
    return {normalise(line) for line in lines if line.strip() and not line.startswith("#")}


class Blocker(importlib.abc.MetaPathFinder):
    """Refuses modules whose distributions are not `allowed` (normalised names)."""

    def __init__(self, allowed: set[str]) -> None:
        self.allowed = allowed
        self.owners: dict[str, set[str]] = {}
        for dist in importlib.metadata.distributions():
            name = dist.metadata["Name"]
            for line in (dist.read_text("RECORD") or "").splitlines():
                parts = line.split(",", 1)[0].split("/")
                if parts[0].endswith((".dist-info", ".egg-info")) or parts[0] in ("..", "bin", ""):
                    continue
                top = parts[0].removesuffix(".py").split(".")[0]
                self.owners.setdefault(top, set()).add(name)
                if len(parts) > 1:
                    self.owners.setdefault(f"{top}.{parts[1].removesuffix('.py').split('.')[0]}", set()).add(name)

    def find_spec(self, name, path=None, target=None):
        """Raise for a refused module; else None, and the next finder finds it. Only
        top-level packages and their children are decided on."""
        owners = self.owners.get(name) if name.count(".") <= 1 else None
        if owners and not any(normalise(owner) in self.allowed for owner in owners):
            raise ModuleNotFoundError(f"{name} ({', '.join(sorted(owners))}) is not on the GPU machine", name=name)


def install(extra: set[str]) -> None:
    """Block every distribution but the machine's, `extra` and this project's from now on."""
    allowed = machine_packages() | {normalise(name) for name in (*extra, *ENVIRONMENT_EXTRAS, "reflector-gpu")}
    sys.meta_path.insert(0, Blocker(allowed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow", default="", help="comma-separated distributions the run carries")
    parser.add_argument("script", type=Path)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    install({name for name in args.allow.split(",") if name})
    sys.argv = [str(args.script), *args.args]
    runpy.run_path(str(args.script), run_name="__main__")


if __name__ == "__main__":
    main()
