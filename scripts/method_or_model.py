"""The runs behind the page "Method or model?" (book/method-or-model.md; issue 30, item 3).

Every headline experiment of the book, on each embedded model, by the code the chapters run:

- ``replay``: execute a chapter (its jupytext source, with papermill) on a model, at the chapter's default
  parameters, and store what its headline tables hold (the objects named in ``DUMPS``) as CSV/JSON. The
  chapter is the experiment: nothing here re-implements it. The executed notebook goes to ``--notebook``
  (not stored in the book: the book's own copy is the SmolLM2 run).
- ``trace``: causal tracing of the MLPs (Chapter 3) on the first N facts, spread over relations, that the
  model knows (`editlens.tracing.average_indirect_effects`, 10 noisy runs per fact).
- ``tables``: the page's tables, from the stored runs only (``editlens.method_or_model``); a test recomputes
  them.

    .venv/bin/python scripts/method_or_model.py replay 01_consistency_heads --model gemma3-270m
    .venv/bin/python scripts/method_or_model.py trace --model gemma3-270m --facts 160
    .venv/bin/python scripts/method_or_model.py tables

The edit experiments (Chapters 3-6) are the command line's ``compare`` (see the page for the commands).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "book" / "results" / "method-or-model"

# What each replayed chapter stores: the objects behind its headline tables, by their names in the chapter.
# tests/test_method_or_model.py checks that every name is still assigned in the chapter's source.
DUMPS: dict[str, dict[str, str]] = {
    "01_consistency_heads": {
        "this_run": "json",  # the chapter's summary table (section 8), as printed
        "overall": "json",  # accuracy and pairwise consistency of the training split
        "best_acc": "json",
        "shuffled_top": "json",
        "meta": "json",  # the metadata-only probe
        "n_beat": "json",
        "rho_patch": "json",
        "rho_probe": "json",
        "loaded": "json",  # the heads Chapter 2 steers (attribution patching, top TOP_K)
        "n_layers": "json",
        "n_heads": "json",
    },
    "02_consistency_steering": {
        "fair_table": "csv",  # section 10: every model state, chosen on validation, tested once
        "paired": "csv",  # section 10: SFT, LoRA, steering minus unsteered, per-query bootstrap
        "intervals": "csv",  # section 11: uncentred and centred steering vs unsteered and controls
        "K_BEST": "json",
        "ALPHA_BEST": "json",
        "K_CENTRED": "json",
        "ALPHA_CENTRED": "json",
    },
}


def _dump_cell(names: dict[str, str]) -> str:
    lines = [
        "# Added by scripts/method_or_model.py: store the objects behind the headline tables.",
        "import json as _json, os as _os, pathlib as _pathlib",
        "import numpy as _np",
        "_out = _pathlib.Path(_os.environ['EDITLENS_REPLAY_OUT'])",
        "_out.mkdir(parents=True, exist_ok=True)",
        "def _plain(x):",
        "    if isinstance(x, dict): return {str(k): _plain(v) for k, v in x.items()}",
        "    if isinstance(x, (list, tuple)): return [_plain(v) for v in x]",
        "    if isinstance(x, _np.generic): return x.item()",
        "    if hasattr(x, 'to_dict'): return _plain(x.to_dict())",
        "    return x",
        "_json_part = {}",
    ]
    for name, kind in names.items():
        if kind == "csv":
            lines.append(f"{name}.to_csv(_out / '{name}.csv')")
        else:
            lines.append(f"_json_part['{name}'] = _plain({name})")
    lines.append("(_out / 'values.json').write_text(_json.dumps(_json_part, indent=1) + '\\n')")
    return "\n".join(lines)


def replay(chapter: str, model: str, out: Path, notebook: Path, threads: int,
           params: dict[str, str] | None = None) -> None:
    import jupytext
    import nbformat

    src = ROOT / "notebooks" / "src" / f"{chapter}.py"
    nb = jupytext.read(src)
    nb.cells.append(nbformat.v4.new_code_cell(_dump_cell(DUMPS[chapter])))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    notebook.parent.mkdir(parents=True, exist_ok=True)
    source_nb = notebook.with_suffix(".in.ipynb")
    nbformat.write(nb, source_nb)
    env = dict(os.environ, EDITLENS_REPLAY_OUT=str(out), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), TQDM_NCOLS=os.environ.get("TQDM_NCOLS", "76"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    start = time.perf_counter()
    extra = [arg for name, value in (params or {}).items() for arg in ("-y", f"{name}: {value}")]
    subprocess.run(
        [sys.executable, "-m", "papermill", str(source_nb), str(notebook), "-p", "MODEL_NAME", model, *extra,
         "--cwd", str(ROOT / "notebooks"), "--no-progress-bar", "--log-level", "WARNING"],
        check=True, env=env, cwd=ROOT,
    )
    minutes = (time.perf_counter() - start) / 60
    settings = {
        "chapter": chapter, "model": model, "parameters": {"MODEL_NAME": model, **(params or {})},
        "other parameters": "the chapter's defaults",
        "threads": threads, "minutes": round(minutes, 1),
        "command": f"scripts/method_or_model.py replay {chapter} --model {model}"
                   + "".join(f" --param '{k}={v}'" for k, v in (params or {}).items()),
    }
    (out / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")
    print(f"{chapter} on {model}: {minutes:.1f} min -> {out}")


def trace(model_name: str, n_facts: int, out: Path) -> None:
    """Causal tracing of the MLPs (`editlens.tracing.trace_mlps`) on the facts the model knows among ``n_facts``
    of its own fact set."""
    import editlens
    from editlens.data import facts_path, load_facts, spread_over_relations
    from editlens.tracing import trace_mlps

    model, _ = editlens.load_model(model_name, device="cpu")
    facts = spread_over_relations(load_facts(facts_path(model_name)), n_facts)
    tr, summary = trace_mlps(model, facts, model_name=model_name, facts_source=(
        f"spread_over_relations(load_facts(facts_path({model_name!r})), {n_facts})"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracing.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{model_name}: {tr.n_facts} known facts traced of {n_facts} in {summary['minutes']} min")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("replay", help="execute a chapter on a model and store its headline objects")
    r.add_argument("chapter", choices=sorted(DUMPS))
    r.add_argument("--model", required=True, help="smollm2-135m-instruct or gemma3-270m")
    r.add_argument("--out", type=Path, help="default: book/results/method-or-model/<model>/<chapter>")
    r.add_argument("--notebook", type=Path, help="the executed notebook (default: _build/replays/<model>-<chapter>.ipynb)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a chapter parameter other than its default (VALUE in YAML, e.g. 'K_VALUES=[2, 4, 9, 17]')")
    t = sub.add_parser("trace", help="causal tracing of the MLPs on the facts the model knows")
    t.add_argument("--model", required=True)
    t.add_argument("--facts", type=int, default=160, help="facts spread over relations; the known ones are traced")
    t.add_argument("--out", type=Path, help="default: book/results/method-or-model/<model>/tracing")
    sub.add_parser("tables", help="write the page's tables from the stored runs")
    args = ap.parse_args(argv)
    if args.command == "replay":
        out = args.out or RESULTS / args.model / args.chapter
        nb = args.notebook or ROOT / "_build" / "replays" / f"{args.model}-{args.chapter}.ipynb"
        params = dict(p.split("=", 1) for p in args.param)
        replay(args.chapter, args.model, out, nb, args.threads, params)
    elif args.command == "trace":
        trace(args.model, args.facts, args.out or RESULTS / args.model / "tracing")
    else:
        from editlens import method_or_model

        for path in method_or_model.write_tables(RESULTS):
            print("wrote", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
