"""Every engine the registry starts satisfies `app.workers.engine.Engine` (the only things
`WorkerServer` reads of an engine), checked on the classes, without loading a model."""

from __future__ import annotations

import inspect

import pytest

from app.workers import engine as engine_module
from app.workers.registry import WORKERS
from app.workers.server import load_engine_class


@pytest.mark.parametrize("worker", WORKERS, ids=lambda w: w.kind)
def test_every_engine_satisfies_the_engine_protocol(worker) -> None:
    cls = load_engine_class(worker.engine)
    assert cls.kind == worker.kind
    assert cls.request_types and all(hasattr(t, "__struct_config__") and t.__struct_config__.tag for t in cls.request_types)
    for name in ("describe", "handle", "audio_seconds"):
        member = getattr(cls, name, None)
        assert callable(member), f"{cls.__name__} lacks {name}()"
        wanted = list(inspect.signature(getattr(engine_module.Engine, name)).parameters)
        assert list(inspect.signature(member).parameters) == wanted, f"{cls.__name__}.{name} must take {wanted}"
    # `device` and `scheduler`: set in __init__ (scheduled engines) or on the class (plain ones).
    source = inspect.getsource(cls)
    for name in ("device", "scheduler"):
        assert hasattr(cls, name) or f"self.{name} = " in source, f"{cls.__name__} never sets {name}"
    if not hasattr(cls, "scheduler") or cls.scheduler is not None:  # a scheduled engine
        assert callable(getattr(cls, "prepare", None)), f"{cls.__name__} has a scheduler but no prepare()"
        assert list(inspect.signature(cls.prepare).parameters) == ["self", "request"]
