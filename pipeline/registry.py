"""Registered models logged before the serving/ folder existed pickle their pyfunc class
under this module's name; this alias lets MLflow unpickle them, so those champions keep
scoring (tests/test_registry.py registers one that way). New registrations are MLflow
models from code (pipeline/serving/pyfunc_model.py) and pickle nothing."""

from pipeline.serving.registry import RelgraphModel

__all__ = ["RelgraphModel"]
