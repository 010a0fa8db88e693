"""The simulator's hot modules, and the policies it calls most, compiled to C extensions
with mypyc (mypy's compiler; black and mypy itself ship built with it): the same source,
the same results, several times faster — what an hour of a thousand replicas needs.

`build()` compiles HOT_MODULES into `.tide/native/<python tag>/`, with a manifest of their
digest; `activate()` makes the next imports of those modules load the build, only while
the digest still matches (an edited source falls back to the pure Python module, never a
stale build). Only a process that activates it (the simulator's benchmarks) runs
compiled code; the controller and the ingress import the policies as plain Python.

    python -m sim.native [--check]   # build (about 20 s); --check: compare with the sources
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# sim.cluster is the event loop, sim.replica the scheduler; the router runs per request
# and builds on the snapshot types.
HOT_MODULES = ("policies/snapshot.py", "policies/routing.py", "sim/sequence.py", "sim/cost_model.py",
               "sim/metrics.py", "sim/config.py", "sim/replica.py", "sim/cluster.py")
DATA_DIRS = ("sim/calibrations",)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class NativeBuild:
    directory: Path
    digest: str

    @property
    def modules(self) -> list[str]:
        return [m.removesuffix(".py").replace("/", ".") for m in HOT_MODULES]


def build_dir(root: Path = ROOT) -> Path:
    tag = sysconfig.get_config_var("SOABI") or f"py{sys.version_info.major}{sys.version_info.minor}"
    return root / ".tide" / "native" / tag


def source_digest(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for module in HOT_MODULES:
        digest.update(module.encode())
        digest.update((root / module).read_bytes())
    return digest.hexdigest()


def current_build(root: Path = ROOT) -> NativeBuild | None:
    """The build matching the sources now, if there is one."""
    directory = build_dir(root)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    digest = source_digest(root)
    return NativeBuild(directory, digest) if manifest.get("digest") == digest else None


def build(root: Path = ROOT, quiet: bool = False) -> NativeBuild:
    """Compiles HOT_MODULES (needs mypy and a C compiler); raises with mypyc's output if it fails."""
    existing = current_build(root)
    if existing is not None:
        return existing
    directory = build_dir(root)
    staging = directory.with_name(directory.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    for module in HOT_MODULES:
        (staging / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / module, staging / module)
    if not quiet:
        print(f"compiling {len(HOT_MODULES)} simulator modules with mypyc ...", flush=True)
    # The copies type-check against the rest of the project through MYPYPATH.
    env = {**os.environ, "MYPYPATH": str(root)}
    command = [sys.executable, "-m", "mypyc", "--explicit-package-bases", "--follow-imports=silent", *HOT_MODULES]
    done = subprocess.run(command, cwd=staging, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mypyc failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    # Keep only the extensions; the sources stay in the repository.
    shutil.rmtree(staging / "build", ignore_errors=True)
    shutil.rmtree(staging / ".mypy_cache", ignore_errors=True)
    for module in HOT_MODULES:
        (staging / module).unlink()
    # Data the modules find next to themselves (Path(__file__).parent / ...).
    for data in DATA_DIRS:
        (staging / data).symlink_to(root / data, target_is_directory=True)
    digest = source_digest(root)
    (staging / MANIFEST).write_text(json.dumps({"digest": digest, "modules": list(HOT_MODULES)}, indent=2) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return NativeBuild(directory, digest)


class _BuildFinder(importlib.abc.MetaPathFinder):
    """Finds the hot modules in the build, ahead of the source tree."""

    def __init__(self, found: NativeBuild):
        self.found = found
        self.modules = frozenset(found.modules)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.modules:
            return None
        stem = self.found.directory / fullname.replace(".", "/")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if stem.with_name(stem.name + suffix).exists():
                return importlib.util.spec_from_file_location(fullname, stem.with_name(stem.name + suffix))
        return None


def activate(root: Path = ROOT) -> NativeBuild | None:
    """Makes the next imports of the hot modules load the build, if it matches the sources.
    Call before anything imports them; returns None (pure Python) otherwise."""
    found = current_build(root)
    if found is None:
        return None
    loaded = [m for m in found.modules if m in sys.modules and not _compiled(sys.modules[m])]
    if loaded:
        raise RuntimeError(f"activate the native simulator before importing {', '.join(loaded)}")
    if not any(isinstance(f, _BuildFinder) for f in sys.meta_path):
        # The modules' shared runtime library is a top-level module of the build.
        sys.path.insert(0, str(found.directory))
        sys.meta_path.insert(0, _BuildFinder(found))
    return found


def is_active() -> bool:
    """Whether the simulator's event loop is the compiled one."""
    module = sys.modules.get("sim.cluster")
    return module is not None and _compiled(module)


def _compiled(module) -> bool:
    return not (getattr(module, "__file__", None) or "").endswith(".py")


def check(root: Path = ROOT) -> dict[str, dict]:
    """Runs sim.native_scenarios pure and compiled (each in its own process); raises if the
    results differ at all. Returns the scenarios' digests."""
    runs = []
    for flags in ([], ["--native"]):
        done = subprocess.run([sys.executable, "-m", "sim.native_scenarios", *flags], cwd=root,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"sim.native_scenarios {' '.join(flags)} failed:\n{done.stderr}")
        runs.append(json.loads(done.stdout))
    pure, compiled = runs
    differing = sorted(name for name in pure if pure[name] != compiled.get(name))
    if differing or pure.keys() != compiled.keys():
        raise AssertionError(f"the compiled simulator differs from the source in: {differing}")
    return pure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="then check it gives the pure modules' results")
    args = parser.parse_args()
    built = build()
    print(f"native simulator: {built.directory} ({len(HOT_MODULES)} modules, sources {built.digest[:12]})")
    if args.check:
        scenarios = check()
        print(f"same results compiled and pure in {len(scenarios)} scenarios: {', '.join(scenarios)}")


if __name__ == "__main__":
    main()
