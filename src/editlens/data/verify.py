"""Check the fact set against a model: does the model know every shipped fact?

Used in: Chapter 3 (ROME), 4 (STEAM), 5 (SADR) — the evaluation there is only meaningful on facts
the unedited model already knows.

Measure (CounterFact's): the mean per-token negative log-likelihood of ``" " + target``,
teacher-forced after the prompt (the prompt starts with BOS, as ``model.to_tokens`` does). A
*margin* is an NLL difference in nats, signed so that **positive means the model prefers the
answer that is right before the edit**:

=================  =========================================================  ==================
key                margin                                                     threshold
=================  =========================================================  ==================
``rewrite``        NLL(target_new) - NLL(target_true) on the rewrite prompt    >= ``MIN_MARGIN``
``neighborhood``   same, per neighbourhood prompt                              all >= ``MIN_MARGIN``
``relation``       NLL(target_new) - NLL(relation target), per prompt          all >= ``MIN_MARGIN``
``attribute``      NLL(target_true) - NLL(target_new): the anchor fact is      all >= ``MIN_MARGIN``
                   known (the model says target_new about the other subject)
``paraphrase``     NLL(target_new) - NLL(target_true)                          stored, no threshold
``portability``    NLL(p.target_new) - NLL(p.target_true)                      stored, no threshold
=================  =========================================================  ==================

The authoring script (``scripts/author_facts.py``) keeps a candidate record only when its
rewrite prompt passes, drops the neighbourhood/attribute/relation prompts that fail, and keeps
the record only if at least the minimum number of each survives (see
``editlens.data.counterfact.MINIMUMS``). Hence in the shipped file every stored
neighbourhood, attribute and relation margin passes. ``MIN_MARGIN`` (0.02 nats) is a little
above zero so that float noise between machines (``TOLERANCE``) cannot flip a stored pass.

Run ``python -m editlens.data.verify`` to recompute and store the margins (prints a
per-relation report); ``--check`` recomputes and exits 1 if the stored margins disagree by more
than ``TOLERANCE`` or a record fails a threshold.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, cast

import torch

from editlens.data.counterfact import (
    FACTS_PATH,
    CounterFactRecord,
    load_facts,
    save_facts,
)
from editlens.precision import full_precision
from editlens.scoring import score_continuations

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

MIN_MARGIN: float = 0.02
"""A stored/recomputed margin passes when >= MIN_MARGIN (nats)."""
TOLERANCE: float = 2e-3
"""Allowed |stored - recomputed| per margin (float noise across machines / batch shapes)."""
DECIMALS: int = 4
"""Margins are stored rounded to this many decimals."""
THRESHOLDED: tuple[str, ...] = ("rewrite", "neighborhood", "relation", "attribute")
RECORDED: tuple[str, ...] = ("paraphrase", "portability")
MODEL_LABEL = "SmolLM2-135M-Instruct (editlens embedded, dequantised Q4_1)"


class TargetScorer:
    """Mean per-token NLL of ``" " + target`` after ``prompt``, cached per pair.

    The scores are the book's one scorer's (:func:`editlens.scoring.score_continuations`: one BOS
    rule, one answer rule, every shared prefix run once), so a record verified here gets the same
    numbers as in Chapters 2-6. ``tokenizer`` must be the model's own (kept for old callers)."""

    def __init__(self, model: TransformerBridge, tokenizer: Any | None = None, *, batch_size: int = 32):
        if tokenizer is not None and tokenizer is not model.tokenizer:
            raise ValueError("TargetScorer scores with the model's own tokenizer. Fix: pass tokenizer=None "
                             "(or the tokenizer that load_model returned with this model).")
        self.model = model
        self.batch_size = batch_size
        self.cache: dict[tuple[str, str], float] = {}

    def score(self, items: Iterable[tuple[str, str]]) -> list[float]:
        """NLLs for ``(prompt, target)`` pairs, in order."""
        items = list(items)
        todo = [it for it in dict.fromkeys(items) if it not in self.cache]
        if todo:
            for key, nll in zip(todo, score_continuations(self.model, todo)):
                self.cache[key] = float(nll)
        return [self.cache[it] for it in items]


# ------------------------------------------------------------------------------------------
def _true_target(r: CounterFactRecord) -> str:
    if r.target_true is None:
        raise ValueError(f"record {r.case_id}: no target_true, so there is nothing to verify. Fix: give the fact's "
                         "true object (requested_rewrite.target_true).")
    return r.target_true


def record_items(r: CounterFactRecord) -> list[tuple[str, str]]:
    """Every (prompt, target) pair needed for one record's verification."""
    tt, tn = _true_target(r), r.target_new
    out = [(r.prompt, tt), (r.prompt, tn)]
    for p in (*r.paraphrase_prompts, *r.neighborhood_prompts, *r.attribute_prompts):
        out += [(p, tt), (p, tn)]
    for rp in r.relation_prompts:
        out += [(rp.prompt, rp.target), (rp.prompt, tn)]
    for pp in r.portability_prompts:
        if pp.target_true is not None:
            out += [(pp.prompt, pp.target_true), (pp.prompt, pp.target_new)]
    return out


def margins_for(r: CounterFactRecord, nll: dict[tuple[str, str], float], *, label: str = MODEL_LABEL
                ) -> dict[str, Any]:
    """The verification dict of one record from a filled NLL cache (positive = right answer preferred)."""
    tt, tn = _true_target(r), r.target_new

    def m(prompt: str, good: str, bad: str) -> float:
        return round(nll[(prompt, bad)] - nll[(prompt, good)], DECIMALS)

    return {
        "model": label,
        "measure": "NLL difference (nats) of mean per-token NLL; positive = pre-edit answer preferred",
        "nll_true": round(nll[(r.prompt, tt)], DECIMALS),
        "nll_new": round(nll[(r.prompt, tn)], DECIMALS),
        "rewrite": m(r.prompt, tt, tn),
        "paraphrase": [m(p, tt, tn) for p in r.paraphrase_prompts],
        "neighborhood": [m(p, tt, tn) for p in r.neighborhood_prompts],
        "attribute": [m(p, tn, tt) for p in r.attribute_prompts],
        "relation": [m(rp.prompt, rp.target, tn) for rp in r.relation_prompts],
        "portability": [m(pp.prompt, pp.target_true, pp.target_new) for pp in r.portability_prompts
                        if pp.target_true is not None],
    }


def compute_verifications(model: TransformerBridge, records: Sequence[CounterFactRecord], *,
                          tokenizer: Any | None = None,
                          batch_size: int = 32, scorer: TargetScorer | None = None,
                          label: str = MODEL_LABEL) -> list[dict[str, Any]]:
    """Recompute the verification dict of every record (one batched pass over all prompts), in float32
    whatever the model's precision: the shipped margins are a property of the weights, not of a CPU."""
    scorer = scorer or TargetScorer(model, tokenizer, batch_size=batch_size)
    items = [it for r in records for it in record_items(r)]
    with full_precision(model):
        scorer.score(items)
    return [margins_for(r, scorer.cache, label=label) for r in records]


def known_records(model: TransformerBridge, records: Sequence[CounterFactRecord], *, label: str = MODEL_LABEL,
                  min_margin: float = MIN_MARGIN) -> list[CounterFactRecord]:
    """The records ``model`` knows, checked the way the shipped set was authored (``scripts/author_facts.py``):
    the rewrite margin must pass; neighbourhood, attribute and relation prompts that fail are dropped, and a record
    is kept only while at least ``MINIMUMS`` of each survive. The kept records carry ``model``'s margins.

    Taught in: Setup ("The second model") and the "Method or model?" page: every experiment on a model runs on
    facts that model knows."""
    from dataclasses import replace

    from editlens.data.counterfact import MINIMUMS

    scorer = TargetScorer(model)
    kept = []
    for r, v in zip(records, compute_verifications(model, records, scorer=scorer, label=label)):
        if v["rewrite"] < min_margin:
            continue
        nb = tuple(p for p, x in zip(r.neighborhood_prompts, v["neighborhood"]) if x >= min_margin)
        at = tuple(p for p, x in zip(r.attribute_prompts, v["attribute"]) if x >= min_margin)
        rl = tuple(p for p, x in zip(r.relation_prompts, v["relation"]) if x >= min_margin)
        if (len(nb) < MINIMUMS["neighborhood_prompts"] or len(at) < MINIMUMS["attribute_prompts"]
                or len(rl) < MINIMUMS["relation_prompts"]):
            continue
        kept.append(replace(r, neighborhood_prompts=nb, attribute_prompts=at, relation_prompts=rl))
    verifs = compute_verifications(model, kept, scorer=scorer, label=label)  # every pair is cached
    return [replace(r, verification=v) for r, v in zip(kept, verifs)]


def model_label(name: str | None) -> str:
    """How a verification names the model: the shipped set's label for the default model, the embedded model's
    title for the others, else the name given."""
    from editlens import embedded

    spec = embedded.lookup(name)
    if spec is embedded.DEFAULT:
        return MODEL_LABEL
    return f"{spec.title} (editlens embedded, dequantised from {spec.gguf_name})" if spec else str(name)


def failures(v: Mapping[str, Any], *, min_margin: float = MIN_MARGIN) -> list[str]:
    """Threshold failures of one verification dict (empty = the record passes)."""
    out = []
    if v["rewrite"] < min_margin:
        out.append(f"rewrite margin {v['rewrite']:+.3f}")
    for key in ("neighborhood", "relation", "attribute"):
        bad = [x for x in v[key] if x < min_margin]
        if bad:
            out.append(f"{len(bad)}/{len(v[key])} {key} margins < {min_margin}")
    return out


def passes(v: Mapping[str, Any], *, min_margin: float = MIN_MARGIN) -> bool:
    return not failures(v, min_margin=min_margin)


def disagreements(stored: Mapping[str, Any] | None, fresh: dict[str, Any], *, tol: float = TOLERANCE) -> list[str]:
    """Where stored margins differ from recomputed ones by more than ``tol`` (or are missing)."""
    if stored is None:
        return ["no stored verification"]
    out = []
    for key in ("rewrite", *THRESHOLDED[1:], *RECORDED):
        a, b = stored.get(key), fresh[key]
        if isinstance(b, list):
            if not isinstance(a, list) or len(a) != len(b):
                out.append(f"{key}: stored {a!r} has another length than recomputed ({len(b)})")
                continue
            bad = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if abs(x - y) > tol]
            out += [f"{key}[{i}]: stored {x:+.4f}, recomputed {y:+.4f}" for i, x, y in bad]
        elif a is None or abs(a - b) > tol:
            out.append(f"{key}: stored {a}, recomputed {b:+.4f}")
    return out


def _rate(xs: list[float]) -> str:
    return f"{sum(x > 0 for x in xs) / len(xs):.2f}" if xs else "  - "


def report(records: Sequence[CounterFactRecord], verifs: Sequence[Mapping[str, Any]]) -> str:
    """Per-relation table: records, passing records, and the share of positive margins per probe."""
    by_rel: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_rel[r.relation_id or ""].append(i)
    head = f"{'relation':10s} {'n':>4s} {'pass':>4s} {'rewr':>5s} {'para':>5s} {'neigh':>5s} {'attr':>5s} {'rel':>5s} {'port':>5s}  mean rewrite margin"
    lines = [head, "-" * len(head)]
    for rel in sorted(by_rel):
        idx = by_rel[rel]
        vs = [verifs[i] for i in idx]
        cols = [_rate([v["rewrite"] for v in vs])]
        for key in ("paraphrase", "neighborhood", "attribute", "relation", "portability"):
            cols.append(_rate([x for v in vs for x in v[key]]))
        mean_rw = sum(v["rewrite"] for v in vs) / len(vs)
        lines.append(f"{rel:10s} {len(idx):4d} {sum(passes(v) for v in vs):4d} " + " ".join(f"{c:>5s}" for c in cols)
                     + f"  {mean_rw:+.2f}")
    allv = list(verifs)
    lines.append("-" * len(head))
    lines.append(f"{'all':10s} {len(allv):4d} {sum(passes(v) for v in allv):4d} "
                 + " ".join(f"{c:>5s}" for c in [_rate([v['rewrite'] for v in allv])]
                            + [_rate([x for v in allv for x in v[k]]) for k in
                               ("paraphrase", "neighborhood", "attribute", "relation", "portability")]))
    lines.append("Columns: share of margins > 0 (rewr = rewrite prompt, para = paraphrases, neigh = neighbourhood, "
                 "attr = attribute/anchor facts, rel = relation prompts, port = portability). "
                 f"pass = records meeting every threshold (>= {MIN_MARGIN} nats).")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m editlens.data.verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", type=Path, default=FACTS_PATH, help="facts file (default: the shipped facts.json)")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if stored margins disagree or a record fails")
    ap.add_argument("--out", type=Path, default=None, help="write the re-verified file here instead of --path")
    ap.add_argument("--model", default=None, help="model name for editlens.load_model (default: embedded)")
    ap.add_argument("--limit", type=int, default=None, help="--check only the first N records (a quick spot check)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (be polite on shared CPUs)")
    ap.add_argument("--known-only", action="store_true",
                    help="write to --out only the records --model knows, with its failing probes dropped (the "
                         "authoring rule; e.g. a second model's own fact set)")
    args = ap.parse_args(argv)
    if args.known_only and (args.out is None or args.check):
        ap.error("--known-only writes a new file: give --out PATH (and not --check)")

    import editlens

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    records = load_facts(args.path)
    if args.limit is not None:
        if not args.check:
            ap.error("--limit only goes with --check (writing back a partial file would drop records)")
        records = records[:args.limit]
    model, tok = editlens.load_model(args.model)
    t1 = time.time()
    label = model_label(args.model)
    if args.known_only:
        kept = known_records(model, records, label=label)
        print(report(kept, [cast(Mapping[str, Any], r.verification) for r in kept]))  # known_records sets each
        save_facts(kept, args.out)
        print(f"\n{len(records)} records, {len(kept)} known by {label}; model load {t1 - t0:.1f}s, verification "
              f"{time.time() - t1:.1f}s; wrote {args.out}")
        return 0
    verifs = compute_verifications(model, records, tokenizer=tok, batch_size=args.batch_size, label=label)
    t2 = time.time()
    print(report(records, verifs))
    print(f"\n{len(records)} records; model load {t1 - t0:.1f}s, verification {t2 - t1:.1f}s")

    failed = [(r, failures(v)) for r, v in zip(records, verifs) if failures(v)]
    for r, why in failed:
        print(f"FAIL case_id {r.case_id} ({r.subject!r}, {r.relation_id}): {'; '.join(why)}")
    if args.check:
        bad = [(r, disagreements(r.verification, v)) for r, v in zip(records, verifs)]
        bad = [(r, d) for r, d in bad if d]
        for r, d in bad[:50]:
            print(f"DISAGREE case_id {r.case_id} ({r.subject!r}): {'; '.join(d[:3])}")
        ok = not bad and not failed
        print("check:", "OK — stored margins match the model" if ok else f"FAILED ({len(bad)} disagree, {len(failed)} fail thresholds)")
        return 0 if ok else 1
    from dataclasses import replace

    updated = [replace(r, verification=v) for r, v in zip(records, verifs)]
    out = args.out or args.path
    save_facts(updated, out)
    print(f"wrote {out}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
