"""Instances built from real routing traces (in progress; see slimjax.traces)."""


def instance_from_trace(*args, **kwargs):
    raise NotImplementedError("instance_from_trace: not implemented yet")
