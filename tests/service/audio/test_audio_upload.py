"""PUT uploads to presigned URLs: Content-Length, retries, errors, CA trust; real SeaweedFS."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.errors import UpstreamError
from app.settings import Settings
from testing.seaweedfs import put

pytest_plugins = ["testing.seaweedfs"]  # the store servers and the `payload` fixture


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state")


def test_seaweedfs_presigned_put(settings, seaweed, payload):
    size = put(settings, seaweed.presign_put("uploads/ok.webm"), payload)
    assert size == payload.stat().st_size
    assert seaweed.get("uploads/ok.webm") == payload.read_bytes()
    assert seaweed.head("uploads/ok.webm")["ContentType"] == "audio/webm"


def test_seaweedfs_expired_and_wrong_signature(settings, seaweed, payload):
    expired = seaweed.presign_put("uploads/expired.webm", expires=1)
    time.sleep(1.5)
    with pytest.raises(
        UpstreamError,
        match=r"^uploading the result \(PUT to 127\.0\.0\.1:\d+\) failed: HTTP 403 Forbidden \(AccessDenied: Request has expired\)$",
    ):
        put(settings, expired, payload)
    tampered = seaweed.presign_put("uploads/bad.webm").replace("X-Amz-Signature=", "X-Amz-Signature=0")
    with pytest.raises(UpstreamError, match=r"failed: HTTP 403 Forbidden \(SignatureDoesNotMatch: "):
        put(settings, tampered, payload)
