"""Checks the environment the relgraph image runs in; deploy/Dockerfile runs it as a build step.

1. imports lightgbm and torch by name (their shared libraries load at import; elsewhere
   they are imported lazily, so a missing system library would only show in a step pod)
   and loads the Kubernetes code location, as the code server does;
2. resolves every shared library of the installed wheels with the system's loader (ldd):
   a library that a wheel links against and that neither a wheel nor the system provides
   fails the build, naming the wheel that needs it (the NVIDIA driver's own libraries are
   exempt: the GPU node's container runtime mounts them);
3. with --commit SHA: the commit that the pipeline logs to MLflow is SHA.

`--derive` prints, instead, which system libraries the wheels link against and the Debian
package of each (dpkg -S, on Debian as the image is): deploy/system-packages.txt is that
list less what every Debian image has (BASE_PACKAGES).

  python deploy/check_image.py [--commit SHA] [--derive] [--no-import]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# In every Debian image (python:3.11-slim too): the C library, zlib (both required by
# dpkg) and the C++ runtime that apt itself links against.
BASE_PACKAGES = {"libc6", "zlib1g", "libgcc-s1", "libstdc++6"}
# Mounted into GPU pods from the node's driver by the NVIDIA container runtime.
DRIVER_LIBRARY = re.compile(r"^lib(cuda|nvidia-[a-z0-9-]+|nvcuvid|nvoptix)\.so(\.\d+)*$")
_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(not found|\S+)")


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["platlib"])


def shared_libraries(site: Path) -> list[Path]:
    """The ELF shared objects under `site`."""
    found = []
    for path in site.rglob("*.so*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    found.append(path)
    return sorted(found)


def ldd(path: Path) -> dict[str, str | None]:
    """soname -> the file the loader picks for it (None: not found)."""
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
    return {m[1]: None if m[2] == "not found" else m[2]
            for m in map(_LDD_LINE.match, out.splitlines()) if m}


def system_libraries(site: Path) -> dict[str, dict]:
    """The sonames the wheels take from outside themselves: soname -> {"path": the system's
    file (None where none is found), "needed_by": [files under site]}."""
    libs = shared_libraries(site)
    bundled = {p.name for p in libs}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        resolved = dict(zip(libs, pool.map(ldd, libs)))
    out: dict[str, dict] = {}
    for lib, deps in resolved.items():
        for soname, target in deps.items():
            inside = target is not None and Path(target).resolve().is_relative_to(site.resolve())
            # a wheel's private copy that its loader finds through the parent's RPATH
            if inside or (target is None and soname in bundled):
                continue
            entry = out.setdefault(soname, {"path": target, "needed_by": []})
            entry["needed_by"].append(str(lib.relative_to(site)))
    return out


def debian_package(path: str) -> str | None:
    """The Debian package that installed `path` (with or without the /usr merge)."""
    real = os.path.realpath(path)
    for candidate in dict.fromkeys([real, real.removeprefix("/usr"), "/usr" + real, path]):
        out = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":", 1)[0].strip()
    return None


def missing(libs: dict[str, dict]) -> dict[str, list[str]]:
    """Sonames nothing provides (the driver's aside) -> the files that need them."""
    return {so: e["needed_by"] for so, e in libs.items()
            if e["path"] is None and not DRIVER_LIBRARY.match(so)}


def load_code_location() -> None:
    import lightgbm  # noqa: F401  (lib_lightgbm.so: libgomp.so.1)
    import torch  # noqa: F401

    sys.path.insert(0, str(ROOT))
    location = runpy.run_path(str(ROOT / "deploy" / "k8s_definitions.py"))
    defs = location["defs"]
    jobs = [j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")]
    print(f"code location: {len(defs.resolve_asset_graph().get_all_asset_keys())} assets, "
          f"jobs {', '.join(jobs)}; torch {torch.__version__} (CUDA {torch.version.cuda})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=site_packages())
    parser.add_argument("--derive", action="store_true")
    parser.add_argument("--no-import", action="store_true")
    parser.add_argument("--commit", default=None)
    args = parser.parse_args(argv)

    libs = system_libraries(args.site)
    if args.derive:
        rows = {so: {**e, "package": e["path"] and debian_package(e["path"])}
                for so, e in sorted(libs.items())}
        print(json.dumps(rows, indent=1))
        return 0
    problems = [f"{so} (needed by {', '.join(sorted(by)[:3])}) is in no wheel and not on the "
                f"system: add its Debian package to deploy/system-packages.txt"
                for so, by in sorted(missing(libs).items())]
    if not args.no_import:
        load_code_location()
    if args.commit is not None:
        from pipeline.training.tracking import git_commit

        logged = git_commit()
        if logged != args.commit:
            problems.append(f"the pipeline logs commit {logged!r}, not the build's {args.commit!r}")
    for line in problems:
        print(f"check_image: {line}", file=sys.stderr)
    print(f"check_image: {len(libs)} system libraries linked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
