"""Does STEAM's centred alignment move the representation, and what does that buy? (issue 29, item 2)

Runs ROME, STEAM at lambda = 1 and a positive control (a lambda large enough that the alignment dominates) on
the same facts, with the paper's design of STEAM (:data:`editlens.steam.PAPER_DESIGN`: reference-triple anchors
that are never a probe the edit is judged on, alignment of relation-centred states). Beside the book's metrics,
each edited model is measured by the centred cosine of its last-token states to the new object's centred anchors
(:func:`editlens.steam.aligned_cosine`, mean over the aligned layers) on the rewrite prompt (the state the term
aligns), on the paraphrases (states it never saw) and on the portability prompts, and by how far the rewrite
prompt's cosine moved from the unedited model's. Every table pairs the arms over the same facts, with intervals
that resample whole relations and Holm's correction.

    python scripts/steam_alignment.py --model smollm2-135m --out book/results/steam-alignment/smollm2-135m

Writes ``per_record.jsonl``, ``summary.csv/.md``, ``figure.png`` and ``settings.json`` (editlens.compare's
format), and ``centring.json``: on the unedited model, the rewrite prompt's cosine to the new object's anchors
raw, centred on the pool's overall mean, and centred on relations (the package's design), and to the true
object's anchors centred on relations (which of the two objects the centred state is nearer). About 12 minutes
on one thread for 50 facts and three arms (bf16); ``--centring-only`` writes ``centring.json`` alone (a minute).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import editlens
from editlens import compare
from editlens.data import (
    CounterFactRecord,
    facts_path,
    load_facts,
    spread_over_relations,
)
from editlens.evaluate import GenerationSettings, fill_subject
from editlens.rome import get_hparams, rome_editor, stats_for
from editlens.steam import (
    PAPER_DESIGN,
    AnchorBank,
    NotEnoughAnchorsError,
    aligned_cosine,
    default_layers,
    last_token_states,
    steam_editor,
)

COSINES = ("cos rewrite", "cos moved", "cos paraphrase", "cos portability")
METRICS = ("ES", "PS", "NS", "RelS", "DNS", "Port", "Port EM", "GE", "SC", *COSINES, "steps")


class Measured:
    """An editor whose context also measures the centred cosines of the edited model (``store[(label, id)]``);
    every other attribute (``prepare`` of a batched editor) is the wrapped editor's."""

    def __init__(self, editor: Any, measure: Any, label: str, store: dict):
        self._editor, self._measure, self._label, self._store = editor, measure, label, store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._editor, name)

    @contextlib.contextmanager
    def __call__(self, model: Any, case: CounterFactRecord):
        with self._editor(model, case) as info:
            self._store[(self._label, case.case_id)] = self._measure(model, case)
            yield info


def unedited_geometry(model: Any, bank: AnchorBank, cases: list, layers: list[int]) -> dict:
    """Per fact, the unedited rewrite prompt's cosine (mean over ``layers``) to the new object's anchors: raw,
    centred on the pool's overall mean, centred on relations; and to the true object's anchors centred on
    relations (NaN where the true object has too few anchors). Means over the facts in ``means``."""
    shared = bank.shared_components()
    rows = []
    for case in cases:
        req = case.requested_rewrite
        h = last_token_states(model, [req.text], layers).transpose(0, 1)  # [layer, 1, d_model]
        new = bank.for_case(case)
        overall = shared.overall[[shared.layers.index(layer) for layer in layers]]
        mu = shared.of(str(req.relation_id), layers)
        row = {"case_id": case.case_id, "relation": str(req.relation_id),
               "raw": float(aligned_cosine(h, new.at(layers)).mean()),
               "overall-centred": float(aligned_cosine(h, new.at(layers) - overall, overall).mean()),
               "relation-centred": float(aligned_cosine(h, shared.centred_anchor(new, layers), mu).mean())}
        try:
            true = bank.get(req.target_true, exclude=bank.excluded(case))
            row["relation-centred, true object"] = float(
                aligned_cosine(h, shared.centred_anchor(true, layers), mu).mean())
        except NotEnoughAnchorsError:
            row["relation-centred, true object"] = float("nan")
        rows.append(row)
    keys = [k for k in rows[0] if k not in ("case_id", "relation")]
    return {"layers": layers, "n_facts": len(rows),
            "means": {k: float(np.nanmean([r[k] for r in rows])) for k in keys},
            "n_true_object": int(sum(not math.isnan(r["relation-centred, true object"]) for r in rows)),
            "rows": rows}


RESULTS = Path(__file__).resolve().parents[1] / "book" / "results" / "steam-alignment"
MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma 3 270M"}
PAGE = Path(__file__).resolve().parents[1] / "book" / "steam-design.md"


def centring_markdown(results: Path = RESULTS) -> str:
    """The page's table of the unedited geometry: one row per model with a stored ``centring.json``."""
    lines = [("| model | facts | raw | centred on all prompts | centred on relations | centred on relations, "
              "true object |"), "|---|---:|---:|---:|---:|---:|"]
    for key, label in MODELS.items():
        path = results / key / "centring.json"
        if path.exists():
            c = json.loads(path.read_text(encoding="utf-8"))
            m = c["means"]
            lines.append(f"| {label} | {c['n_facts']} | {m['raw']:+.3f} | {m['overall-centred']:+.3f} | "
                         f"{m['relation-centred']:+.3f} | {m['relation-centred, true object']:+.3f} "
                         f"({c['n_true_object']} facts) |")
    return "\n".join(lines)


def write_page(page: Path = PAGE) -> None:
    """Put :func:`centring_markdown` between the page's ``table:centring`` markers."""
    text = page.read_text(encoding="utf-8")
    head, rest = text.split("<!-- table:centring -->\n", 1)
    _, tail = rest.split("<!-- /table:centring -->", 1)
    page.write_text(f"{head}<!-- table:centring -->\n{centring_markdown()}\n<!-- /table:centring -->{tail}",
                    encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an embedded model (default SmolLM2-135M-Instruct)")
    ap.add_argument("--n", type=int, default=50, help="facts, spread over relations (Chapter 4's 50)")
    ap.add_argument("--lambdas", default="1,20", help="STEAM's lambdas: the default and the positive control")
    ap.add_argument("--batch", type=int, default=8, help="facts whose v* are optimised together")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="the run's folder")
    ap.add_argument("--centring-only", action="store_true", help="write centring.json only")
    ap.add_argument("--no-generation", action="store_true", help="skip GE and SC (generation dominates the cost on "
                    "a model with a large vocabulary: Gemma's 262k)")
    ap.add_argument("--write-page", action="store_true", help="only rewrite book/steam-design.md's centring table "
                    "from the stored centring.json files")
    args = ap.parse_args()
    if args.write_page:
        write_page()
        return
    if args.out is None:
        ap.error("--out is required (e.g. --out book/results/steam-alignment/smollm2-135m)")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    model, _ = editlens.load_model(args.model)
    facts = load_facts(facts_path(args.model))
    pool = facts + load_facts(facts_path(None))  # the --data file plus the book's facts, as the command line pools
    hp = get_hparams(model)
    stats = stats_for(model, hp)
    bank = AnchorBank(model, pool, **PAPER_DESIGN)
    candidates = spread_over_relations(facts, args.n)
    cov = bank.coverage(candidates)
    cases = [c for c, ok in zip(candidates, cov["ok"]) if ok]
    print(f"{len(cases)} of {len(candidates)} facts have >= {bank.min_anchors} reference anchors")
    bank.precompute_cases(cases)
    shared = bank.shared_components()
    layers = default_layers(hp.layer, model.cfg.n_layers)
    centring = unedited_geometry(model, bank, cases, layers)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "centring.json").write_text(json.dumps(centring, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(centring["means"], indent=1))
    if args.centring_only:
        return

    def measure(m: Any, case: CounterFactRecord) -> dict[str, float]:
        req = case.requested_rewrite
        phi = shared.centred_anchor(bank.for_case(case), layers)
        mu = shared.of(str(req.relation_id), layers)
        groups = {"rewrite": [req.text],
                  "paraphrase": [fill_subject(p, req.subject) for p in case.paraphrase_prompts],
                  "portability": [fill_subject(q.prompt, req.subject) for q in case.portability_prompts]}
        out = {}
        for kind, prompts in groups.items():
            if prompts:
                states = last_token_states(m, prompts, layers)  # [prompt, layer, d_model]
                out[f"cos {kind}"] = float(aligned_cosine(states.transpose(0, 1), phi, mu).mean())
            else:
                out[f"cos {kind}"] = float("nan")
        return out

    before = {c.case_id: measure(model, c) for c in cases}
    lambdas = [float(x) for x in args.lambdas.split(",")]
    store: dict = {}
    editors = {"rome": Measured(rome_editor(hp, stats, batch=args.batch), measure, "rome", store)}
    for lam in lambdas:
        label = f"steam λ={lam:g}"
        editors[label] = Measured(steam_editor(hp, stats, bank, lam, layers, batch=args.batch), measure, label, store)
    generation = None if args.no_generation else GenerationSettings(semantic=True)
    rows = compare.run_methods(model, cases, editors, generation=generation)
    for col in COSINES:
        rows[col] = np.nan
    for i, r in rows.iterrows():
        got = store[(r["method"], r["case_id"])]
        for kind in ("rewrite", "paraphrase", "portability"):
            rows.loc[i, f"cos {kind}"] = got[f"cos {kind}"]
        rows.loc[i, "cos moved"] = got["cos rewrite"] - before[r["case_id"]]["cos rewrite"]
    minutes = (time.perf_counter() - start) / 60
    settings = {"model": args.model or "smollm2-135m", "n_facts": len(cases), "n_candidates": len(candidates),
                "lambdas": lambdas, "layers": layers, "batch": args.batch, "threads": args.threads,
                "generation": None if generation is None else generation.as_settings(),
                "steam": bank.design, "precision": editlens.precision.of(model).describe(),
                "unedited": {"cos rewrite": float(np.mean([b["cos rewrite"] for b in before.values()])),
                             "cos paraphrase": float(np.nanmean([b["cos paraphrase"] for b in before.values()])),
                             "cos portability": float(np.nanmean([b["cos portability"] for b in before.values()]))},
                "minutes": round(minutes, 1)}
    paths = compare.write_outputs(Path(args.out), rows, settings=settings, cluster="relation", correction="holm",
                                  metrics=[m for m in METRICS if m in rows.columns])
    print(paths["summary_md"].read_text())
    print(f"{minutes:.1f} minutes")


if __name__ == "__main__":
    main()
