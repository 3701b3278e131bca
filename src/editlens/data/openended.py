"""Open-ended questions, each asked in several paraphrases, with a short reference answer.

Used in: Chapter 1 and 2 (consistency of free-form generations: generate an answer to every
paraphrase and score their agreement with :func:`editlens.sentence.agreement`). Described in
book/data.md. The json is hand-authored by the project (MIT).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent / "openended.json"
MIN_PARAPHRASES = 3


@dataclass(frozen=True)
class OpenEndedQuestion:
    """One question: ``paraphrases`` ask the same thing; ``reference`` is a short correct answer."""

    id: str
    paraphrases: tuple[str, ...]
    reference: str


def load_openended(path: str | os.PathLike | None = None) -> list[OpenEndedQuestion]:
    """All questions, in file order. Malformed records raise ``ValueError`` naming index and field.

    Used in: Chapter 1 and 2.
    """
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.is_file():
        raise FileNotFoundError(f"Open-ended question file not found: {p}")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{p}: not valid JSON ({err})") from err
    records = doc.get("questions") if isinstance(doc, dict) else None
    if not isinstance(records, list):
        raise ValueError(f"{p}: expected a top-level object with a 'questions' list")
    out, seen = [], set()
    for i, rec in enumerate(records):
        where = f"{p}, question {i}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
        for field in ("id", "paraphrases", "reference"):
            if field not in rec:
                raise ValueError(f"{where}: missing field {field!r}")
        qid, paras, ref = rec["id"], rec["paraphrases"], rec["reference"]
        if not isinstance(qid, str) or not qid:
            raise ValueError(f"{where}: field 'id' must be a non-empty string")
        if qid in seen:
            raise ValueError(f"{where}: duplicate id {qid!r}")
        seen.add(qid)
        if (not isinstance(paras, list) or len(paras) < MIN_PARAPHRASES
                or not all(isinstance(s, str) and s.strip() for s in paras)):
            raise ValueError(f"{where} ({qid}): field 'paraphrases' must be a list of at least "
                             f"{MIN_PARAPHRASES} non-empty strings")
        if len(set(paras)) != len(paras):
            raise ValueError(f"{where} ({qid}): field 'paraphrases' has duplicates")
        if not isinstance(ref, str) or not ref.strip():
            raise ValueError(f"{where} ({qid}): field 'reference' must be a non-empty string")
        out.append(OpenEndedQuestion(id=qid, paraphrases=tuple(paras), reference=ref))
    return out
