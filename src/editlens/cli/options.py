"""The options ``edit`` and ``compare`` share, checked once (before anything slow is loaded) and resolved into a
frozen :class:`RunSettings` that the commands and the run setup pass around.

Taught in: Chapter 3 (the records, the model, ROME's settings, the evaluation), Chapters 4-5 (STEAM's and SADR's
options, whose checks are the registry's: :data:`editlens.methods.OPTIONS`) and Chapter 6 (``compare``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editlens import methods
from editlens.cli.errors import CommandLineError

if TYPE_CHECKING:
    from editlens.data.counterfact import Format

DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16")


def add_run_arguments(e: argparse.ArgumentParser) -> None:
    """The options ``edit`` and ``compare`` share: the records, the model, generation, ROME, STEAM and SADR."""
    e.add_argument("--data", default=None, help="facts file: the project's facts.json (default), ROME's "
                   "counterfact.json or SADR's merged_counterfact.json")
    e.add_argument("--format", default="auto", choices=["auto", "editlens", "counterfact", "sadr"])
    e.add_argument("--limit", type=int, default=None, help="first N records (N >= 1)")
    e.add_argument("--spread", action="store_true", help="take the --limit records round-robin over relations "
                   "instead of the first ones")
    e.add_argument("--cases", default=None, help="edit exactly these records, in this order: comma-separated case "
                   "ids, or a compare run's settings.json (its case_ids), e.g. to run a second model on the facts "
                   "of another model's run (not with --limit/--spread)")
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
    e.add_argument("--steam-anchors", default=None, help="STEAM: reference (reference triples of real relations, "
                   "never a probe the edit is judged on: the paper's design, default) or all (every prompt whose "
                   "known answer is the object, Chapter 4's first design)")
    e.add_argument("--steam-align", default=None, help="STEAM: centred (states centred on their relation's mean: "
                   "the paper's design, default) or raw (the raw cosine, Chapter 4's first design)")
    e.add_argument("--anchor-data", default=None, help="STEAM: a facts file added to the --data file as the anchor "
                   "pool (default: the book's facts.json)")
    e.add_argument("--sadr-gamma", type=float, default=None, help="SADR: weight of the attention-drift term "
                   "(default 0.01 = the authors' ROME weight 100 x 1e-4; 0 is ROME)")
    e.add_argument("--v-steps", type=int, default=None, help="v* optimisation steps (default: the registry's, 20; "
                   "the authors ran ROME+SADR with 80)")
    e.add_argument("--v-on-ray", choices=("nearest", "as_optimised"), default=None,
                   help="with a norm after the MLP (Gemma): write the point of v*'s ray nearest to W_out k* "
                   "(default there) or v* as optimised (editlens.rome.hparams.ROMEHyperParams.v_on_ray)")


@dataclass(frozen=True)
class RunSettings:
    """What one ``edit`` or ``compare`` run does, resolved from its arguments: the methods of the registry it runs
    and the shared options (``steam_layers`` parsed into layer indices)."""

    methods: tuple[str, ...]
    data: str | None
    format: Format
    limit: int | None
    spread: bool
    cases: tuple[int, ...] | None
    model: str | None
    device: str | None
    dtype: str
    layer: int | None
    mom2_tokens: int | None
    v_steps: int | None
    v_on_ray: str | None
    threads: int | None
    no_generation: bool
    gen_prompts: int
    gen_tokens: int
    semantic: bool
    steam_lambda: float | None
    steam_layers: tuple[int, ...] | None
    anchors: int | None
    steam_anchors: str | None
    steam_align: str | None
    anchor_data: str | None
    sadr_gamma: float | None

    def uses(self, part: str) -> bool:
        """Whether one of the methods adds ``part`` (``steam`` or ``sadr``; ``steam+sadr`` adds both)."""
        return methods.uses(self.methods, part)

    def on_device(self, device: str | None) -> RunSettings:
        """The same settings on ``device`` (a process of ``accelerate launch`` gets its own)."""
        return dataclasses.replace(self, device=device)


def parse_layers(text: str) -> list[int]:
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


def parse_cases(text: str) -> tuple[int, ...]:
    """``--cases``: comma-separated case ids, or the path of a ``compare`` run's ``settings.json`` (its
    ``case_ids``)."""
    path = Path(text)
    if text.endswith(".json"):
        try:
            ids = json.loads(path.read_text(encoding="utf-8"))["case_ids"]
        except FileNotFoundError:
            raise CommandLineError(f"--cases {text}: no such file",
                                   "pass the settings.json of a compare run, or comma-separated case ids") from None
        except (ValueError, KeyError, TypeError):
            raise CommandLineError(f"--cases {text} has no case_ids list",
                                   "pass the settings.json that `compare --out DIR` wrote (DIR/settings.json)"
                                   ) from None
    else:
        try:
            ids = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise CommandLineError(f"--cases {text!r} is not a list of case ids",
                                   "pass comma-separated integers, e.g. --cases 575,734,204") from None
    if not ids or len(set(ids)) != len(ids):
        raise CommandLineError(f"--cases {text!r} names {'no case' if not ids else 'a case twice'}",
                               "pass each case id once")
    return tuple(int(i) for i in ids)


def resolve(args: argparse.Namespace, chosen: tuple[str, ...], *, flag: str) -> RunSettings:
    """Check the shared options of a run of the methods ``chosen`` and resolve them. ``flag``: how the command chose
    them (``--method`` or ``--methods``), as the error messages name it."""
    if args.limit is not None and args.limit < 1:
        raise CommandLineError(f"--limit must be at least 1, got {args.limit}",
                               "pass --limit N with N >= 1, or leave --limit out to edit every record")
    for name, value in (("--gen-prompts", args.gen_prompts), ("--gen-tokens", args.gen_tokens),
                        ("--threads", args.threads), ("--mom2-tokens", args.mom2_tokens), ("--v-steps", args.v_steps)):
        if value is not None and value < 1:
            raise CommandLineError(f"{name} must be at least 1, got {value}",
                                   f"pass {name} N with N >= 1, or leave {name} out for its default")
    cases = None
    if args.cases is not None:
        if args.limit is not None or args.spread:
            raise CommandLineError("--cases with --limit or --spread",
                                   "--cases names the records itself: leave --limit and --spread out")
        cases = parse_cases(args.cases)
    steam_layers = _check_parts(args, chosen, flag)
    if args.layer is not None and args.layer < 0:
        raise CommandLineError(f"--layer must be 0 or more, got {args.layer}",
                               "pass a layer index counted from 0, or leave --layer out for the registry's")
    return RunSettings(
        methods=chosen, data=args.data, format=args.format, limit=args.limit, spread=args.spread, cases=cases,
        model=args.model,
        device=args.device, dtype=args.dtype, layer=args.layer, mom2_tokens=args.mom2_tokens, v_steps=args.v_steps,
        v_on_ray=args.v_on_ray, threads=args.threads, no_generation=args.no_generation, gen_prompts=args.gen_prompts,
        gen_tokens=args.gen_tokens, semantic=args.semantic, steam_lambda=args.steam_lambda,
        steam_layers=steam_layers, anchors=args.anchors, steam_anchors=args.steam_anchors,
        steam_align=args.steam_align, anchor_data=args.anchor_data, sadr_gamma=args.sadr_gamma)


def _given(args: argparse.Namespace, option: methods.Option) -> Any:
    """The value of ``option``'s flag (argparse's attribute for it), None when the flag was left out."""
    return getattr(args, option.flag.lstrip("-").replace("-", "_"))


def _check_parts(args: argparse.Namespace, chosen: tuple[str, ...], flag: str) -> tuple[int, ...] | None:
    """The registry's checks of STEAM's and SADR's options (and that they are only given when a chosen method uses
    their part); returns ``--steam-layers`` parsed."""
    steam_layers = None
    for part in methods.PARTS:
        options = methods.options_of(part)
        given = [o.flag for o in options if _given(args, o) is not None]
        if not methods.uses(chosen, part):
            if given:
                raise _not_used(given, part, chosen, flag, len(options))
            continue
        for option in options:
            value = _given(args, option)
            try:
                if option.keyword == "steam_layers" and value is not None:
                    steam_layers = tuple(parse_layers(value))
                    option.check(steam_layers, command_line=True, shown=value)
                else:
                    option.check(value, command_line=True)
            except methods.OptionError as err:
                raise CommandLineError(err.problem, err.fix) from None
    return steam_layers


def _not_used(given: list[str], part: str, chosen: tuple[str, ...], flag: str, n_options: int) -> CommandLineError:
    """The error for options of ``part`` given to a run whose methods do not use that part."""
    if flag == "--method":
        chosen_text, needed, add = f"--method {chosen[0]}", f"--method {part}", f"--method {part}"
    else:
        also = [m for m in methods.NAMES if m != part and methods.get(m).uses(part)]
        chosen_text, needed = f"--methods {','.join(chosen)}", f"{part} (or {', '.join(also)})"
        add = f"{needed} to --methods"
    verb = "applies" if n_options == 1 else "apply"
    return CommandLineError(f"{', '.join(given)} only {verb} to {needed}, not {chosen_text}",
                            f"add {add}, or leave {', '.join(given)} out")
