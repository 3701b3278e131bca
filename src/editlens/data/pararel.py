"""Loaders for the official ParaRel files (Elazar et al., TACL 2021; github.com/yanaiela/pararel).

Used in: Chapter 1 and 2, as a drop-in replacement for :func:`editlens.data.load_paraphrases`
(same :class:`ParaphraseQuery` list). Needs the ParaRel repository checked out locally:

- ``patterns_dir``: ``data/pattern_data/graphs_json/`` -- one ``P<id>.jsonl`` per relation, lines
  like ``{"pattern": "[X] is a subclass of [Y].", "lemma": ..., "extended_lemma": ..., "tense": ...}``
- ``tuples_dir``: ``data/trex_lms_vocab/`` -- one ``P<id>.jsonl`` per relation, lines like
  ``{"sub_label": "Germany", "obj_label": "Berlin", "uuid": ...}``

Conversion rules (documented in book/data.md):

- A pattern becomes a template by cutting it before ``[Y]`` when ``[Y]`` ends the pattern (only
  a final ``.`` and spaces may follow). Patterns with text after ``[Y]`` cannot be asked as
  "the answer comes next" and are **skipped, and reported**: :func:`read_pararel` returns them,
  :func:`load_pararel` emits one ``UserWarning`` with the count per relation.
- Runs of whitespace are collapsed to one space (the official files contain ``"[X],  a type of"``);
  templates identical after that are kept once.
- Candidates of a relation are all its distinct ``obj_label`` values (ParaRel's own practice).
- Relations are those with both a patterns and a tuples file; ids present in only one folder
  are reported the same way as skipped patterns.
- Malformed input (bad JSON, a missing or non-string field, a pattern without exactly one
  ``[X]`` and one ``[Y]``) raises ``ValueError`` naming the file, the line and the field; nothing
  is returned partially.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from editlens.data.paraphrases import (
    SCHEMES,
    SEED,
    SPLITS,
    ParaphraseQuery,
    _check_choice,
    assign_relation_splits,
    assign_subject_splits,
    fill_template,
)

_Y_AT_END = re.compile(r"^(?P<head>.*?)\s*\[Y\]\s*\.?\s*$", re.DOTALL)


@dataclass(frozen=True)
class SkippedPattern:
    """A ParaRel pattern that could not become a template, and why."""

    relation_id: str
    file: str
    line: int
    pattern: str
    reason: str


@dataclass
class ParaRelLoad:
    """Everything :func:`read_pararel` read: the queries, the relations, and what was left out."""

    queries: list[ParaphraseQuery]
    relations: dict[str, dict]
    skipped: list[SkippedPattern] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # ids with only a patterns or only a tuples file

    def report(self) -> str:
        """One line per relation with skipped patterns, plus unmatched ids; '' when nothing was left out."""
        lines = []
        per_rel: dict[str, int] = {}
        for s in self.skipped:
            per_rel[s.relation_id] = per_rel.get(s.relation_id, 0) + 1
        if per_rel:
            lines.append(f"ParaRel: skipped {len(self.skipped)} pattern(s) that do not end with [Y]: "
                         + ", ".join(f"{r}: {n}" for r, n in sorted(per_rel.items())))
        if self.unmatched:
            lines.append(f"ParaRel: {len(self.unmatched)} relation(s) lack a patterns or a tuples file: "
                         + ", ".join(self.unmatched))
        return "\n".join(lines)


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(1-based line number, object) for each non-blank line; ValueError naming file and line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {lineno}: invalid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise ValueError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return rows


def _string_field(obj: dict, name: str, path: Path, lineno: int) -> str:
    if name not in obj:
        raise ValueError(f"{path}, line {lineno}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{path}, line {lineno}: field {name!r} must be a non-empty string, got {value!r}")
    return value


def pattern_to_template(pattern: str) -> str | None:
    """``"The capital of [X] is [Y] ."`` -> ``"The capital of [X] is"``; None when [Y] is not at the end.

    Whitespace runs are collapsed; raises ValueError unless there is exactly one [X] and one [Y].
    """
    if pattern.count("[X]") != 1 or pattern.count("[Y]") != 1:
        raise ValueError("pattern must contain exactly one [X] and one [Y]")
    text = " ".join(pattern.split())
    m = _Y_AT_END.match(text)
    if m is None:
        return None
    head = m.group("head").strip()
    if "[X]" not in head or head == "[X]":
        return None  # nothing but the subject before the object: not a question
    return head


def _relation_ids(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"ParaRel folder not found: {folder}")
    return {p.stem: p for p in sorted(folder.glob("*.jsonl"))}


def read_pararel(
    patterns_dir: str | os.PathLike,
    tuples_dir: str | os.PathLike,
    relations: list[str] | None = None,
    *,
    seed: int = SEED,
) -> ParaRelLoad:
    """Read ParaRel patterns and tuples; every query is returned (``split`` = subjects scheme).

    ``relations``: ids such as ``["P36", "P37"]``; each must have both files (else
    FileNotFoundError). None: every id with both files; the others are listed in ``unmatched``.
    """
    pat_files = _relation_ids(Path(patterns_dir))
    tup_files = _relation_ids(Path(tuples_dir))
    if relations is None:
        ids = sorted(set(pat_files) & set(tup_files))
        unmatched = sorted(set(pat_files) ^ set(tup_files))
    else:
        ids = list(dict.fromkeys(relations))
        for rid in ids:
            if rid not in pat_files:
                raise FileNotFoundError(f"ParaRel relation {rid!r}: no {rid}.jsonl in {patterns_dir}")
            if rid not in tup_files:
                raise FileNotFoundError(f"ParaRel relation {rid!r}: no {rid}.jsonl in {tuples_dir}")
        unmatched = []

    rels: dict[str, dict] = {}
    facts: dict[str, list[tuple[str, str]]] = {}
    skipped: list[SkippedPattern] = []
    for rid in ids:
        ppath = pat_files[rid]
        templates: list[str] = []
        for lineno, obj in _read_jsonl(ppath):
            pattern = _string_field(obj, "pattern", ppath, lineno)
            try:
                template = pattern_to_template(pattern)
            except ValueError as err:
                raise ValueError(f"{ppath}, line {lineno}: field 'pattern' {pattern!r}: {err}") from err
            if template is None:
                reason = ("[Y] is not at the end" if _Y_AT_END.match(" ".join(pattern.split())) is None
                          else "no text besides [X] before [Y]")
                skipped.append(SkippedPattern(rid, str(ppath), lineno, pattern, reason))
            elif template not in templates:
                templates.append(template)
        tpath = tup_files[rid]
        pairs: list[tuple[str, str]] = []
        for lineno, obj in _read_jsonl(tpath):
            pair = (_string_field(obj, "sub_label", tpath, lineno), _string_field(obj, "obj_label", tpath, lineno))
            if pair not in pairs:
                pairs.append(pair)
        if not templates:
            unmatched.append(f"{rid} (no usable pattern)")
            continue
        rels[rid] = {"name": rid, "templates": templates,
                     "candidates": sorted({o for _, o in pairs}), "wikidata": rid}
        facts[rid] = pairs

    subject_split = assign_subject_splits(((r, s) for r, ps in facts.items() for s, _ in ps), seed=seed)
    queries = [
        ParaphraseQuery(
            relation_id=rid,
            subject=s,
            object=o,
            prompts=tuple(fill_template(t, s) for t in rels[rid]["templates"]),
            candidates=tuple(rels[rid]["candidates"]),
            split=subject_split[s],
        )
        for rid, pairs in facts.items()
        for s, o in pairs
    ]
    return ParaRelLoad(queries=queries, relations=rels, skipped=skipped, unmatched=unmatched)


def load_pararel(
    patterns_dir: str | os.PathLike,
    tuples_dir: str | os.PathLike,
    relations: list[str] | None = None,
    *,
    split: str = "all",
    scheme: str = "subjects",
    seed: int = SEED,
) -> list[ParaphraseQuery]:
    """Official ParaRel data as the same ``ParaphraseQuery`` list as :func:`load_paraphrases`.

    ``split``/``scheme`` mean what they mean there (splits are computed with the same seeded
    rules). Skipped patterns and unmatched relation ids are reported in one ``UserWarning``;
    use :func:`read_pararel` for the full list.

    Used in: Chapter 1 and 2 (optional, with the official data).
    """
    _check_choice(scheme, SCHEMES, "scheme")
    _check_choice(split, SPLITS + ("all",), "split")
    loaded = read_pararel(patterns_dir, tuples_dir, relations, seed=seed)
    message = loaded.report()
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)
    queries = loaded.queries
    if scheme == "relations":
        rel_split = assign_relation_splits(list(loaded.relations), seed=seed)
        queries = [ParaphraseQuery(q.relation_id, q.subject, q.object, q.prompts, q.candidates,
                                   rel_split[q.relation_id]) for q in queries]
    return [q for q in queries if split == "all" or q.split == split]
