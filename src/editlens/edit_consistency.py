"""Edits seen through the consistency lens of Chapters 1-2: does an edited fact hold across paraphrases?

Taught in: Chapter 6 (synthesis). An edited record whose relation has ParaRel-style templates in the paraphrase set
(:mod:`editlens.data.paraphrases`) is asked with every template of that relation, subject filled in. The model's
answer to a template is Chapter 1's: the candidate with the lowest mean per-token NLL
(:func:`editlens.consistency.model_answers`, scored by :mod:`editlens.scoring`), over the relation's candidates plus
the edit's target_new and target_true. Reported per record: the fraction of templates answering target_new, the
fraction answering target_true, and the pairwise consistency of the answers
(:func:`editlens.consistency.pairwise_consistency`, Chapter 1's measure).

The measure reads the model as it is: call it inside an editor's context manager for the edited model, and inside
:func:`editlens.steering.steered` (or pass ``fwd_hooks``) for consistency steering on top of the edit.

Relations are matched by id: a paraphrase relation named like the record's ``relation_id``, else the paraphrase
relations with that Wikidata id (facts.json uses Wikidata ids, the paraphrase set names). Where several share one
id (P17: city_country, landmark_country, company_country) the one listing the record's subject among its queries
wins, else :data:`DEFAULT_FOR_WIKIDATA` (every P17 record of facts.json is a landmark), else ``relation=`` decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editlens.consistency import model_answers, pairwise_consistency
from editlens.data import CounterFactRecord, FactLike, as_case
from editlens.scoring import HookFactory, HookList

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

DEFAULT_FOR_WIKIDATA = {"P17": "landmark_country"}
"""The paraphrase relation used for a Wikidata id that several share, when the subject does not decide."""


class NoTemplatesError(ValueError):
    """A record whose relation has no (or no unambiguous) templates in the paraphrase set (message says the fix)."""


@dataclass(frozen=True)
class EditQuery:
    """A :class:`~editlens.data.paraphrases.ParaphraseQuery`-like query for :func:`editlens.consistency.model_answers`:
    the edited subject asked with every template of its relation; ``object`` is the edit's target_new."""

    relation_id: str
    subject: str
    object: str
    prompts: tuple[str, ...]
    candidates: tuple[str, ...]
    split: str = "edit"


def load_template_set(path: str | Path | None = None) -> dict[str, dict]:
    """The paraphrase set as ``{relation name: {"name", "templates", "candidates", "wikidata", "subjects"}}``
    (:func:`editlens.data.paraphrases.relations`, plus the subjects of each relation's queries)."""
    from editlens.data.paraphrases import load_paraphrases, relations

    rels = relations(path)
    for rel in rels.values():
        rel["subjects"] = set()
    for q in load_paraphrases("all", path=path):
        rels[q.relation_id]["subjects"].add(q.subject)
    return rels


def template_relation(fact: FactLike, paraphrase_set: Mapping[str, Mapping], *, relation: str | None = None) -> str:
    """The name of the paraphrase relation whose templates ask ``case``'s fact (see the module's matching rules).

    Raises :class:`NoTemplatesError` when there is none or the choice is ambiguous."""
    case = as_case(fact)
    rid, subject = case.relation_id, case.subject
    if relation is not None:
        if relation not in paraphrase_set:
            raise NoTemplatesError(f"relation={relation!r} is not in the paraphrase set ({', '.join(paraphrase_set)}). "
                                   "Fix: pass one of those names.")
        return relation
    if rid is not None and rid in paraphrase_set:
        return rid
    matches = [name for name, rel in paraphrase_set.items() if rid is not None and rel.get("wikidata") == rid]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NoTemplatesError(f"Record {case.case_id!r}: relation {rid!r} has no templates in the paraphrase "
                               "set. Fix: select records with relations_with_templates(cases, paraphrase_set), or add "
                               "templates for that relation.")
    by_subject = [m for m in matches if subject in (paraphrase_set[m].get("subjects") or ())]
    if len(by_subject) == 1:
        return by_subject[0]
    default = DEFAULT_FOR_WIKIDATA.get(rid) if rid is not None else None  # rid is set when there are matches
    if default in matches:
        return default
    raise NoTemplatesError(f"Record {case.case_id!r}: relation {rid!r} matches several template sets "
                           f"({', '.join(matches)}). Fix: pass relation= one of them.")


def relations_with_templates(cases: Sequence[FactLike], paraphrase_set: Mapping[str, Mapping]
                             ) -> dict[str, list[CounterFactRecord]]:
    """The records whose relation has templates, grouped by paraphrase relation name (records without are left out;
    ``sum(map(len, result.values()))`` qualify)."""
    out: dict[str, list[CounterFactRecord]] = {}
    for fact in cases:
        c = as_case(fact)
        try:
            name = template_relation(c, paraphrase_set)
        except NoTemplatesError:
            continue
        out.setdefault(name, []).append(c)
    return out


def edit_query(fact: FactLike, paraphrase_set: Mapping[str, Mapping], *, relation: str | None = None) -> EditQuery:
    """The record's subject filled into every template of its relation; candidates: the relation's answer set plus
    target_new and target_true (each once)."""
    from editlens.data.paraphrases import fill_template

    case = as_case(fact)
    req = case.requested_rewrite
    name = template_relation(case, paraphrase_set, relation=relation)
    rel = paraphrase_set[name]
    templates = list(rel.get("templates") or [])
    if len(templates) < 2:
        raise NoTemplatesError(f"Paraphrase relation {name!r} has {len(templates)} template(s); pairwise consistency "
                               "needs at least 2. Fix: add templates to the paraphrase set.")
    new, true = req.target_new.strip(), (req.target_true or "").strip()
    cands = list(dict.fromkeys([*(c.strip() for c in rel.get("candidates") or []), new, *([true] if true else [])]))
    return EditQuery(relation_id=name, subject=req.subject, object=new,
                     prompts=tuple(fill_template(t, req.subject) for t in templates), candidates=tuple(cands))


def edited_answer_consistency(model: TransformerBridge, fact: FactLike, paraphrase_set: Mapping[str, Mapping], *,
                              relation: str | None = None, fwd_hooks: HookList | HookFactory | None = None,
                              batch_size: int = 32) -> dict[str, Any]:
    """The edited fact across its relation's templates, on the model as it is (edited or not, steered or not).

    Returns ``case_id``, ``relation_id`` (the record's), ``template_relation``, ``subject``, ``target_new``,
    ``target_true``, ``n_templates``, ``n_candidates``, ``frac_new`` / ``frac_true`` / ``frac_other`` (fractions of
    templates answering each; they sum to 1), ``consistency`` (pairwise, Chapter 1), ``consistency_new`` (fraction of
    template pairs both answering target_new) and ``answers`` (one per template, in template order).
    ``fwd_hooks`` is passed to :func:`editlens.consistency.model_answers` (e.g. Chapter 2's last-token steering)."""
    case = as_case(fact)
    req = case.requested_rewrite
    q = edit_query(case, paraphrase_set, relation=relation)
    frame = model_answers(model, [q], batch_size=batch_size, fwd_hooks=fwd_hooks).sort_values("template")
    answers = [str(a) for a in frame["answer"]]
    new, true = q.object, (req.target_true or "").strip()
    n = len(answers)
    n_new, n_true = sum(a == new for a in answers), sum(a == true for a in answers) if true else 0
    pairs_new = n_new * (n_new - 1) / 2
    return {"case_id": case.case_id, "relation_id": case.relation_id, "template_relation": q.relation_id,
            "subject": q.subject, "target_new": new, "target_true": true or None, "n_templates": n,
            "n_candidates": len(q.candidates), "frac_new": n_new / n, "frac_true": n_true / n,
            "frac_other": (n - n_new - n_true) / n, "consistency": pairwise_consistency(answers),
            "consistency_new": pairs_new / (n * (n - 1) / 2), "answers": answers}
