"""Edit requests: one fact to rewrite, checked before any optimisation runs.

Taught in: Chapter 3 (ROME). STEAM (Chapter 4) and SADR (Chapter 5) take the same requests.

A request says: in ``prompt`` (a template with ``{}`` where the subject goes) the model should
now continue with ``target_new`` instead of ``target_true``. :func:`as_request` accepts a
CounterFact record (a dict with ``requested_rewrite``), a flat dict, the typed records of
:mod:`editlens.data`, or a :class:`RewriteRequest`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

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


def _target_str(t: Any) -> str | None:
    if t is None:
        return None
    if isinstance(t, str):
        return t
    if isinstance(t, Mapping):
        return t.get("str")
    return getattr(t, "str", None) if not isinstance(t, (int, float)) else str(t)


@dataclass(frozen=True)
class RewriteRequest:
    """One fact to edit: ``prompt.format(subject)`` should continue with ``target_new``."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    relation_id: str | None = None
    case_id: Any = None

    @property
    def text(self) -> str:
        """The rewrite prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    def validate(self, tokenizer: Any = None) -> "RewriteRequest":
        """Raise :class:`BadRequestError` naming the problem and the fix; return ``self`` when fine."""
        validate_request(self, tokenizer)
        return self


def _to_mapping(obj: Any) -> Mapping:
    if isinstance(obj, Mapping):
        return obj
    for meth in ("to_dict", "model_dump", "_asdict"):
        f = getattr(obj, meth, None)
        if callable(f):
            try:
                out = f()
            except TypeError:
                continue
            if isinstance(out, Mapping):
                return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "__dict__"):
        return vars(obj)
    raise BadRequestError(f"Cannot read an edit request from a {type(obj).__name__}; pass a CounterFact dict "
                          "({'requested_rewrite': {...}}), a flat dict with prompt/subject/target_new, or a RewriteRequest.")


def as_case(obj: Any) -> dict:
    """Any supported record as a plain CounterFact-schema dict (``requested_rewrite`` + probe lists)."""
    if isinstance(obj, RewriteRequest):
        return {"case_id": obj.case_id, "requested_rewrite": {
            "prompt": obj.prompt, "subject": obj.subject, "relation_id": obj.relation_id,
            "target_new": {"str": obj.target_new}, "target_true": {"str": obj.target_true}}}
    m = dict(_to_mapping(obj))
    if "requested_rewrite" not in m:
        rr = {k: m.pop(k) for k in ("prompt", "subject", "relation_id", "target_new", "target_true") if k in m}
        m["requested_rewrite"] = rr
    else:
        rr = m["requested_rewrite"]
        if not isinstance(rr, Mapping):
            m["requested_rewrite"] = dict(_to_mapping(rr))
    return m


def as_request(obj: Any) -> RewriteRequest:
    """Build a :class:`RewriteRequest` from any supported record (not yet validated)."""
    if isinstance(obj, RewriteRequest):
        return obj
    case = as_case(obj)
    rr = case["requested_rewrite"]
    missing = [k for k in ("prompt", "subject", "target_new") if rr.get(k) in (None, "")]
    if missing:
        raise BadRequestError(f"Edit request is missing {missing}. Fix: give prompt (with '{{}}' for the subject), "
                              "subject and target_new (e.g. {'str': 'Rome'}).")
    return RewriteRequest(
        prompt=str(rr["prompt"]), subject=str(rr["subject"]),
        target_new=_target_str(rr["target_new"]) or "", target_true=_target_str(rr.get("target_true")),
        relation_id=rr.get("relation_id"), case_id=case.get("case_id", case.get("id")),
    )


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
