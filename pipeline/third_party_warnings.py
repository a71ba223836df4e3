"""The one list of warnings raised inside third-party code that relgraph cannot change,
each with its reason. Everything else our code triggers is fixed where it starts, and
tests/test_warnings.py turns every warning into an error with only these excepted.

`ignore_third_party_warnings()` installs the filters (the `relgraph` command and the
code location call it); the entries are plain `warnings` filters, matched on the
message and on the module that calls `warnings.warn`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class ThirdPartyWarning:
    message: str        # regex matched at the start of the warning's message
    category: type[Warning]
    module: str         # regex matched against the module that warns
    reason: str


THIRD_PARTY: tuple[ThirdPartyWarning, ...] = (
    ThirdPartyWarning(
        r"`torch.jit.script` is deprecated", DeprecationWarning, r"torch\.jit",
        "torch_geometric scripts some of its modules at import time; PyG, not relgraph, "
        "calls torch.jit.script"),
    ThirdPartyWarning(
        r".*Any type hint is inferred as AnyType", UserWarning, r"mlflow\.",
        "importing mlflow.pyfunc builds the schema of MLflow's own ResponsesAgent types, "
        "whose fields are typed Any (mlflow/types/responses.py)"),
    ThirdPartyWarning(
        r"The ``noload`` loader strategy is deprecated", DeprecationWarning, r"mlflow\.",
        "MLflow's SQL tracking store queries runs with SQLAlchemy's noload() "
        "(mlflow/store/tracking/sqlalchemy_store.py)"),
)


def ignore_third_party_warnings() -> None:
    """Ignore exactly the warnings of THIRD_PARTY (on top of the current filters)."""
    for w in THIRD_PARTY:
        warnings.filterwarnings("ignore", message=w.message, category=w.category, module=w.module)
