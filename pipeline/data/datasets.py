"""A dataset from a path: a spec file (YAML) or a RelBench 3 folder.

What every entry point (the `relgraph` command, the code location, a notebook) calls
with a path the user gave; both forms become the same `DatasetSpec`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.relbench_folder import is_relbench_folder, spec_from_relbench_folder
from pipeline.data.spec import DatasetSpec, SpecError, load_spec


def load_dataset(path: str | Path) -> DatasetSpec:
    """The dataset at `path`: a spec file, or a directory holding RelBench's `manifest.yaml`."""
    path = Path(path)
    if path.is_dir():
        if is_relbench_folder(path):
            return spec_from_relbench_folder(path)
        raise SpecError(f"{path}: a directory, but not a RelBench folder (no manifest.yaml); "
                        "give a dataset spec file (.yaml) or a RelBench 3 folder")
    return load_spec(path)
