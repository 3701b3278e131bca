"""Semantic anchors: where the unedited model's residual stream sits when it is about to say an object.

Taught in: Chapter 4 (STEAM). STEAM (arXiv 2510.10398) pulls the edited fact's residual stream toward the
"semantic anchor" of the new object o*: the mean residual stream of the unedited model at the last prompt token
of reference facts whose answer is o*. The paper takes reference facts from a knowledge base; the book takes them
from its facts files (documented choices, each a parameter):

- **Candidates** (:func:`anchor_candidates`), from the ``sources`` the bank is given:
  :data:`REFERENCE_SOURCES` are reference triples as the paper means them, (subject, real relation, o*) facts
  written as a plain prompt: the rewrite prompt of any record whose true answer is o*, its neighbourhood prompts
  (other subjects with the same relation and answer) and the attribute prompts of records whose target_new is
  o* (subjects whose true answer under that relation is o*). :data:`SOURCES` (every prompt whose known answer is
  o*) adds paraphrases (which carry distractor prefixes), relation prompts and other records' two-hop portability
  prompts, each counted as a pseudo-relation (``rel:<template>``, ``port:<relation>``); it is the design the
  book's Chapter 4 first ran. Each candidate comes with a contrast answer (the record's other object).
- **Never a probe the edit is judged on**: :meth:`AnchorBank.get` takes ``exclude`` (the edited record's probe
  prompts, :func:`judged_prompts`) and leaves those candidates out.
- **Filter**: the unedited model must prefer o* over the contrast by at least ``min_margin`` nats of mean
  per-token NLL (:func:`editlens.scoring.score_candidates`, the book's one scorer), as STEAM keeps only facts the
  model already answers with o*. Margins are scored in float32 whatever the model's precision
  (:mod:`editlens.precision`), so which prompts are kept does not depend on it.
- **Stratified**: round-robin over relations (sorted), within a relation by margin (largest first), up to
  ``n_anchors`` prompts (default 8).
- **Anchor**: the mean over those prompts of ``blocks.{l}.hook_resid_post`` at the last prompt token, for every
  layer (:class:`AnchorSet`), always from the UNEDITED model: :func:`compute_anchors` lifts applied edits it is
  given and restores them bit-exactly; :class:`AnchorBank` caches anchors per object and refuses to compute new
  ones on weights that changed since it was created.
- **The shared components** (:meth:`AnchorBank.shared_components`, :class:`SharedComponents`): the mean
  last-token state of each relation's prompts in the pool (up to ``n_shared`` per relation), whatever their
  answer. A last-token state is mostly "which question is being asked": on SmolLM2 the raw cosine of the
  rewrite prompt to the new object's anchors is 0.92 on average before any edit, and 0.66 after removing only
  the pool's overall mean (50 facts, ``book/steam-design.md``), because anchors and prompt share a relation. With each state centred on its own
  relation's mean, what is left tells objects apart (the unedited state is nearer its true object's centred
  anchors than the new object's), and that is what the centred alignment of
  :class:`~editlens.steam.alignment.AlignmentTerm` moves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from editlens.data import FactLike, as_case, as_request
from editlens.data.counterfact import round_robin
from editlens.evaluate import fill_subject, probe_rows
from editlens.fingerprint import weights_fingerprint
from editlens.precision import full_precision
from editlens.rome.update import Edit
from editlens.scoring import score_candidates
from editlens.steam.states import check_layers_in_range, last_token_states

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

DEFAULT_N_ANCHORS = 8
DEFAULT_MIN_ANCHORS = 3
DEFAULT_MIN_MARGIN = 0.0
DEFAULT_N_SHARED = 64  # prompts per relation averaged into its shared component
DEFAULT_MIN_SHARED = 8  # a relation with fewer prompts in the pool is centred on the pool's overall mean

SOURCES = ("rewrite", "paraphrase", "neighborhood", "attribute", "relation", "portability")
"""Every prompt whose known answer is the object (Chapter 4's first design)."""
REFERENCE_SOURCES = ("rewrite", "neighborhood", "attribute")
"""Reference triples only: plain prompts of real relations whose true answer is the object."""
PAPER_DESIGN = {"sources": REFERENCE_SOURCES, "exclude_judged": True, "centred": True}
"""STEAM as the paper means it, :class:`AnchorBank`'s default: reference triples, never a probe the edit is judged
on, alignment of centred states (``book/steam-design.md`` measures why)."""
FIRST_DESIGN = {"sources": SOURCES, "exclude_judged": False, "centred": False}
"""The design Chapter 4 first ran (every prompt whose known answer is the object, judged probes included, raw
cosine): ``AnchorBank(model, facts, **FIRST_DESIGN)`` reproduces it and the stored runs made with it."""


class NotEnoughAnchorsError(ValueError):
    """An object has fewer usable anchor prompts than required; the message names object, count and fix."""

    def __init__(self, obj: str, found: int, needed: int, n_candidates: int, min_margin: float):
        self.object, self.found, self.needed, self.n_candidates = obj, found, needed, n_candidates
        super().__init__(
            f"Object {obj!r} has {found} anchor prompt(s) (of {n_candidates} candidate(s) in the facts set whose "
            f"known answer is {obj!r}, kept when the unedited model prefers it by > {min_margin:g} nats); "
            f"STEAM needs at least {needed}. Fix: add facts whose true answer is {obj!r} (attribute prompts of a "
            f"record with target_new {obj!r}), lower min_margin or min_anchors, or leave this record out "
            "(editlens.steam.anchors.anchor_coverage lists every object without enough anchors).")


@dataclass(frozen=True)
class KnownFact:
    """A prompt whose true answer is known from the facts set, with a contrast answer for the margin filter."""

    prompt: str
    answer: str
    contrast: str
    relation: str  # the relation id, "rel:<template>" for relation prompts, "port:<id>" for portability prompts
    source: str  # rewrite, paraphrase, neighborhood, attribute, relation, portability
    case_id: Any = None


@dataclass(frozen=True)
class AnchorPrompt:
    """A kept anchor prompt: the known fact and the unedited model's margin (NLL(contrast) - NLL(answer))."""

    fact: KnownFact
    margin: float

    @property
    def prompt(self) -> str:
        return self.fact.prompt


def _clean(s: Any) -> str:
    return str(s).strip() if s is not None else ""


def check_sources(sources: Sequence[str]) -> tuple[str, ...]:
    """``sources`` as a tuple, each one of :data:`SOURCES` (a clear error otherwise)."""
    out = tuple(dict.fromkeys(sources))
    unknown = [s for s in out if s not in SOURCES]
    if unknown or not out:
        raise ValueError(f"Unknown anchor sources {unknown or list(out)}. Fix: choose from {SOURCES}, e.g. "
                         f"REFERENCE_SOURCES = {REFERENCE_SOURCES} (reference triples, the paper's design).")
    return out


def known_facts(records: Iterable[Any], sources: Sequence[str] = SOURCES) -> list[KnownFact]:
    """Every (prompt, true answer) the facts set knows from ``sources`` (:data:`SOURCES`, the default, or
    :data:`REFERENCE_SOURCES`), deduplicated by (prompt, answer), in file order."""
    out: list[KnownFact] = []
    seen: set[tuple[str, str]] = set()
    wanted = set(check_sources(sources))

    def add(prompt: str, answer: Any, contrast: Any, relation: str, source: str, cid: Any) -> None:
        a, c = _clean(answer), _clean(contrast)
        if source not in wanted or not prompt or not a or not c or a == c or (prompt, a) in seen:
            return
        seen.add((prompt, a))
        out.append(KnownFact(prompt, a, c, relation, source, cid))

    for rec in records:
        case = as_case(rec)
        req = case.requested_rewrite
        rel, cid, new, true = str(req.relation_id), case.case_id, req.target_new, req.target_true
        if true:
            add(req.text, true, new, rel, "rewrite", cid)
            for p in case.paraphrase_prompts:
                add(fill_subject(p, req.subject), true, new, rel, "paraphrase", cid)
            for p in case.neighborhood_prompts:
                add(fill_subject(p, req.subject), true, new, rel, "neighborhood", cid)
            for p in case.attribute_prompts:
                add(fill_subject(p, req.subject), new, true, rel, "attribute", cid)
        for r in case.relation_prompts:
            tmpl = r.prompt.replace(req.subject, "{}") if req.subject in r.prompt else r.prompt
            add(fill_subject(r.prompt, req.subject), r.target, new if _clean(r.target) != _clean(new) else true,
                f"rel:{tmpl}", "relation", cid)
        for q in case.portability_prompts:
            add(fill_subject(q.prompt, req.subject), q.target_true, q.target_new, f"port:{rel}", "portability", cid)
    return out


def judged_prompts(case: FactLike) -> frozenset[str]:
    """The prompts an edit of ``case`` is judged on (every probe of :func:`editlens.evaluate.probe_rows`: ES, PS,
    NS, DNS, RelS, Port): STEAM never takes an anchor from them."""
    return frozenset(row[1] for row in probe_rows(case))


def anchor_candidates(records: Iterable[Any], obj: str, facts: Sequence[KnownFact] | None = None) -> list[KnownFact]:
    """Known facts whose true answer is ``obj``, from ``facts`` (default: :func:`known_facts` of every source):
    attribute prompts of records with target_new ``obj`` and every other prompt whose known answer is ``obj``
    (see the module docstring)."""
    facts = known_facts(records) if facts is None else facts
    key = _clean(obj)
    return [f for f in facts if f.answer == key]


def score_margins(model: TransformerBridge, facts: Sequence[KnownFact]) -> np.ndarray:
    """NLL(contrast) - NLL(answer) of each fact on the model as it is (positive: the model prefers the answer),
    in float32 whatever the model's precision (the anchors chosen from them must not depend on it)."""
    if not facts:
        return np.zeros(0)
    with full_precision(model):
        nll = score_candidates(model, [f.prompt for f in facts], [[f.answer, f.contrast] for f in facts])
    return np.array([float(n[1] - n[0]) for n in nll])


def stratify(kept: Sequence[AnchorPrompt], n: int) -> list[AnchorPrompt]:
    """Up to ``n`` prompts round-robin over relations (sorted by name), each relation largest margin first."""
    return round_robin(sorted(kept, key=lambda a: -a.margin), n, key=lambda a: a.fact.relation)


def select_anchor_prompts(candidates: Sequence[KnownFact], margins: Sequence[float], *,
                          n_anchors: int = DEFAULT_N_ANCHORS, min_margin: float = DEFAULT_MIN_MARGIN
                          ) -> list[AnchorPrompt]:
    """Keep candidates with margin > ``min_margin``, then :func:`stratify` to ``n_anchors``."""
    if n_anchors < 1:
        raise ValueError(f"n_anchors must be at least 1, got {n_anchors}. Fix: pass n_anchors >= 1 (default 8).")
    kept = [AnchorPrompt(f, float(m)) for f, m in zip(candidates, margins) if m > min_margin]
    return stratify(kept, n_anchors)


# ---------------------------------------------------------------------------------------------- the anchors


@dataclass
class AnchorSet:
    """The anchors phi^l of one object: per-prompt states and their mean, for ``layers`` (all by default)."""

    object: str
    prompts: tuple[AnchorPrompt, ...]
    layers: list[int]
    states: Float[Tensor, "prompt layer d_model"]
    fingerprint: str | None = None  # of the weights they were computed on (editlens.weights_fingerprint)

    @property
    def vectors(self) -> Float[Tensor, "layer d_model"]:
        """phi^l: the mean state over the anchor prompts, one row per entry of ``layers``."""
        return self.states.mean(0)

    def at(self, layers: Sequence[int]) -> Float[Tensor, "layer d_model"]:
        """phi^l for the given layers (each must be among ``self.layers``)."""
        missing = [layer for layer in layers if layer not in self.layers]
        if missing:
            raise ValueError(f"The anchors of {self.object!r} were computed at layers {self.layers}, not {missing}. "
                             "Fix: compute them with layers=None (every layer) or including these layers.")
        return self.vectors[[self.layers.index(layer) for layer in layers]]


@dataclass
class SharedComponents:
    """What every last-token state of a relation shares: per relation, the unedited model's mean state over the
    pool's prompts of that relation (``by_relation``), and the mean over the whole pool (``overall``, for
    relations with too few prompts there: the bank's ``min_shared``); ``counts``: prompts read per relation.
    Chapter 4's centred alignment (``book/steam-design.md``)."""

    layers: list[int]
    by_relation: dict[str, Float[Tensor, "layer d_model"]]
    overall: Float[Tensor, "layer d_model"]
    counts: dict[str, int]
    fingerprint: str | None = None

    def _rows(self, layers: Sequence[int]) -> list[int]:
        missing = [layer for layer in layers if layer not in self.layers]
        if missing:
            raise ValueError(f"The shared components were computed at layers {self.layers}, not {missing}. Fix: "
                             "build the AnchorBank with layers=None (every layer) or including these layers.")
        return [self.layers.index(layer) for layer in layers]

    def of(self, relation: str, layers: Sequence[int]) -> Float[Tensor, "layer d_model"]:
        """mu^l of ``relation`` (the overall mean when the pool has too few of its prompts)."""
        return self.by_relation.get(str(relation), self.overall)[self._rows(layers)]

    def centred_anchor(self, anchors: AnchorSet, layers: Sequence[int]) -> Float[Tensor, "layer d_model"]:
        """phi^l centred: the mean over anchor prompts of (state - mu of that prompt's relation)."""
        anchors.at(layers)  # a clear error if the anchors lack one of these layers
        rows = [anchors.layers.index(layer) for layer in layers]
        centred = [anchors.states[i, rows] - self.of(a.fact.relation, layers).to(anchors.states.device)
                   for i, a in enumerate(anchors.prompts)]
        return torch.stack(centred).mean(0)


@contextlib.contextmanager
def lifted(model: TransformerBridge, edits: Edit | Sequence[Edit] | None) -> Iterator[None]:
    """Inside the block, the applied ``edits`` are undone (last first); on exit they are re-applied in order.

    Undo restores the saved weights bit-exactly and re-applying adds the same delta to the same weights, so the
    edited weights after the block equal those before it bit for bit."""
    edits = [] if edits is None else ([edits] if isinstance(edits, Edit) else list(edits))
    lifted_edits = [e for e in edits if e.applied]
    for e in reversed(lifted_edits):
        e.undo(model)
    try:
        yield
    finally:
        for e in lifted_edits:
            e.apply(model)


def compute_anchors(model: TransformerBridge, prompts: Sequence[str | AnchorPrompt],
                    layers: Sequence[int] | None = None, *,
                    obj: str = "", undo: Edit | Sequence[Edit] | None = None) -> AnchorSet:
    """The anchors of ``prompts`` (mean ``hook_resid_post`` at the last prompt token) on the UNEDITED model.

    ``undo``: edits currently applied to ``model`` (e.g. the ``Edit`` of :func:`editlens.rome.apply_rome`); they are
    lifted while the anchors are computed and restored bit-exactly afterwards. Edits you do not pass stay on: compute
    anchors before editing (:class:`AnchorBank` checks this for you)."""
    items = [p if isinstance(p, AnchorPrompt) else AnchorPrompt(KnownFact(p, obj, "", "", "given"), float("nan"))
             for p in prompts]
    if not items:
        raise NotEnoughAnchorsError(obj or "?", 0, 1, 0, float("nan"))
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else check_layers_in_range(layers, n_layers, "anchor layers")
    with lifted(model, undo):
        states = last_token_states(model, [a.prompt for a in items], layers)
        fp = weights_fingerprint(model)
    return AnchorSet(object=obj, prompts=tuple(items), layers=layers, states=states, fingerprint=fp)


@dataclass
class AnchorBank:
    """Anchors per object, computed once each from the unedited model and cached (Chapter 4's evaluation).

    The bank takes the model's weight fingerprint when it is created (do it before any edit) and refuses to
    compute anchors later on different weights unless the applied edits are passed as ``undo``.
    The defaults are :data:`PAPER_DESIGN`; :data:`FIRST_DESIGN` is Chapter 4's first design.
    ``sources``: where candidates come from (:data:`REFERENCE_SOURCES`, reference triples, or :data:`SOURCES`,
    every known prompt); ``exclude_judged``: leave out the probes each edited record is judged on
    (:meth:`for_case`); ``centred``: STEAM's alignment toward these anchors is measured on centred states
    (:meth:`centre`);
    ``n_shared``, ``min_shared``: prompts per relation averaged into its shared component, and the fewest a
    relation needs to have one of its own (:meth:`shared_components`)."""

    model: TransformerBridge
    records: Sequence[Any]
    n_anchors: int = DEFAULT_N_ANCHORS
    min_anchors: int = DEFAULT_MIN_ANCHORS
    min_margin: float = DEFAULT_MIN_MARGIN
    layers: Sequence[int] | None = None
    sources: Sequence[str] = REFERENCE_SOURCES
    exclude_judged: bool = True
    centred: bool = True
    n_shared: int = DEFAULT_N_SHARED
    min_shared: int = DEFAULT_MIN_SHARED
    _facts: list[KnownFact] = field(default_factory=list, repr=False)
    _margins: dict[KnownFact, float] = field(default_factory=dict, repr=False)
    _cache: dict[tuple[str, tuple[str, ...]], AnchorSet] = field(default_factory=dict, repr=False)
    _shared: SharedComponents | None = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.min_anchors < 1 or self.n_anchors < self.min_anchors:
            raise ValueError(f"Need 1 <= min_anchors <= n_anchors, got min_anchors={self.min_anchors}, "
                             f"n_anchors={self.n_anchors}. Fix: e.g. n_anchors=8, min_anchors=3.")
        if not 1 <= self.min_shared <= self.n_shared:
            raise ValueError(f"Need 1 <= min_shared <= n_shared, got min_shared={self.min_shared}, "
                             f"n_shared={self.n_shared}. Fix: e.g. n_shared=64, min_shared=8.")
        self.sources = check_sources(self.sources)
        self.records = list(self.records)
        self._facts = known_facts(self.records, self.sources)
        self._fingerprint = weights_fingerprint(self.model)

    def _check_unedited(self, undo: Any, now: str | None = None) -> None:
        if now is None:
            with lifted(self.model, undo):
                now = weights_fingerprint(self.model)
        if now != self._fingerprint:
            raise RuntimeError("The model's weights changed since this AnchorBank was created (an edit is applied), "
                               "so new anchors would not be the unedited model's. Fix: compute anchors before "
                               "editing (bank.precompute(objects)), or pass the applied edits: bank.get(obj, undo=edit).")

    def margins(self, candidates: Sequence[KnownFact], undo: Any = None) -> list[float]:
        """The unedited model's margins of ``candidates`` (scored once per fact, cached)."""
        todo = [f for f in candidates if f not in self._margins]
        if todo:
            self._check_unedited(undo)
            with lifted(self.model, undo):
                self._margins.update(zip(todo, score_margins(self.model, todo).tolist()))
        return [self._margins[f] for f in candidates]

    def candidates(self, obj: str, exclude: Iterable[str] = ()) -> list[KnownFact]:
        """The bank's candidates for ``obj`` (its ``sources``), without the prompts in ``exclude``."""
        out = set(exclude)
        return [f for f in anchor_candidates(self.records, obj, self._facts) if f.prompt not in out]

    def excluded(self, case: FactLike) -> frozenset[str]:
        """What :meth:`for_case` leaves out for ``case``: its judged prompts when ``exclude_judged``, else nothing."""
        return judged_prompts(case) if self.exclude_judged else frozenset()

    def select(self, obj: str, undo: Any = None, exclude: Iterable[str] = ()) -> tuple[list[AnchorPrompt], int]:
        """The anchor prompts of ``obj`` and the number of candidates they were chosen from."""
        cands = self.candidates(obj, exclude)
        chosen = select_anchor_prompts(cands, self.margins(cands, undo), n_anchors=self.n_anchors,
                                       min_margin=self.min_margin)
        return chosen, len(cands)

    def kept(self, obj: str, undo: Any = None) -> list[AnchorPrompt]:
        """Every candidate of ``obj`` that passes the margin filter, largest margin first (the anchors are
        :meth:`select`'s stratified subset; the rest are held-out "organic" prompts, Chapter 4)."""
        cands = self.candidates(obj)
        kept = [AnchorPrompt(f, m) for f, m in zip(cands, self.margins(cands, undo)) if m > self.min_margin]
        return sorted(kept, key=lambda a: -a.margin)

    def get(self, obj: str, undo: Edit | Sequence[Edit] | None = None, exclude: Iterable[str] = ()) -> AnchorSet:
        """The :class:`AnchorSet` of ``obj`` (candidates in ``exclude`` left out); raises
        :class:`NotEnoughAnchorsError` if it has too few prompts."""
        key = _clean(obj)
        out = set(exclude)
        dropped = tuple(sorted(f.prompt for f in anchor_candidates(self.records, key, self._facts) if f.prompt in out))
        if (key, dropped) not in self._cache:
            chosen, n_cands = self.select(key, undo, dropped)
            if len(chosen) < self.min_anchors:
                raise NotEnoughAnchorsError(key, len(chosen), self.min_anchors, n_cands, self.min_margin)
            anchors = compute_anchors(self.model, chosen, self.layers, obj=key, undo=undo)
            self._check_unedited(undo, anchors.fingerprint)
            self._cache[(key, dropped)] = anchors
        return self._cache[(key, dropped)]

    def for_case(self, case: FactLike, undo: Edit | Sequence[Edit] | None = None) -> AnchorSet:
        """The anchors STEAM aligns an edit of ``case`` with: its target_new's, without :meth:`excluded`."""
        return self.get(as_request(case).target_new, undo, self.excluded(case))

    def shared_components(self, undo: Edit | Sequence[Edit] | None = None) -> SharedComponents:
        """Per relation, the unedited model's mean last-token state over up to ``n_shared`` of the pool's prompts
        of that relation (file order), at the bank's layers; relations with fewer than ``min_shared`` prompts use
        the mean over every prompt read. Computed once (:class:`SharedComponents`)."""
        if self._shared is None:
            groups: dict[str, list[KnownFact]] = {}
            for f in self._facts:
                if len(groups.setdefault(f.relation, [])) < self.n_shared:
                    groups[f.relation].append(f)
            facts = [f for g in groups.values() for f in g]
            if not facts:
                raise NotEnoughAnchorsError("<shared components>", 0, 1, 0, float("nan"))
            layers = (list(range(self.model.cfg.n_layers)) if self.layers is None
                      else check_layers_in_range(self.layers, self.model.cfg.n_layers, "anchor layers"))
            with lifted(self.model, undo):
                states = last_token_states(self.model, [f.prompt for f in facts], layers)
                fp = weights_fingerprint(self.model)
            self._check_unedited(undo, fp)
            by_rel, start = {}, 0
            for rel, g in groups.items():
                if len(g) >= self.min_shared:
                    by_rel[rel] = states[start:start + len(g)].mean(0)
                start += len(g)
            self._shared = SharedComponents(layers, by_rel, states.mean(0), {r: len(g) for r, g in groups.items()}, fp)
        return self._shared

    def centre(self) -> SharedComponents | None:
        """What STEAM's alignment centres on: :meth:`shared_components` when ``centred``, else None (raw)."""
        return self.shared_components() if self.centred else None

    @property
    def design(self) -> dict[str, Any]:
        """The bank's choices as a run records them (sources, exclusion, centring, sizes)."""
        return {"sources": list(self.sources), "exclude_judged": self.exclude_judged, "centred": self.centred,
                "n_anchors": self.n_anchors, "min_anchors": self.min_anchors, "min_margin": self.min_margin,
                "n_shared": self.n_shared, "min_shared": self.min_shared}

    def precompute(self, objects: Iterable[str], *, skip_missing: bool = False) -> dict[str, AnchorSet]:
        """Anchors of every object (e.g. every target_new of the records you will edit), before any edit.

        Objects are scored in one batch. ``skip_missing=True`` leaves out objects without enough anchors (list
        them with :meth:`coverage`); otherwise the first such object raises :class:`NotEnoughAnchorsError`.
        With ``exclude_judged``, call :meth:`precompute_cases` instead (anchors depend on the record)."""
        objs = list(dict.fromkeys(_clean(o) for o in objects))
        self.margins([f for o in objs for f in anchor_candidates(self.records, o, self._facts)])
        out = {}
        for o in objs:
            try:
                out[o] = self.get(o)
            except NotEnoughAnchorsError:
                if not skip_missing:
                    raise
        return out

    def precompute_cases(self, cases: Iterable[Any]) -> list[AnchorSet]:
        """:meth:`for_case` of every record, before any edit (margins scored in one batch)."""
        cases = list(cases)
        objs = list(dict.fromkeys(as_request(c).target_new.strip() for c in cases))
        self.margins([f for o in objs for f in anchor_candidates(self.records, o, self._facts)])
        return [self.for_case(c) for c in cases]

    def coverage(self, cases: Iterable[Any] | None = None) -> pd.DataFrame:
        """One row per record: its target_new, candidates, kept anchors and whether STEAM can edit it (``ok``).

        Records without enough anchors are listed here, not silently dropped."""
        cases = self.records if cases is None else list(cases)
        reqs = [as_request(c) for c in cases]
        objs = list(dict.fromkeys(r.target_new.strip() for r in reqs))
        self.margins([f for o in objs for f in anchor_candidates(self.records, o, self._facts)])
        rows = []
        for c, r in zip(cases, reqs):
            chosen, n_cands = self.select(r.target_new.strip(), exclude=self.excluded(c))
            rows.append({"case_id": r.case_id, "subject": r.subject, "target_new": r.target_new,
                         "n_candidates": n_cands, "n_anchors": len(chosen),
                         "n_relations": len({a.fact.relation for a in chosen}),
                         "ok": len(chosen) >= self.min_anchors})
        return pd.DataFrame(rows)


def anchor_coverage(model: TransformerBridge, records: Sequence[Any], cases: Sequence[FactLike] | None = None,
                    **bank_kwargs: Any
                    ) -> pd.DataFrame:
    """Which records' target_new have enough anchors (``ok``) in ``records`` (see :meth:`AnchorBank.coverage`)."""
    return AnchorBank(model, records, **bank_kwargs).coverage(cases)
