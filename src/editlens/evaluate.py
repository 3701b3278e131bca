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
from typing import Any, Callable, ContextManager, Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from editlens.rome.keys import encode, pad_batch
from editlens.rome.requests import as_case, as_request, with_leading_space

Editor = Callable[[Any, dict], ContextManager]
"""``editor(model, case)`` returns a context manager inside which the model is edited (Chapters 3-6 each give one)."""

METRICS = ("ES", "PS", "NS", "S", "EM", "PM", "NM", "RelS", "DNS", "Port", "GE", "RS")


# ---------------------------------------------------------------------------------------------
# Scoring continuations


@torch.no_grad()
def continuation_nll(model: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32
                     ) -> Float[Tensor, "n_pairs"]:
    """Mean per-token NLL of each ``continuation`` after ``prompt`` (continuations get a leading space)."""
    seqs, spans = [], []
    for prompt, cont in pairs:
        p = encode(model, prompt)
        c = encode(model, with_leading_space(cont), bos=False)
        if not c:
            raise ValueError(f"The continuation {cont!r} tokenises to nothing.")
        seqs.append(p + c)
        spans.append((len(p), len(c)))
    out = torch.empty(len(seqs))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        tokens, _ = pad_batch(model, [seqs[i] for i in idx])
        logits = model(tokens)
        lp = torch.log_softmax(logits.float(), -1)
        for j, i in enumerate(idx):
            start, n = spans[i]
            pos = torch.arange(start - 1, start - 1 + n, device=lp.device)
            tgt = tokens[j, start:start + n]
            out[i] = -lp[j, pos, tgt].mean().cpu()
    return out


def _fill(prompt: str, subject: str) -> str:
    return prompt.format(subject) if "{}" in prompt else prompt


def _probe_pairs(case: dict) -> list[tuple[str, str, str, str, str]]:
    """(probe kind, prompt, good continuation, bad continuation) rows for one case; success = good beats bad."""
    rr = case["requested_rewrite"]
    req = as_request(case)
    new, true = req.target_new, req.target_true
    rows = []
    if true is not None:
        rows.append(("ES", req.text, new, true))
        for p in case.get("paraphrase_prompts") or []:
            rows.append(("PS", _fill(p, req.subject), new, true))
        for p in case.get("neighborhood_prompts") or []:
            rows.append(("NS", _fill(_text(p), req.subject), true, new))
            rows.append(("DNS", f"{req.text} {new}. {_fill(_text(p), req.subject)}", true, new))
    for r in case.get("relation_prompts") or []:
        tgt = r.get("target") or r.get("target_true")
        if tgt and tgt.strip() != new.strip():
            rows.append(("RelS", _fill(r["prompt"], req.subject), tgt, new))
    for r in case.get("portability_prompts") or []:
        if r.get("target_new") and r.get("target_true"):
            rows.append(("Port", _fill(r["prompt"], req.subject), r["target_new"], r["target_true"]))
    return rows


def _text(p: Any) -> str:
    return p if isinstance(p, str) else (p.get("prompt") if isinstance(p, dict) else str(p))


def probe_scores(model: Any, case: Any, *, batch_size: int = 32) -> dict[str, float]:
    """ES/PS/NS/EM/PM/NM/RelS/DNS/Port (fractions in [0, 1], NaN when a record has no such probe)."""
    case = as_case(case)
    rows = _probe_pairs(case)
    pairs = [(r[1], r[2]) for r in rows] + [(r[1], r[3]) for r in rows]
    nll = continuation_nll(model, pairs, batch_size=batch_size) if rows else torch.empty(0)
    good, bad = nll[: len(rows)], nll[len(rows):]
    by: dict[str, list[tuple[float, float]]] = {}
    for r, g, b in zip(rows, good.tolist(), bad.tolist()):
        by.setdefault(r[0], []).append((g, b))
    out: dict[str, float] = {}
    for kind in ("ES", "PS", "NS", "RelS", "DNS", "Port"):
        vals = by.get(kind, [])
        out[kind] = sum(g < b for g, b in vals) / len(vals) if vals else math.nan
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


@torch.no_grad()
def generate(model: Any, prompts: Sequence[str], *, max_new_tokens: int = 40, sample: bool = False, seed: int = 0,
             top_k: int = 5) -> list[str]:
    """Continuations of ``prompts`` (greedy, or seeded top-k sampling like ROME), batched with left padding."""
    tok = model.tokenizer
    hf = getattr(model, "original_model", None)
    seqs = [encode(model, p) for p in prompts]
    n = max(len(s) for s in seqs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    dev = model.cfg.device
    ids = torch.tensor([[pad] * (n - len(s)) + s for s in seqs], device=dev)
    mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in seqs], device=dev)
    kw = dict(do_sample=True, top_k=top_k, temperature=1.0, top_p=1.0) if sample else dict(do_sample=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=pad,
                          min_new_tokens=max_new_tokens, **kw)
    return [tok.decode(o[n:], skip_special_tokens=True) for o in out]


def _descriptions_path() -> Path:
    return Path(__file__).parent / "data" / "object_descriptions.json"


def load_object_descriptions(path: str | Path | None = None) -> dict[str, list[str]]:
    """Reference texts per object, from ``object_descriptions.json`` ({obj: text | [texts]} or a list of
    {"object"/"name", "description"/"text"/"texts"}). Empty when the file does not exist."""
    p = Path(path) if path else _descriptions_path()
    if not p.exists():
        return {}
    try:
        from editlens.data import load_object_descriptions as _load

        return {k.strip(): list(v) for k, v in _load(p).items()}
    except (ImportError, ValueError):
        pass
    raw = json.loads(p.read_text())
    out: dict[str, list[str]] = {}
    items = raw.items() if isinstance(raw, dict) else [
        (r.get("object") or r.get("name") or r.get("str"), r.get("texts") or r.get("description") or r.get("text"))
        for r in raw]
    for k, v in items:
        if k is None or v is None:
            continue
        if isinstance(v, dict):
            v = v.get("texts") or v.get("description") or v.get("text") or []
        out[str(k).strip()] = [v] if isinstance(v, str) else list(v)
    return out


def reference_texts(case: dict, descriptions: dict[str, list[str]]) -> tuple[list[str], str]:
    """Reference text about target_new, and where it came from ("descriptions" or "attribute_prompts")."""
    req = as_request(case)
    key = req.target_new.strip()
    if key in descriptions and descriptions[key]:
        return descriptions[key], "descriptions"
    attrs = [f"{_fill(_text(p), req.subject)} {key}" for p in case.get("attribute_prompts") or []]
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


@dataclass
class GenerationSettings:
    n_prompts: int = 2
    max_new_tokens: int = 40
    sample: bool = False
    seed: int = 0


def case_metrics(model: Any, case: dict, *, generation: GenerationSettings | None, descriptions: dict[str, list[str]],
                 corpus: Sequence[str] = ()) -> dict[str, Any]:
    """All metrics of one record on the model as it is now (edited or not)."""
    m: dict[str, Any] = probe_scores(model, case)
    if generation is not None:
        req = as_request(case)
        prompts = [_fill(_text(p), req.subject) for p in (case.get("generation_prompts") or [])][: generation.n_prompts]
        if not prompts:
            prompts = [req.text]
        gens = generate(model, prompts, max_new_tokens=generation.max_new_tokens, sample=generation.sample,
                        seed=generation.seed)
        m["GE"] = sum(fluency(g) for g in gens) / len(gens)
        refs, src = reference_texts(case, descriptions)
        m["RS"] = tfidf_similarity(gens, refs, corpus)
        m["RS_source"] = src
        m["generations"] = gens
    return m


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


def evaluate_edits(
    model: Any,
    cases: Sequence[Any],
    editor: Editor | None,
    *,
    baseline: bool = True,
    generation: GenerationSettings | None = GenerationSettings(),
    descriptions: dict[str, list[str]] | None = None,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> EvalReport:
    """Edit each record on its own (``editor(model, case)`` context manager), measure, restore.

    ``editor=None`` evaluates only the unedited model. ``baseline`` adds the unedited model's
    metrics beside each record. Returns an :class:`EvalReport`; ``report.table()`` prints it.
    """
    from tqdm import tqdm

    descriptions = load_object_descriptions() if descriptions is None else descriptions
    corpus = [t for ts in descriptions.values() for t in ts]
    cases = [as_case(c) for c in cases]
    report = EvalReport(settings={"generation": None if generation is None else vars(generation),
                                  "consistency": "tfidf", "n_descriptions": len(descriptions)})
    bar = tqdm(cases, disable=not progress, desc="evaluating edits")
    for case in bar:
        req = as_request(case)
        rec: dict[str, Any] = {"case_id": case.get("case_id"), "subject": req.subject, "prompt": req.text,
                               "target_new": req.target_new, "target_true": req.target_true}
        if baseline:
            rec["unedited"] = case_metrics(model, case, generation=generation, descriptions=descriptions, corpus=corpus)
        if editor is not None:
            t0 = time.perf_counter()
            with editor(model, case) as info:
                rec["edit_seconds"] = time.perf_counter() - t0
                rec["edit_info"] = _info(info)
                rec["edited"] = case_metrics(model, case, generation=generation, descriptions=descriptions,
                                             corpus=corpus)
        report.records.append(rec)
        if on_record is not None:
            on_record(rec)
        if editor is not None and progress:
            s = report.summary("edited")
            bar.set_postfix({k: f"{s[k]:.0f}" for k in ("ES", "PS", "NS") if k in s})
    return report


def _info(info: Any) -> dict:
    edits = info if isinstance(info, (list, tuple)) else [info]
    out = []
    for e in edits:
        d = getattr(e, "info", None)
        if isinstance(d, dict):
            out.append({"layer": getattr(e, "layer", None), **d})
    return {"edits": out} if out else {}


def rome_editor(hparams: Any, stats: Any = None, extra_losses: Sequence[Any] = ()) -> Editor:
    """The :data:`Editor` for ROME (Chapter 3); Chapters 5-6 pass ``extra_losses``."""
    from editlens.rome.update import edited

    def editor(model: Any, case: dict) -> ContextManager:
        return edited(model, [case], hparams, stats, extra_losses)

    return editor
