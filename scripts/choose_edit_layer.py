"""Choose a model's ROME edit layer the way Chapter 3 teaches, and store the evidence beside the book.

1. Causal tracing (`editlens.tracing.average_indirect_effects`): single-layer MLP restoration at the subject's
   last token, 10 noisy runs per fact, over the facts the model knows among N spread over relations.
2. Edits at the candidate layers on those known facts (`python -m editlens edit`), each with both ways of
   writing v* where the block has a norm after its MLP (`--v-on-ray nearest` / `as_optimised`).

The layer and write with the highest S (CounterFact's harmonic mean of ES, PS and NS) go into the registry
(`editlens.rome.hparams`); `tests/test_second_model.py` recomputes the table from the stored rows.

    .venv/bin/python scripts/choose_edit_layer.py --model gemma3-270m --layers 3 5 [--facts 40] [--skip-tracing]

Writes `book/results/<model>/edit-layer/`: tracing.json, known-facts.json, layer<L>-<write>.json. About 3 minutes
of tracing and 5 minutes per edit run for Gemma 3 270M on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def trace(model_name: str, n_facts: int, out: Path) -> None:
    """Causal tracing of the MLPs (`editlens.tracing.trace_mlps`); the facts the model knows go to
    known-facts.json."""
    import editlens
    from editlens.data import as_request, load_facts, save_facts, spread_over_relations
    from editlens.tracing import trace_mlps

    model, _ = editlens.load_model(model_name, device="cpu")
    facts = spread_over_relations(load_facts(), n_facts)
    tr, summary = trace_mlps(model, facts, model_name=model_name,
                             facts_source=f"spread_over_relations(load_facts(), {n_facts})")
    known = [f for f in facts if as_request(f).text in set(tr.traced)]
    save_facts(known, out / "known-facts.json")
    (out / "tracing.json").write_text(json.dumps(summary, indent=1) + "\n")
    ie = ", ".join(f"{i}: {100 * x:.1f}" for i, x in enumerate(summary["indirect_effect_subject_last"]))
    print(f"{tr.n_facts} known facts traced ({tr.n_skipped} skipped); MLP indirect effect (points) by layer: {ie}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a name load_model accepts, e.g. gemma3-270m")
    ap.add_argument("--layers", type=int, nargs="+", required=True, help="candidate edit layers")
    ap.add_argument("--facts", type=int, default=40, help="facts spread over relations to trace")
    ap.add_argument("--skip-tracing", action="store_true", help="reuse the stored tracing.json / known-facts.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = ROOT / "book" / "results" / args.model / "edit-layer"
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_tracing:
        trace(args.model, args.facts, out)
    import editlens
    from editlens.anatomy import has_norm_after_mlp

    model, _ = editlens.load_model(args.model, device="cpu")
    writes = ["nearest", "as_optimised"] if has_norm_after_mlp(model, args.layers[0]) else ["as_optimised"]
    del model
    known = out / "known-facts.json"
    n = len(json.loads(known.read_text()))
    for layer in args.layers:
        for write in writes:
            cmd = [sys.executable, "-m", "editlens", "edit", "--model", args.model, "--layer", str(layer),
                   "--data", str(known.relative_to(ROOT)), "--limit", str(n), "--no-generation", "--threads", "1",
                   "--device", "cpu", "--out", str((out / f"layer{layer}-{write}.json").relative_to(ROOT))]
            if len(writes) > 1:
                cmd[cmd.index("--data"):cmd.index("--data")] = ["--v-on-ray", write]
            print(" ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
