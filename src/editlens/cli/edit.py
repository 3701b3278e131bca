"""``edit``: edit facts one at a time with one method of the registry and evaluate each edit beside the unedited model.

Taught in: Chapter 3 (ROME and its evaluation), Chapters 4-5 (STEAM, ROME+SADR) and Chapter 6 (STEAM+SADR): every
method of :mod:`editlens.methods`, combinations included, the same ones ``compare`` runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editlens import methods
from editlens.cli import run_setup
from editlens.cli.errors import CommandLineError, from_message
from editlens.cli.options import RunSettings, add_run_arguments, resolve

if TYPE_CHECKING:
    from editlens.rome.hparams import ROMEHyperParams


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``edit`` parser."""
    e = sub.add_parser("edit", help="edit facts one at a time and evaluate them "
                       "(ES, PS, NS, S, GE, RS, RelS, DNS, ...)")
    e.add_argument("--method", default="rome", choices=methods.NAMES, help="editing method")
    e.add_argument("--out", default=None, help="write per-record results and the summary as JSON")
    e.add_argument("--no-baseline", action="store_true", help="do not evaluate the unedited model beside")
    add_run_arguments(e)
    e.set_defaults(func=run)


def check(args: argparse.Namespace) -> RunSettings:
    """Reject an unknown method, out-of-range numbers and unusable paths before anything slow is loaded."""
    if args.method not in methods.NAMES:  # argparse choices catch it first; this guards programmatic Namespaces
        raise CommandLineError(f"--method {args.method!r} is not available", f"pass --method {methods.NAMES[0]}")
    settings = resolve(args, (args.method,), flag="--method")
    if args.out is not None:
        parent = Path(args.out).expanduser().resolve().parent
        if not parent.is_dir():
            raise CommandLineError(f"--out {args.out}: the folder {parent} does not exist",
                                   "create the folder first, or pass --out a path in an existing folder")
        if Path(args.out).is_dir():
            raise CommandLineError(f"--out {args.out} is a folder", "pass --out the path of a JSON file to write")
    if settings.device is not None:
        run_setup.check_device(settings.device)
    return settings


def _sadr_settings(hp: ROMEHyperParams, settings: RunSettings) -> dict:
    """SADR's settings to record (and its line on stdout)."""
    from editlens.sadr import AUTHORS_STEPS, DEFAULT_GAMMA

    gamma = DEFAULT_GAMMA if settings.sadr_gamma is None else settings.sadr_gamma
    print(f"SADR: gamma {gamma}, {hp.v_num_grad_steps} v* steps (the authors ran {AUTHORS_STEPS['rome']}: "
          f"--v-steps {AUTHORS_STEPS['rome']})")
    return {"gamma": gamma, "v_num_grad_steps": hp.v_num_grad_steps, "layers": "all (only those above the edit "
            "layer change)", "hinge": True}


def run(args: argparse.Namespace) -> int:
    """Edit each record on its own, evaluate it beside the unedited model, write JSON, print a table."""
    settings = check(args)
    cases = run_setup.load_cases(settings)
    hp = run_setup.resolve_hparams(settings)

    from editlens.data import BadRequestError
    from editlens.evaluate import GenerationSettings, evaluate_edits
    from editlens.rome import stats_for

    run_setup.set_threads(settings)
    print(f"{len(cases)} records from {settings.data or 'the project ' + run_setup.data_label(settings)}")
    model = run_setup.load_model(settings)
    run_setup.check_edit_layer(hp, model)
    print(f"{methods.get(args.method).label} on ROME's settings: edit layer {hp.layer} ({hp.key_variant}); key "
          f"statistics from {hp.mom2_n_tokens} tokens ({hp.mom2_source})")
    steam = run_setup.steam_anchors(settings, model, hp, cases) if settings.uses("steam") else None
    stats = stats_for(model, hp)
    editor = methods.get(args.method).editor(hp, stats, **run_setup.editor_options(settings, steam))
    sadr_settings = _sadr_settings(hp, settings) if settings.uses("sadr") else None
    gen = None if settings.no_generation else GenerationSettings(
        n_prompts=settings.gen_prompts, max_new_tokens=settings.gen_tokens, semantic=settings.semantic)
    try:
        report = evaluate_edits(model, cases, editor, baseline=not args.no_baseline, generation=gen)
    except BadRequestError as err:
        raise from_message(err, "correct or remove that record in the --data file",
                           prefix="a record cannot be edited: ") from None
    report.settings.update({"method": args.method, "hparams": {k: v for k, v in vars(hp).items()},
                            "model": settings.model or "embedded", "data": run_setup.data_label(settings)})
    if steam is not None:
        report.settings["steam"] = steam.settings
    if sadr_settings is not None:
        report.settings["sadr"] = sadr_settings
    _report(args, settings, report, cases)
    return 0


def _report(args: argparse.Namespace, settings: RunSettings, report: Any, cases: list) -> None:
    """Write the JSON (``--out``) and print the per-record lines and the summary (SADR's data: also pooled)."""
    pooled = settings.format == "sadr" or any(getattr(c, "source", None) == "sadr" for c in cases)
    if pooled:  # SADR's data: also their micro-average over all prompts (editlens.sadr.metrics)
        from editlens.sadr import pooled_summary, pooled_table

        report.settings["pooled_summary"] = {w: pooled_summary(report, cases, w) for w in ("unedited", "edited")
                                             if any(w in r for r in report.records)}
    if args.out:
        report.to_json(args.out)
        print(f"wrote {args.out}")
    for r in report.records:
        e = r.get("edited", {})
        nan = float("nan")
        print(f"  {r['case_id']!s:>6} {r['subject'][:28]:<28} -> {r['target_new'][:14]:<14} "
              f"ES {e.get('ES', nan):.0f} PS {e.get('PS', nan):.2f} NS {e.get('NS', nan):.2f}")
    if pooled:
        print("per record (mean of each record's rates)")
    print(report.table())
    if pooled:
        print("pooled over all prompts (SADR's micro-average; their RS is RelS here)")
        print(pooled_table(report, cases))
