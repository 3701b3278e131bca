"""``compare``: several methods of the registry on the same records; the paired table, per-record rows and a figure.

Taught in: Chapter 6 (synthesis; :mod:`editlens.compare`). Under ``accelerate launch`` each process edits its share
of the records and the main process gathers the rows, in record order.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editlens import methods
from editlens.cli import run_setup
from editlens.cli.errors import CommandLineError, from_message
from editlens.cli.options import RunSettings, add_run_arguments, resolve

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from editlens.rome.hparams import ROMEHyperParams

EPILOG = """\
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


def add_command(sub: argparse._SubParsersAction) -> None:
    """The ``compare`` parser."""
    c = sub.add_parser("compare", help="run several editing methods on the same records and write the paired table "
                       "(bootstrap CIs against ROME), the per-record results and a figure",
                       description="Edit every record with each method (each edit from the unedited weights), "
                       "evaluate it (ES, PS, NS, RelS, DNS, portability, GE, RS, seconds per edit) and pair the "
                       "methods on the same records against ROME.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--methods", default="rome,steam,sadr,steam+sadr", help=f"comma-separated, from "
                   f"{', '.join(methods.NAMES)} (sadr is ROME+SADR; steam+sadr puts both terms in one v* "
                   "optimisation); must include rome (default: all)")
    c.add_argument("--out", required=True, help="folder for the outputs (created if missing)")
    c.add_argument("--seed", type=int, default=0, help="seed of every edit (record i gets a seed from it and i, "
                   "whichever process runs it)")
    c.add_argument("--edit-batch", type=int, default=1, help="records whose v* each method optimises together "
                   "(one forward and backward pass per step for all of them; the same edits up to float noise; "
                   "Chapter 6 uses 8; default 1)")
    add_run_arguments(c)
    c.set_defaults(func=run)


def check(args: argparse.Namespace) -> tuple[RunSettings, Path]:
    """The methods (ROME among them), the shared options and the output folder, before anything slow is loaded."""
    try:
        chosen = tuple(methods.parse_methods(args.methods))
    except methods.UnknownMethodError as err:
        raise from_message(err, "pass e.g. --methods rome,steam,sadr,steam+sadr", prefix="--methods: ") from None
    if "rome" not in chosen:
        raise CommandLineError(f"--methods {args.methods} has no rome: the table pairs every method against ROME",
                               f"add rome, e.g. --methods rome,{','.join(chosen)}")
    settings = resolve(args, chosen, flag="--methods")
    if args.edit_batch < 1:
        raise CommandLineError(f"--edit-batch {args.edit_batch} is below 1",
                               "pass --edit-batch N with N >= 1 (1: one record at a time)")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CommandLineError(f"--out {args.out} is a file", "pass --out a folder (it is created if missing)")
    if not out.resolve().parent.is_dir():
        raise CommandLineError(f"--out {args.out}: the folder {out.resolve().parent} does not exist",
                               "create it first, or pass --out a folder inside an existing one")
    if settings.device is not None:
        run_setup.check_device(settings.device)
    return settings, out


def distributed_state(device: str | None) -> Any:
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


def run(args: argparse.Namespace) -> int:
    """Every method of --methods on the same records; per-record rows, the paired table and the figure in --out."""
    start = time.perf_counter()
    settings, out = check(args)
    state = distributed_state(settings.device)
    main_process = state is None or state.is_main_process
    n_processes = 1 if state is None else state.num_processes
    if state is not None and (settings.device is None or settings.device == "cuda"):
        settings = settings.on_device(str(state.device))  # one device per process (cuda:LOCAL_RANK on GPUs)
    say = print if main_process else (lambda *a, **k: None)
    cases = run_setup.load_cases(settings)
    hp = run_setup.resolve_hparams(settings)

    from editlens.compare import build_editors, merge_rows, run_methods, write_outputs
    from editlens.data import BadRequestError
    from editlens.evaluate import GenerationSettings
    from editlens.rome import stats_for

    run_setup.set_threads(settings)
    say(f"{len(cases)} records from {settings.data or 'the project ' + run_setup.data_label(settings)}; methods "
        f"{', '.join(methods.LABELS[m] for m in settings.methods)}; {n_processes} process(es)")
    with contextlib.nullcontext() if state is None else state.main_process_first():  # one download/cache fill
        model = run_setup.load_model(settings)
    run_setup.check_edit_layer(hp, model)
    steam = run_setup.steam_anchors(settings, model, hp, cases) if settings.uses("steam") else None
    with contextlib.nullcontext() if state is None else state.main_process_first():  # main computes C, others read it
        stats = stats_for(model, hp)
    editors = build_editors(hp, stats, list(settings.methods), **run_setup.editor_options(settings, steam),
                            batch=args.edit_batch)
    gen = None if settings.no_generation else GenerationSettings(
        n_prompts=settings.gen_prompts, max_new_tokens=settings.gen_tokens, seed=args.seed, semantic=settings.semantic)
    indices = list(range(len(cases)))
    share = contextlib.nullcontext(indices) if state is None else state.split_between_processes(indices)
    with share as mine:
        try:
            per = run_methods(model, [cases[i] for i in mine], editors, indices=mine, generation=gen, seed=args.seed,
                              progress=main_process)
        except BadRequestError as err:
            raise from_message(err, "correct or remove that record in the --data file",
                               prefix="a record cannot be edited: ") from None
    rows = per.to_dict(orient="records")
    if state is not None:
        from accelerate.utils import gather_object

        parts = gather_object([rows])  # one list of rows per process
    else:
        parts = [rows]
    if main_process:
        from editlens.compare import per_record_frame
        from editlens.stats import BOOK_PAIRING

        per = per_record_frame(merge_rows(parts, list(settings.methods), len(cases)))
        run_settings = _settings(args, settings, cases, hp, model, gen, parts, n_processes, steam)
        run_settings["minutes"] = round((time.perf_counter() - start) / 60, 1)  # wall clock, loading included
        # the book's intervals: whole relations resampled, Holm's correction over the table (book/at-scale.md)
        paths = write_outputs(out, per, settings=run_settings, **BOOK_PAIRING)
        print((out / "summary.md").read_text(encoding="utf-8"))
        for p in paths.values():
            print(f"wrote {p}")
    if state is not None:
        state.wait_for_everyone()
        state.destroy_process_group()
    return 0


def _settings(args: argparse.Namespace, settings: RunSettings, cases: list, hp: ROMEHyperParams,
              model: TransformerBridge, gen: Any,
              parts: list, n_processes: int, steam: run_setup.SteamAnchors | None) -> dict:
    """What settings.json records of the run."""
    from editlens.data import as_case
    from editlens.precision import of as precision_of
    from editlens.sadr import DEFAULT_GAMMA

    chosen = list(settings.methods)
    return {"methods": chosen, "labels": {m: methods.LABELS[m] for m in chosen},
            "model": settings.model or "embedded", "data": run_setup.data_label(settings), "n_records": len(cases),
            "case_ids": [as_case(c).case_id for c in cases],
            "seed": args.seed, "edit_batch": args.edit_batch, "n_processes": n_processes, "device": str(model.cfg.device),
            "precision": precision_of(model).name,
            "shares": [sorted({r["index"] for r in part}) for part in parts],
            "generation": None if gen is None else gen.as_settings(), "hparams": dict(vars(hp)),
            "sadr": {"gamma": DEFAULT_GAMMA if settings.sadr_gamma is None else settings.sadr_gamma}
            if settings.uses("sadr") else None,
            "steam": None if steam is None else steam.settings}
