"""One error registry: every `ServiceError` lives in app/errors.py and crosses the socket by name."""

from __future__ import annotations

import importlib
import pkgutil

import app
from app import errors


def _every_app_module() -> None:
    """Import every module of the app package (model libraries are imported lazily)."""
    for module in pkgutil.walk_packages(app.__path__, "app."):
        importlib.import_module(module.name)


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_service_error_is_defined_and_listed_in_the_registry() -> None:
    _every_app_module()
    every = _subclasses(errors.ServiceError)
    outside = sorted(f"{cls.__module__}.{cls.__name__}" for cls in every if cls.__module__ != "app.errors")
    assert not outside, f"ServiceError subclasses outside app/errors.py: {outside}"
    assert set(errors.FAILURE_KINDS.values()) == every | {errors.ServiceError}
    assert all(name == cls.__name__ for name, cls in errors.FAILURE_KINDS.items())


def test_a_failure_is_rebuilt_as_its_class_with_its_status() -> None:
    for name, cls in errors.FAILURE_KINDS.items():
        rebuilt = errors.from_failure(name, "why", 7)
        assert type(rebuilt) is cls and rebuilt.status == cls.status
        assert (rebuilt.detail, rebuilt.retry_after) == ("why", 7)
    assert errors.from_failure("ModelNotFound", "x").status == 503


def test_an_unknown_kind_is_a_worker_failure() -> None:
    unknown = errors.from_failure("SomethingNewer", "detail")
    assert type(unknown) is errors.WorkerFailed and unknown.status == 500


def test_failures_come_in_families_and_one_function_makes_every_reply() -> None:
    from app.workers.server import failure_from

    assert issubclass(errors.Cancelled, errors.Unavailable) and errors.Cancelled().status == 503
    assert all(issubclass(cls, errors.ClientFailure) for cls in (errors.BadRequest, errors.InvalidAudio, errors.PayloadTooLarge))
    assert all(issubclass(cls, errors.UpstreamFailure) for cls in (errors.SourceNotFound, errors.UpstreamError, errors.UpstreamTimeout))
    assert all(issubclass(cls, errors.WorkerFailure) for cls in (errors.Unavailable, errors.WorkerFailed, errors.ModelNotFound))
    assert failure_from(errors.PayloadTooLarge("big"), "audio").kind == "PayloadTooLarge"
    assert failure_from(FileNotFoundError("gone"), "audio", cancelled=True).kind == "Cancelled"
    failed = failure_from(ValueError("transcript text here"), "whisper")
    assert (failed.kind, failed.detail) == ("WorkerFailed", "the whisper worker failed: ValueError")  # no message text
