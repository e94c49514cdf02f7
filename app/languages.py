"""The translation language table: Reflector's codes and each model family's code for them.

The table ships as ``config/languages.tsv`` (its header comment explains the columns). A
model family names languages its own way: M2M100 ``__fr__``, NLLB ``fra_Latn``, MADLAD-400
``<2fr>``, OPUS-MT (Marian) ``fr``. This module only reads the table; which languages a
loaded model really has is decided by the translation worker against the model's vocabulary.
No heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

FAMILIES = ("m2m100", "nllb", "madlad", "marian")
TABLE_PATH = Path(__file__).resolve().parent.parent / "config" / "languages.tsv"


@dataclass(frozen=True)
class Language:
    """One Reflector language.

    `codes` maps a family to its code for this language (absent: the family lacks it);
    `approximate` lists the families whose code is only the macrolanguage (e.g. Arabic
    for Egyptian Arabic).
    """

    code: str
    name: str
    codes: dict[str, str]
    approximate: frozenset[str] = frozenset()


def language_token(family: str, code: str) -> str:
    """The vocabulary token that names language `code` in a model of `family`.

    Marian models without language tokens never use theirs; the ``>>xx<<`` form is what
    multi-target OPUS-MT models put first in the source. Raises KeyError for an unknown family.
    """
    return {
        "m2m100": f"__{code}__",
        "nllb": code,
        "madlad": f"<2{code}>",
        "marian": f">>{code}<<",
    }[family]


def parse_table(text: str) -> dict[str, Language]:
    """Parse the TSV `text` (see ``config/languages.tsv``) into languages by Reflector code.

    Raises ValueError naming the line for a malformed row or a repeated code.
    """
    languages: dict[str, Language] = {}
    header: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if header is None:
            header = fields
            missing = {"code", "name", *FAMILIES} - set(header)
            if missing:
                raise ValueError(f"line {number}: the header lacks {', '.join(sorted(missing))}")
            continue
        if len(fields) != len(header):
            raise ValueError(f"line {number}: {len(fields)} fields, expected {len(header)}")
        row = dict(zip(header, (field.strip() for field in fields)))
        code = row["code"]
        if code in languages:
            raise ValueError(f"line {number}: code {code!r} appears twice")
        codes, approximate = {}, set()
        for family in FAMILIES:
            value = row[family]
            if value in ("", "-"):
                continue
            if value.endswith("~"):
                value = value[:-1]
                approximate.add(family)
            codes[family] = value
        languages[code] = Language(code, row["name"], codes, frozenset(approximate))
    return languages


@cache
def load_table(path: Path = TABLE_PATH) -> dict[str, Language]:
    """The shipped table (cached); raises OSError/ValueError when it is missing or malformed."""
    return parse_table(path.read_text(encoding="utf-8"))
