"""Edit requests: one fact to rewrite, checked before any optimisation runs.

Taught in: Chapter 3 (ROME). STEAM (Chapter 4), SADR (Chapter 5) and MEMIT take the same requests.

A request says: in ``prompt`` (a template with ``{}`` where the subject goes) the model should
now continue with ``target_new`` instead of ``target_true``. It is the one request type of the
package: a loaded :class:`~editlens.data.counterfact.CounterFactRecord` holds one as its
``requested_rewrite``, and :func:`~editlens.data.counterfact.as_request` builds one from whatever
a caller holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from editlens.scoring import with_leading_space

RELATION_NAMES = {
    "P17": "country", "P27": "citizenship", "P30": "continent", "P36": "capital", "P37": "official language",
    "P38": "currency", "P103": "native language", "P106": "occupation", "P131": "located in (city)",
    "P159": "headquarters", "P176": "manufacturer", "P641": "sport",
}
"""Short names of the Wikidata relations of the book's facts set (CounterFact's ``relation_id``)."""


def relation_name(relation_id: str | None) -> str:
    """``"P36"`` -> ``"capital (P36)"``; an id without a name is returned as it is."""
    name = RELATION_NAMES.get(str(relation_id))
    return f"{name} ({relation_id})" if name else str(relation_id)


class BadRequestError(ValueError):
    """An edit request that cannot be carried out; the message names the problem and the fix."""


@dataclass(frozen=True)
class RewriteRequest:
    """One fact to edit: ``prompt.format(subject)`` should continue with ``target_new``.

    Targets are stored without their leading space. ``target_true`` is ``None`` when only the new
    object is known. The targets' ids (Wikidata Q-ids in ``facts.json``) travel with the request so
    a record writes back as it was read; they take no part in equality."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    relation_id: str | None = None
    case_id: int | None = None
    target_new_id: str | None = field(default=None, compare=False)
    target_true_id: str | None = field(default=None, compare=False)

    @property
    def text(self) -> str:
        """The rewrite prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    def validate(self, tokenizer: Any = None) -> "RewriteRequest":
        """Raise :class:`BadRequestError` naming the problem and the fix; return ``self`` when fine."""
        validate_request(self, tokenizer)
        return self


def validate_request(req: RewriteRequest, tokenizer: Any = None) -> None:
    """Check a request; raise :class:`BadRequestError` that says what is wrong and how to fix it."""
    p, s = req.prompt, req.subject
    if not s or not s.strip():
        raise BadRequestError("The subject is empty. Fix: name the entity whose fact you edit, e.g. subject='Eiffel Tower'.")
    n = p.count("{}")
    if n == 0:
        if s in p:
            fixed = p.replace(s, "{}", 1)
            raise BadRequestError(f"The prompt {p!r} has no '{{}}' placeholder for the subject. "
                                  f"Fix: write the subject as '{{}}', e.g. prompt={fixed!r}, subject={s!r}.")
        raise BadRequestError(f"The subject {s!r} is not in the prompt {p!r}, which has no '{{}}' placeholder either. "
                              "Fix: write the prompt as a template with '{}' where the subject goes.")
    if n > 1:
        raise BadRequestError(f"The prompt {p!r} has {n} '{{}}' placeholders; ROME edits at one subject position. "
                              "Fix: keep exactly one '{}'.")
    if s != s.strip():
        raise BadRequestError(f"The subject {s!r} has leading/trailing spaces, which would move its last token. "
                              "Fix: strip it; put spaces in the prompt template instead.")
    for name, t in (("target_new", req.target_new), ("target_true", req.target_true)):
        if t is None and name == "target_true":
            continue
        if t is None or not str(t).strip():
            raise BadRequestError(f"{name} is empty. Fix: give the object as text, e.g. {name}='Rome'.")
    if req.target_true is not None and req.target_new.strip() == req.target_true.strip():
        raise BadRequestError(f"target_new equals target_true ({req.target_new!r}): nothing to edit. "
                              "Fix: choose a different new object.")
    if tokenizer is not None:
        for name, t in (("target_new", req.target_new), ("target_true", req.target_true)):
            if t is None:
                continue
            ids = tokenizer(with_leading_space(t), add_special_tokens=False)["input_ids"]
            if len(ids) == 0:
                raise BadRequestError(f"{name}={t!r} tokenises to no tokens. Fix: give a non-empty word the tokenizer knows.")
        if not tokenizer(s, add_special_tokens=False)["input_ids"]:
            raise BadRequestError(f"The subject {s!r} tokenises to no tokens. Fix: give a visible entity name.")
