"""Reflector's own language list (tests/fixtures/reflector-languages.tsv, copied from
shared/reflector-languages.tsv): the codes its server offers for translation."""

from __future__ import annotations

from pathlib import Path

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reflector-languages.tsv"


def reflector_codes() -> list[str]:
    """Reflector's language codes, in the file's order."""
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0] for line in lines if line.strip() and not line.startswith("#")]
