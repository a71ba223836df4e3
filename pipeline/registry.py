"""Registered models logged before the serving/ folder existed pickle their pyfunc class
under this module's name; this alias lets MLflow unpickle them, so those champions keep
scoring. New registrations name `pipeline.serving.registry`."""

from pipeline.serving.registry import RelgraphModel

__all__ = ["RelgraphModel"]
