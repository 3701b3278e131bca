"""The editing evaluation shared by Chapters 3-6: efficacy, generalisation, specificity, fluency,
consistency, SADR's relation and distraction probes, portability.

Taught in: Chapter 3 (metrics introduced with ROME); Chapters 4-6 reuse :func:`evaluate_edits`.

A prompt "succeeds" by comparing the mean per-token NLL of two continuations (CounterFact's
rule, both scored with a leading space):
- ES (efficacy): target_new beats target_true on the rewrite prompt. PS (paraphrase): the same on
  paraphrases. NS (neighbourhood): target_true beats target_new on other subjects that share the
  true object. S: harmonic mean of ES, PS, NS. EM/PM/NM: the same as probability differences
  p(new) - p(true) (NM: p(true) - p(new)), p = exp(-mean token NLL).
- RelS (SADR's Relation Score): on the same subject's other relations, the true answer beats target_new.
- DNS (SADR's Distract Neighbourhood Score): NS with the edit stated as text first:
  f"{rewrite prompt} {target_new}. {neighbourhood prompt}".
- Portability: on probes that need the new fact (multi-hop), the probe's target_new beats its target_true.
- GE (fluency): mean over generations of (2/3 H2 + 4/3 H3)/2, n-gram entropies in bits.
- RS (consistency, ROME's reference score): TF-IDF cosine between the generations about the
  subject and reference text about target_new (scikit-learn, fitted on all reference texts and
  the generations). Reference texts come from ``editlens/data/object_descriptions.json`` when it
  exists, else from the record's attribute prompts completed with target_new.
- SC (semantic consistency, opt-in with ``GenerationSettings(semantic=True)``, Chapter 4): mean cosine of
  the generations' sentence embeddings (all-MiniLM-L6-v2, :mod:`editlens.sentence`) to the reference
  sentences of target_new minus to those of target_true. Unlike RS it discriminates: a generation that
  still talks about the true object scores below 0. Off by default, so Chapter 3's outputs do not change.
Every metric is reported for the edited model and for the unedited model beside it.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor

from editlens import fused_attention
from editlens.data import CounterFactRecord, FactLike, as_case, load_object_descriptions
from editlens.precision import full_precision
from editlens.rome.editor import Editor
from editlens.rome.keys import encode
from editlens.scoring import score_continuations

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GenerationMixin


METRICS = ("ES", "PS", "NS", "S", "EM", "PM", "NM", "RelS", "DNS", "Port", "Port EM", "GE", "RS", "SC")
"""Reported metrics in table order; SC appears only when it was computed (opt-in)."""


# ---------------------------------------------------------------------------------------------
# Scoring continuations


def continuation_nll(model: TransformerBridge, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32,
                     top1: bool = False,
                     rows_per_batch: int = 1,
                     ) -> Float[Tensor, "n_pairs"] | tuple[Float[Tensor, "n_pairs"], Float[Tensor, "n_pairs"]]:
    """Mean per-token NLL of each ``continuation`` after ``prompt`` (with a leading space): the book's
    one scorer, :func:`editlens.scoring.score_continuations` (``batch_size`` is kept for callers;
    ``rows_per_batch`` as there). ``top1=True``: also each continuation's top-1 token accuracy under
    teacher forcing, ``(nll, top1)``."""
    if not pairs:
        empty = torch.empty(0, dtype=torch.float64)
        return (empty, empty.clone()) if top1 else empty
    if not top1:
        return torch.from_numpy(score_continuations(model, pairs, rows_per_batch=rows_per_batch))
    nll, hits = score_continuations(model, pairs, top1=True, rows_per_batch=rows_per_batch)
    return torch.from_numpy(nll), torch.from_numpy(hits)


def fill_subject(prompt: str, subject: str) -> str:
    """A probe prompt with the subject filled in (prompts without ``{}`` are used as they are)."""
    return prompt.format(subject) if "{}" in prompt else prompt


def probe_rows(fact: FactLike) -> list[tuple[str, str, str, str]]:
    """(probe kind, prompt, good continuation, bad continuation) rows of one record: success = good beats bad.

    The one definition of every probe of Chapters 2-6: ES, PS, NS, DNS, RelS, Port (Chapter 2's
    known-facts check reads the ES and NS rows the other way round)."""
    case = as_case(fact)
    req = case.requested_rewrite
    new, true = req.target_new, req.target_true
    rows: list[tuple[str, str, str, str]] = []
    if true is not None:
        rows.append(("ES", req.text, new, true))
        for p in case.paraphrase_prompts:
            rows.append(("PS", fill_subject(p, req.subject), new, true))
        for p in case.neighborhood_prompts:
            rows.append(("NS", fill_subject(p, req.subject), true, new))
            rows.append(("DNS", distracted_prompt(req.text, new, fill_subject(p, req.subject)), true, new))
    for r in case.relation_prompts:
        if r.target.strip() != new.strip():
            rows.append(("RelS", fill_subject(r.prompt, req.subject), r.target, new))
    for q in case.portability_prompts:
        if q.target_true is not None:
            rows.append(("Port", fill_subject(q.prompt, req.subject), q.target_new, q.target_true))
    return rows


def distracted_prompt(rewrite_text: str, target_new: str, neighbour_prompt: str) -> str:
    """SADR's distracted neighbourhood prompt (DNS; Chapter 5's attention-drift probes): the edit stated as text,
    then an unrelated neighbourhood prompt, ``f"{rewrite prompt} {target_new}. {neighbour prompt}"``."""
    return f"{rewrite_text} {target_new}. {neighbour_prompt}"


def probe_scores(model: TransformerBridge, case: FactLike, *, batch_size: int = 32) -> dict[str, float]:
    """ES/PS/NS/EM/PM/NM/RelS/DNS/Port and Port EM (fractions in [0, 1], NaN when a record has no such probe)."""
    return probe_scores_many(model, [case], batch_size=batch_size)[0]


def probe_scores_many(model: TransformerBridge, cases: Sequence[FactLike], *, batch_size: int = 32, rows_per_batch: int = 1,
                      ) -> list[dict[str, float]]:
    """:func:`probe_scores` of many records with one scorer call over all their probe rows
    (Chapter 3's evaluation: the unedited model is scored once per fact set). Same results up to float noise.
    ``rows_per_batch``: packed rows per forward pass (:func:`editlens.scoring.score_candidates`; Chapter 6's
    sequential edits run :data:`editlens.scoring.ROWS_PER_BATCH`)."""
    all_rows = [probe_rows(c) for c in cases]
    flat = [r for rows in all_rows for r in rows]
    pairs = [(r[1], r[2]) for r in flat] + [(r[1], r[3]) for r in flat]
    nll, top1 = continuation_nll(model, pairs, batch_size=batch_size, top1=True, rows_per_batch=rows_per_batch)
    good, bad, good_top1 = nll[: len(flat)].tolist(), nll[len(flat):].tolist(), top1[: len(flat)].tolist()
    out, start = [], 0
    for rows in all_rows:
        end = start + len(rows)
        out.append(_scores_from_nll(rows, good[start:end], bad[start:end], good_top1[start:end]))
        start = end
    return out


STRICT_METRICS = ("Port EM",)
"""Probe metrics scored as EasyEdit scores them, beside the book's lenient ones: ``Port EM`` is the mean over a
record's portability probes of the fraction of the new two-hop answer's tokens that are the model's top-1
prediction under teacher forcing (EasyEdit's portability, what the STEAM paper reports), where ``Port`` only asks
that the new answer beat the old one. Every probe score and every table carries them (Chapter 4 sets the two
portability scores side by side)."""


def _scores_from_nll(rows: Sequence[tuple], good: Sequence[float], bad: Sequence[float],
                     good_top1: Sequence[float]) -> dict[str, float]:
    """Per-kind success rates and probability margins from the NLLs of the good and bad continuation of each row,
    and :data:`STRICT_METRICS` from each good continuation's top-1 token accuracy (``good_top1``)."""
    by: dict[str, list[tuple[float, float]]] = {}
    for r, g, b in zip(rows, good, bad):
        by.setdefault(r[0], []).append((g, b))
    out: dict[str, float] = {}
    for kind in ("ES", "PS", "NS", "RelS", "DNS", "Port"):
        vals = by.get(kind, [])
        out[kind] = sum(g < b for g, b in vals) / len(vals) if vals else math.nan
    port = [h for r, h in zip(rows, good_top1) if r[0] == "Port"]
    out["Port EM"] = sum(port) / len(port) if port else math.nan
    mag = {"ES": "EM", "PS": "PM", "NS": "NM"}
    for kind, m in mag.items():
        vals = by.get(kind, [])
        out[m] = sum(math.exp(-g) - math.exp(-b) for g, b in vals) / len(vals) if vals else math.nan
    return out


# ---------------------------------------------------------------------------------------------
# Generations: fluency and consistency


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, n: int) -> float:
    """Entropy in bits of the n-gram distribution of ``text`` (lower-cased words and punctuation)."""
    words = _WORD.findall(text.lower())
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    if total == 0:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in grams.values())


def fluency(text: str) -> float:
    """ROME's generation entropy of one text: (2/3 H2 + 4/3 H3) / 2."""
    return (2 / 3 * ngram_entropy(text, 2) + 4 / 3 * ngram_entropy(text, 3)) / 2


def _generation_pad(model: TransformerBridge) -> int:
    """The id :func:`generate` pads with (the tokenizer's pad token, else 0)."""
    pad = model.tokenizer.pad_token_id
    return 0 if pad is None else pad


def _left_padded(model: TransformerBridge, prompts: Sequence[str]) -> tuple[Int[Tensor, "batch pos"],
                 Int[Tensor, "batch pos"]]:
    """``prompts`` encoded as :func:`encode` does and left-padded to one length: token ids and attention mask."""
    seqs = [encode(model, p) for p in prompts]
    n = max(len(s) for s in seqs)
    pad = _generation_pad(model)
    dev = model.cfg.device
    ids = torch.tensor([[pad] * (n - len(s)) + s for s in seqs], device=dev)
    mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in seqs], device=dev)
    return ids, mask


@torch.no_grad()
def generate(model: TransformerBridge, prompts: Sequence[str], *, max_new_tokens: int = 40, sample: bool = False,
             seed: int = 0,
             top_k: int = 5, row_edits: Sequence[Sequence[Any]] | None = None) -> list[str]:
    """Continuations of ``prompts`` (greedy, or seeded top-k sampling like ROME), batched with left padding.
    ``row_edits[i]``: the rank-one edits prompt ``i`` runs with (:func:`editlens.rome.rowwise.rowwise_edits`)."""
    from editlens.rome.rowwise import rowwise_edits

    tok = model.tokenizer
    hf = cast("GenerationMixin", model.original_model)  # the wrapped Hugging Face causal LM
    ids, mask = _left_padded(model, prompts)
    n = ids.shape[1]
    pad = _generation_pad(model)
    kw = dict(do_sample=True, top_k=top_k, temperature=1.0, top_p=1.0) if sample else dict(do_sample=False)
    rows = contextlib.nullcontext() if row_edits is None else rowwise_edits(model, row_edits)
    with torch.random.fork_rng(devices=[]), rows, fused_attention.enabled(model):
        torch.manual_seed(seed)
        # transformers types generate's self as its private GenerativePreTrainedModel protocol:
        out = hf.generate(ids, attention_mask=mask,  # type: ignore[misc]
                          max_new_tokens=max_new_tokens, pad_token_id=pad,
                          min_new_tokens=max_new_tokens, **kw)
    return [tok.decode(o[n:], skip_special_tokens=True) for o in out]


@torch.no_grad()
def next_token_logits(model: TransformerBridge, prompt: str, row_edits: Sequence[Any] | None = None) -> Float[Tensor,
                      "d_vocab"]:
    """The logits after ``prompt`` (encoded as :func:`generate` encodes it), on the model as it is now, in float32
    whatever its precision (a check of exactness); ``row_edits``: rank-one edits applied as per-row hooks
    (:func:`editlens.rome.rowwise.rowwise_edits`) instead of to the weights."""
    return next_token_logits_many(model, [prompt], None if row_edits is None else [list(row_edits)])[0]


@torch.no_grad()
def next_token_logits_many(model: TransformerBridge, prompts: Sequence[str],
                           row_edits: Sequence[Sequence[Any]] | None = None
                           ) -> Float[Tensor, "batch d_vocab"]:
    """:func:`next_token_logits` of many prompts in one float32 forward pass (left-padded, each row at its own
    positions); ``row_edits[i]``: the rank-one edits prompt ``i`` runs with. Padding moves a logit by float
    rounding only (about 1e-6)."""
    from editlens.rome.rowwise import rowwise_edits

    ids, mask = _left_padded(model, prompts)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = contextlib.nullcontext() if row_edits is None else rowwise_edits(model, [list(e) for e in row_edits])
    with full_precision(model), rows:
        return model.original_model(ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()


def reference_texts(fact: FactLike, descriptions: dict[str, list[str]]) -> tuple[list[str], str]:
    """Reference text about target_new, and where it came from ("descriptions" or "attribute_prompts")."""
    case = as_case(fact)
    req = case.requested_rewrite
    key = req.target_new.strip()
    if key in descriptions and descriptions[key]:
        return descriptions[key], "descriptions"
    attrs = [f"{fill_subject(p, req.subject)} {key}" for p in case.attribute_prompts]
    return attrs, "attribute_prompts"


def tfidf_similarity(texts: Sequence[str], references: Sequence[str], corpus: Sequence[str] = ()) -> float:
    """Cosine between the TF-IDF vectors of the joined ``texts`` and the joined ``references``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not texts or not references:
        return math.nan
    a, b = " ".join(texts), " ".join(references)
    vec = TfidfVectorizer().fit(list(corpus) + [a, b])
    m = vec.transform([a, b])
    num = float(m[0].multiply(m[1]).sum())
    den = math.sqrt(float(m[0].multiply(m[0]).sum()) * float(m[1].multiply(m[1]).sum()))
    return num / den if den else 0.0


# ---------------------------------------------------------------------------------------------
# The evaluation loop


def true_reference_texts(fact: FactLike, descriptions: dict[str, list[str]]) -> tuple[list[str], str]:
    """Reference text about target_true (descriptions, else the neighbourhood prompts completed with it)."""
    case = as_case(fact)
    req = case.requested_rewrite
    key = (req.target_true or "").strip()
    if key in descriptions and descriptions[key]:
        return descriptions[key], "descriptions"
    texts = [f"{fill_subject(p, req.subject)} {key}" for p in case.neighborhood_prompts]
    return (texts, "neighborhood_prompts") if key else ([], "none")


def embedding_consistency(texts: Sequence[str], new_references: Sequence[str], true_references: Sequence[str]
                          ) -> dict[str, float]:
    """SC: mean cosine of ``texts`` to ``new_references`` minus to ``true_references`` (sentence embeddings,
    every text against every reference sentence); also each side (``SC_new``, ``SC_true``). Chapter 4."""
    from editlens.sentence import embed

    if not texts or not new_references or not true_references:
        return {"SC": math.nan, "SC_new": math.nan, "SC_true": math.nan}
    g = embed(list(texts))
    new = float((g @ embed(list(new_references)).T).mean())
    true = float((g @ embed(list(true_references)).T).mean())
    return {"SC": new - true, "SC_new": new, "SC_true": true}


@dataclass
class GenerationSettings:
    n_prompts: int = 2
    max_new_tokens: int = 40
    sample: bool = False
    seed: int = 0
    semantic: bool = False  # also SC (embedding_consistency; Chapter 4); off: Chapter 3's outputs unchanged

    def as_settings(self) -> dict[str, Any]:
        """The settings as recorded in reports (the opt-in ``semantic`` only when on)."""
        return {k: v for k, v in vars(self).items() if k != "semantic" or v}


def _generation_prompts(case: CounterFactRecord, generation: GenerationSettings) -> list[str]:
    req = case.requested_rewrite
    prompts = [fill_subject(p, req.subject) for p in case.generation_prompts][: generation.n_prompts]
    return prompts or [req.text]


def _add_generation_metrics(m: dict[str, Any], case: CounterFactRecord, gens: list[str], descriptions: dict[str, list[str]],
                            corpus: Sequence[str], semantic: bool = False) -> dict[str, Any]:
    m["GE"] = sum(fluency(g) for g in gens) / len(gens)
    refs, src = reference_texts(case, descriptions)
    m["RS"] = tfidf_similarity(gens, refs, corpus)
    m["RS_source"] = src
    if semantic:
        true_refs, true_src = true_reference_texts(case, descriptions)
        m.update(embedding_consistency(gens, refs, true_refs))
        m["SC_source"] = f"{src}/{true_src}"
    m["generations"] = gens
    return m


def case_metrics(model: TransformerBridge, fact: FactLike, *, generation: GenerationSettings | None,
                 descriptions: dict[str, list[str]],
                 corpus: Sequence[str] = ()) -> dict[str, Any]:
    """All metrics of one record on the model as it is now (edited or not)."""
    case = as_case(fact)
    m: dict[str, Any] = probe_scores(model, case)
    if generation is not None:
        prompts = _generation_prompts(case, generation)
        gens = generate(model, prompts, max_new_tokens=generation.max_new_tokens, sample=generation.sample,
                        seed=generation.seed)
        _add_generation_metrics(m, case, gens, descriptions, corpus, getattr(generation, "semantic", False))
    return m


def baseline_metrics(model: TransformerBridge, facts: Sequence[FactLike], *, generation: GenerationSettings | None,
                     descriptions: dict[str, list[str]], corpus: Sequence[str] = (), batch_size: int = 32,
                     generation_batch_size: int = 32, progress: bool = False, bar: Any = None
                     ) -> list[dict[str, Any]]:
    """:func:`case_metrics` of every record on the model as it is now, computed once for the whole fact set
    (Chapter 3: the unedited model's metrics do not depend on the edit): one :func:`continuation_nll` call over
    all records' probe rows, and greedy generations batched over records. Sampled generations stay per record:
    each record's sample depends on its own seeded batch, and batching would change it."""
    cases = [as_case(c) for c in facts]
    metrics: list[dict[str, Any]] = probe_scores_many(model, cases, batch_size=batch_size)
    if generation is None:
        return metrics
    prompts = [_generation_prompts(c, generation) for c in cases]
    if generation.sample:
        gens = [generate(model, p, max_new_tokens=generation.max_new_tokens, sample=True, seed=generation.seed)
                for p in prompts]
    else:
        flat = [(p, ()) for ps in prompts for p in ps]
        texts = greedy_generations(model, flat, generation, batch_size=generation_batch_size, progress=progress,
                                   desc="unedited model: generations", bar=bar)
        gens, it = [], iter(texts)
        for ps in prompts:
            gens.append([next(it) for _ in ps])
    for m, case, g in zip(metrics, cases, gens):
        _add_generation_metrics(m, case, g, descriptions, corpus, getattr(generation, "semantic", False))
    return metrics


def greedy_generations(model: TransformerBridge, items: Sequence[tuple[str, Sequence[Any]]],
                       generation: GenerationSettings, *,
                       batch_size: int = 32, progress: bool = False, desc: str = "generations",
                       bar: Any = None) -> list[str]:
    """Greedy continuations of many ``(prompt, rank-one edits)`` items, batched over items (sorted by length, so
    little padding); each item runs with its own edits (:func:`editlens.rome.rowwise.rowwise_edits`; empty: the
    model as it is). Returns the texts in item order. ``bar``: a tqdm bar to advance by one per batch (instead
    of a bar of its own)."""
    from tqdm import tqdm

    order = sorted(range(len(items)), key=lambda j: len(encode(model, items[j][0])))  # similar lengths: less padding
    texts: dict[int, str] = {}
    batches = range(0, len(order), batch_size)
    for b in batches if bar is not None else tqdm(batches, disable=not progress, desc=desc):
        if bar is not None:
            bar.set_postfix_str(desc, refresh=False)
            bar.update(1)
        idx = order[b:b + batch_size]
        edits = [list(items[j][1]) for j in idx]
        texts.update(zip(idx, generate(model, [items[j][0] for j in idx], max_new_tokens=generation.max_new_tokens,
                                       seed=generation.seed, row_edits=edits if any(edits) else None)))
    return [texts[j] for j in range(len(items))]


def yielded_weight_edits(info: Any) -> list[Any] | None:
    """The rank-one :class:`editlens.rome.Edit` objects an editor's context yielded, when that is what it yielded
    (at most one per layer) and they carry their factors; otherwise None."""
    from editlens.rome.update import Edit

    items = list(info) if isinstance(info, (list, tuple)) else [info]
    if not items or not all(isinstance(e, Edit) and e.factors is not None for e in items):
        return None
    return items if len({e.layer for e in items}) == len(items) else None


def edit_steps(info: Any) -> float:
    """The v* steps an editor's context ran (``info``: what it yielded; the mean over its rank-one edits), or NaN
    when it yielded none. Chapters 4-6 print it beside every comparison: the methods share ROME's stop rule
    (``v_early_stop_on``), so a method that runs more steps does so because of its term."""
    from editlens.rome.update import Edit

    items = list(info) if isinstance(info, (list, tuple)) else [info]
    steps = [e.info["steps"] for e in items if isinstance(e, Edit) and "steps" in e.info]
    return sum(steps) / len(steps) if steps else math.nan


BATCHED_CHECK_ATOL = 2e-3
"""Largest |logit| difference allowed between an edit applied to the weights and the same edit run per batch row,
both in float32 (float rounding is about 1e-4 on the embedded model; an editor that changes more than its rank-one
weight edits, such as a steering hook, differs by far more)."""


def harmonic_mean(values: Iterable[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    if not v or min(v) <= 0:
        return 0.0 if v else math.nan
    return len(v) / sum(1 / x for x in v)


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean of each metric over records, as percentages (GE and RS as they are); S = harmonic mean of ES, PS, NS."""
    out: dict[str, float] = {}
    for k in METRICS:
        if k == "S":
            continue
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
        if vals:
            scale = 1.0 if k in ("GE", "RS") else 100.0
            out[k] = scale * sum(vals) / len(vals)
    if all(k in out for k in ("ES", "PS", "NS")):
        out["S"] = harmonic_mean([out["ES"], out["PS"], out["NS"]])
    out["n"] = len(rows)
    return {k: out[k] for k in (*METRICS, "n") if k in out}


@dataclass
class EvalReport:
    """Per-record results and summaries (edited and unedited)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self, which: str = "edited") -> dict[str, float]:
        return summarise([r[which] for r in self.records if which in r])

    def table(self) -> str:
        """Edited vs unedited, one column per metric."""
        rows = [(w, self.summary(w)) for w in ("unedited", "edited") if any(w in r for r in self.records)]
        keys = [k for k in (*METRICS, "n") if any(k in s for _, s in rows)]
        lines = ["model     " + "".join(f"{k:>8}" for k in keys)]
        for w, s in rows:
            lines.append(f"{w:<10}" + "".join(f"{s.get(k, math.nan):>8.1f}" if k != "n" else f"{int(s[k]):>8}"
                                              for k in keys))
        return "\n".join(lines)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"settings": self.settings, "summary": {
            w: self.summary(w) for w in ("unedited", "edited")}, "records": self.records}, indent=2, default=str) + "\n")


@dataclass
class DeferredGenerations:
    """A record measured inside its editor's context whose greedy generations run later, batched with other
    records' (:func:`run_deferred_generations`): ``metrics`` (the probe scores, completed in place), its prompts,
    the rank-one edits its rows run with, and the first prompt's float32 next-token logits on the edited weights
    (the guard that the editor's context is those edits)."""

    case: CounterFactRecord
    metrics: dict[str, Any]
    prompts: list[str]
    edits: list[Any]
    check: Tensor


def measure_edit(model: TransformerBridge, case: CounterFactRecord, info: Any, *, generation: GenerationSettings | None,
                 descriptions: dict[str, list[str]], corpus: Sequence[str] = (), batch_generations: bool = True
                 ) -> tuple[dict[str, Any], DeferredGenerations | None]:
    """Inside an editor's context (``info``: what it yielded): the record's metrics on the edited model. When the
    editor yielded rank-one :class:`editlens.rome.Edit` objects and generations are greedy, only the probes run now
    and the generations are returned as a :class:`DeferredGenerations` for :func:`run_deferred_generations`."""
    edits = yielded_weight_edits(info) if batch_generations else None
    if generation is None or generation.sample or edits is None:
        return case_metrics(model, case, generation=generation, descriptions=descriptions, corpus=corpus), None
    metrics = probe_scores(model, case)
    prompts = _generation_prompts(case, generation)
    return metrics, DeferredGenerations(case, metrics, prompts, edits, next_token_logits(model, prompts[0]))


def _check_deferred(d: DeferredGenerations, diff: float) -> None:
    """Raise when a record's edits run per row gave first-token logits ``diff`` away from its edited weights'."""
    if diff > BATCHED_CHECK_ATOL:
        raise RuntimeError(
            f"evaluate_edits: record {d.case.case_id!r}: the editor's context changes the "
            f"model beyond the rank-one weight edits it yields (first-token logits differ by {diff:.3g} "
            "between the edited weights and the same edits run per batch row). Fix: "
            "evaluate_edits(..., batch_generations=False) generates inside each editor's context.")


def run_deferred_generations(model: TransformerBridge, deferred: Sequence[DeferredGenerations],
                             generation: GenerationSettings, *,
                             descriptions: dict[str, list[str]], corpus: Sequence[str] = (), batch_size: int = 32,
                             bar: Any = None, desc: str = "edited models: generations") -> None:
    """The generations of ``deferred`` records on the unedited weights, batched, each row with its own edits
    (:mod:`editlens.rome.rowwise`); completes each record's ``metrics`` (GE, RS, SC, generations). First checks,
    record by record (``batch_size`` records per float32 forward pass), that the edits run per row give the logits
    the edited weights gave."""
    for start in range(0, len(deferred), batch_size):  # the editor's context = its rank-one edits, to rounding
        chunk = deferred[start:start + batch_size]
        per_row = next_token_logits_many(model, [d.prompts[0] for d in chunk], [d.edits for d in chunk])
        for d, logits in zip(chunk, per_row):
            _check_deferred(d, float((logits - d.check).abs().max()))
    items = [(p, d.edits) for d in deferred for p in d.prompts]
    texts = greedy_generations(model, items, generation, batch_size=batch_size, desc=desc, bar=bar)
    at = 0
    for d in deferred:
        _add_generation_metrics(d.metrics, d.case, texts[at:at + len(d.prompts)], descriptions, corpus,
                                getattr(generation, "semantic", False))
        at += len(d.prompts)


def evaluate_edits(
    model: TransformerBridge,
    cases: Sequence[FactLike],
    editor: Editor | None,
    *,
    baseline: bool = True,
    generation: GenerationSettings | None = GenerationSettings(),
    descriptions: dict[str, list[str]] | None = None,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
    batch_generations: bool = True,
    desc: str = "evaluating edits",
    while_edited: Callable[[CounterFactRecord, Any], None] | None = None,
) -> EvalReport:
    """Edit each record on its own (``editor(model, case)`` context manager), measure, restore.

    ``editor=None`` evaluates only the unedited model. ``baseline`` adds the unedited model's
    metrics beside each record; they are computed once, batched over all records, before the first
    edit (:func:`baseline_metrics`). Greedy generations of the edited models are batched too
    (``batch_generations``): inside each editor's context only the probes run, and when the editor
    yields rank-one :class:`editlens.rome.Edit` objects, every record's generations run after the last
    edit, many records per batch, each row with its own edit (:mod:`editlens.rome.rowwise`); a check of
    each record's first-token logits against its edited weights guards this. ``on_record`` is called
    for each record once all records are measured; ``desc`` labels the call's one progress bar.
    ``while_edited(case, info)`` is called inside each editor's context after the probes, with what the context
    yielded (Chapter 4 records its diagnostics of the edited model there). An editor with a ``prepare``
    method (:func:`editlens.rome.editor.rome_editor` with ``batch > 1``) is given the records still to edit
    before each edit, to compute several edits at once. Returns an :class:`EvalReport`; ``report.table()`` prints it.
    """
    from tqdm import tqdm

    descriptions = load_object_descriptions() if descriptions is None else descriptions
    corpus = [t for ts in descriptions.values() for t in ts]
    records = [as_case(c) for c in cases]
    report = EvalReport(settings={"generation": None if generation is None else generation.as_settings(),
                                  "consistency": "tfidf", "n_descriptions": len(descriptions)})
    semantic = getattr(generation, "semantic", False) if generation is not None else False
    if semantic and progress:
        from editlens.sentence import load_sentence_model

        load_sentence_model()  # loaded now (with its own messages), not inside the bar
    greedy = generation is not None and not generation.sample
    n_gen_batches = (-(-sum(len(_generation_prompts(c, generation)) for c in records) // 32)
                     if greedy and generation is not None else 0)
    # One bar for the whole call: the unedited model's generations, the edits, the edited models' generations.
    bar = tqdm(total=(n_gen_batches if baseline else 0) + (len(records) if editor is not None else 0)
               + (n_gen_batches if editor is not None and batch_generations else 0),
               disable=not progress, desc=desc, unit="step")
    unedited = (baseline_metrics(model, records, generation=generation, descriptions=descriptions, corpus=corpus,
                                 bar=bar) if baseline else None)  # once for the fact set, before any edit
    deferred: list[DeferredGenerations] = []  # records whose generations run after the last edit, batched
    prepare = getattr(editor, "prepare", None)
    for i, case in enumerate(records):
        req = case.requested_rewrite
        rec: dict[str, Any] = {"case_id": case.case_id, "subject": req.subject, "prompt": req.text,
                               "target_new": req.target_new, "target_true": req.target_true}
        if unedited is not None:
            rec["unedited"] = unedited[i]
        if editor is not None:
            t0 = time.perf_counter()
            if prepare is not None:
                prepare(model, records[i:])
                rec["prepare_seconds"] = time.perf_counter() - t0  # the edits of a batch, when one was computed
                t0 = time.perf_counter()
            with editor(model, case) as info:
                rec["edit_seconds"] = time.perf_counter() - t0
                rec["edit_info"] = _info(info)
                rec["edited"], later = measure_edit(model, case, info, generation=generation,
                                                    descriptions=descriptions, corpus=corpus,
                                                    batch_generations=batch_generations)
                if later is not None:
                    deferred.append(later)
                if while_edited is not None:
                    while_edited(case, info)
            s = report.summary("edited") if report.records else {}
            bar.set_postfix_str("edits " + " ".join(f"{k} {s[k]:.0f}" for k in ("ES", "PS", "NS") if k in s),
                                refresh=False)
            bar.update(1)
        report.records.append(rec)
    if deferred:
        assert generation is not None  # generations are deferred only when they are greedy
        run_deferred_generations(model, deferred, generation, descriptions=descriptions, corpus=corpus, bar=bar,
                                 desc="edited models: generations")
    if editor is not None:
        s = report.summary("edited")
        bar.set_postfix_str("done: " + " ".join(f"{k} {s[k]:.0f}" for k in ("ES", "PS", "NS") if k in s),
                            refresh=False)
    bar.total = bar.n  # steps that did not apply (generations inside the editors' contexts) are not counted
    bar.close()
    if on_record is not None:
        for rec in report.records:
            on_record(rec)
    return report


def _info(info: Any) -> dict:
    edits = info if isinstance(info, (list, tuple)) else [info]
    out = []
    for e in edits:
        d = getattr(e, "info", None)
        if isinstance(d, dict):
            out.append({"layer": getattr(e, "layer", None), **d})
    return {"edits": out} if out else {}

