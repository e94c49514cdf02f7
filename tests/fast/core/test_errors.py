"""One error registry: every `ServiceError` lives in app/errors.py and crosses the socket by name."""

from __future__ import annotations

import ast
from pathlib import Path

import app
from app import errors


def _error_classes_outside_errors_module() -> list[str]:
    """Classes anywhere in app/ but app/errors.py that derive from a `ServiceError` class,
    found by reading the source (importing every module would load the model libraries)."""
    known = {cls.__name__ for cls in _subclasses(errors.ServiceError) | {errors.ServiceError}}
    found: list[str] = []
    trees = {
        path: ast.parse(path.read_text())
        for path in Path(app.__file__).parent.rglob("*.py")
        if path.name != "errors.py" or path.parent != Path(app.__file__).parent
    }
    grew = True
    while grew:  # a subclass of a subclass defined outside counts too
        grew = False
        for path, tree in trees.items():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in known:
                    bases = {ast.unparse(base).rpartition(".")[2] for base in node.bases}
                    if bases & known:
                        known.add(node.name)
                        found.append(f"{path.name}:{node.name}")
                        grew = True
    return found


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_service_error_is_defined_and_listed_in_the_registry() -> None:
    outside = _error_classes_outside_errors_module()
    assert not outside, f"ServiceError subclasses outside app/errors.py: {outside}"
    every = _subclasses(errors.ServiceError)
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
