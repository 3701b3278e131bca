"""SADR's gamma calibrated on validation facts to the authors' operating point (issue 29, item 3).

Runs ROME and ROME+SADR at each gamma of a grid on validation facts that Chapter 5 does not report (the facts
after its 50 in the same relation-spread order), every arm with the authors' settings: 80 v* steps, their early
stop (the whole loss below 0.05), 21 rewrite prompts (the bare prompt and 20 prefixed ones). Then
:func:`editlens.sadr.calibration.calibration_table` pairs each arm with ROME and
:func:`~editlens.sadr.calibration.choose_gamma` takes the gamma whose PS cost is nearest the authors' 3.22 points.

    python scripts/sadr_calibration.py --out book/results/sadr-calibration/smollm2-135m

``--budget book`` runs every arm at the model's own settings instead (the book's 20 steps, stopped on the new
object's NLL, 5 prefixes), the budget the "Method or model?" page edits at; ``--exclude RUN/settings.json``
leaves that run's facts out, so the validation facts are disjoint from the facts it reports:

    python scripts/sadr_calibration.py --model gemma3-270m --budget book \
        --exclude book/results/method-or-model/gemma3-270m/compare-nearest/settings.json --n 40 --skip 0 --out DIR

Writes ``per_record.jsonl``, ``summary.csv/.md``, ``settings.json`` (editlens.compare's format) and
``calibration.csv``/``calibration.json`` (the table and the chosen gamma). Probes only (no generation).
On two CPUs, run two shares of the facts (``--skip 50 --n 12`` and ``--skip 62 --n 12``) in two processes,
then ``--combine SHARE1 SHARE2 --out DIR`` writes the outputs of their union. A share may also add gammas to
facts another share ran (``--skip 50 --n 24 --gammas 3``): ROME rows are kept once, from the first share given,
and any that differ are listed in ``settings.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

import editlens
from editlens import compare
from editlens.data import facts_path, load_facts, spread_over_relations
from editlens.rome import get_hparams, rome_editor, stats_for
from editlens.sadr import (
    AUTHORS_PS_COST,
    AUTHORS_STEPS,
    DEFAULT_GAMMA,
    calibration_table,
    choose_gamma,
    gamma_grid,
    reaches_target,
    sadr_editor,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="an embedded model (default SmolLM2-135M-Instruct)")
    ap.add_argument("--skip", type=int, default=50, help="facts reported elsewhere (Chapter 5's 50), left out")
    ap.add_argument("--n", type=int, default=40, help="validation facts after the skipped ones")
    ap.add_argument("--gammas", default="0.01,0.03,0.1,0.3,1", help="the grid (the authors' 0.01 first)")
    ap.add_argument("--steps", type=int, default=AUTHORS_STEPS["rome"], help="v* steps of every arm")
    ap.add_argument("--prefixes", type=int, default=None, help="prefixed rewrite prompts (default: all 20, as ROME)")
    ap.add_argument("--budget", choices=("authors", "book"), default="authors", help="authors: --steps and "
                    "--prefixes with the authors' early stop (the whole loss below 0.05); book: the model's own "
                    "settings (editlens.rome.get_hparams: 20 steps stopped on the new object's NLL, 5 prefixes), the "
                    "budget the book's comparisons run at")
    ap.add_argument("--exclude", default=None, help="a run's settings.json: its case ids are left out before the "
                    "facts are spread (validation facts disjoint from the facts that run reports)")
    ap.add_argument("--batch", type=int, default=8, help="facts whose v* are optimised together")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="the run's folder (every mode but --write-page)")
    ap.add_argument("--reported", action="store_true", help="a run on reported facts (--skip 0 --n 50: Chapter "
                    "5's) at gammas chosen elsewhere: no gamma is chosen from it")
    ap.add_argument("--write-page", action="store_true", help="only rewrite book/sadr-calibration.md's table "
                    "from the stored run")
    ap.add_argument("--combine", nargs="+", default=None, help="folders of shares of one run (other facts, or "
                    "other gammas on the same facts): write their union")
    ap.add_argument("--control", action="store_true", help="only the fixed-budget control: ROME with no early stop "
                    f"(all --steps steps, as SADR runs them), arm {CONTROL!r}; writes per_record.jsonl and settings")
    args = ap.parse_args()
    if args.write_page:
        write_page()
        return
    if not args.out:
        ap.error("--out is required: the folder the run (or the combined shares) is written to")
    if args.combine:
        combine([Path(p) for p in args.combine], Path(args.out))
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    model, _ = editlens.load_model(args.model)
    facts = load_facts(facts_path(args.model))
    excluded: set = set()
    if args.exclude:
        excluded = set(json.loads(Path(args.exclude).read_text(encoding="utf-8"))["case_ids"])
        facts = [f for f in facts if f.case_id not in excluded]
    spread = spread_over_relations(facts, args.skip + args.n)
    cases = spread[args.skip:]
    if not cases:
        raise SystemExit(f"no validation facts: the facts file has {len(spread)} facts, all among the first "
                         f"{args.skip}. Fix: pass a smaller --skip.")
    hp = get_hparams(model)
    if args.budget == "authors":
        hp = hp.replace(v_early_stop_on="loss", v_num_grad_steps=args.steps, v_num_prefixes=args.prefixes)
    stats = stats_for(model, hp)

    def run_settings(early_stop: str | None, **specific) -> dict:
        """What every run records (the facts, the settings, its minutes), with what is ``specific`` to it."""
        return {"model": args.model or "smollm2-135m", **specific, "skipped": args.skip, "n_facts": len(cases),
                "case_ids": [c.case_id for c in cases], "steps": hp.v_num_grad_steps,
                "early_stop": early_stop, "prefixes": hp.v_num_prefixes, "budget": args.budget,
                **({"excluded": {"run": args.exclude, "n": len(excluded)}} if args.exclude else {}),
                "batch": args.batch, "threads": args.threads, "precision": editlens.precision.of(model).describe(),
                "minutes": round((time.perf_counter() - start) / 60, 1)}

    if args.control:  # no early stop: a loss is never below 0
        rows = compare.run_methods(model, cases, {CONTROL: rome_editor(hp.replace(v_loss_early_stop=0.0),
                                                                       stats, batch=args.batch)}, generation=None)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows.to_json(out / "per_record.jsonl", orient="records", lines=True, force_ascii=False)
        settings = run_settings(None, arm=CONTROL)
        (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        return
    grid = gamma_grid(float(g) for g in args.gammas.split(","))
    arms = {g: f"sadr γ={g:g}" for g in grid}
    editors = {"rome": rome_editor(hp, stats, batch=args.batch)}
    editors.update({label: sadr_editor(hp, stats, g, batch=args.batch) for g, label in arms.items()})
    rows = compare.run_methods(model, cases, editors, generation=None)
    settings = {**run_settings(hp.v_early_stop_on, gammas=grid, arms=list(arms.values())),
                "role": "reported" if args.reported else "validation"}
    write(Path(args.out), rows, settings)


METRICS = ["ES", "PS", "NS", "RelS", "DNS", "Port", "Port EM", "steps"]
CONTROL = "rome all steps"
RESULTS = Path(__file__).resolve().parents[1] / "book" / "results" / "sadr-calibration"
PAGE = Path(__file__).resolve().parents[1] / "book" / "sadr-calibration.md"


def calibration_markdown(folder: Path = RESULTS / "smollm2-135m") -> str:
    """The page's table: one row per gamma of the stored ``calibration.csv`` (points, intervals in brackets)."""
    table = pd.read_csv(folder / "calibration.csv")
    rome = compare.read_per_record(folder / "per_record.jsonl").query("method == 'rome'")
    lines = ["| gamma | facts | PS | PS cost [95% CI] | DNS | DNS gain [95% CI] |", "|---:|---:|---:|---|---:|---|",
             f"| 0 (ROME) | {len(rome)} | {100 * rome['PS'].mean():.1f} | | {100 * rome['DNS'].mean():.1f} | |"]
    for _, r in table.iterrows():
        cost, gain = (f"{100 * r[k]:+.1f} [{100 * r[k + ' low']:+.1f}, {100 * r[k + ' high']:+.1f}]"
                      for k in ("PS cost", "DNS gain"))
        lines.append(f"| {r['gamma']:g} | {r['n']} | {100 * r['PS']:.1f} | {cost} | {100 * r['DNS']:.1f} | {gain} |")
    return "\n".join(lines)


def difference_markdown(summary: pd.DataFrame, baseline: str, baseline_name: str, gammas: list[float]) -> str:
    """One row per metric of ``summary`` (:func:`editlens.compare.summary_table`): the baseline's mean and each
    gamma's paired difference to it (points; steps as counts), ``*`` where the interval excludes 0 and ``†`` where
    that survives Holm's correction over the table."""
    arms = [f"sadr γ={g:g}" for g in gammas]
    head = f"| metric | {baseline_name} | " + " | ".join(f"γ = {g:g} minus it [95% CI]" for g in gammas)
    lines = [head + " |", "|---|---:|" + "---|" * len(arms)]
    for metric in [m for m in METRICS if m in set(summary["metric"])]:
        rows = summary[summary["metric"] == metric].set_index("method")
        scale = 1 if metric == "steps" else 100
        cells = [f"{scale * rows.loc[baseline, 'mean']:.1f}"]
        for arm in arms:
            r = rows.loc[arm]
            mark = (" *" if bool(r["CI excludes 0"]) else "") + (" †" if bool(r["Holm excludes 0"]) else "")
            cells.append(f"{scale * r[f'diff vs {baseline}']:+.1f} [{scale * r['diff low']:+.1f}, "
                         f"{scale * r['diff high']:+.1f}]{mark}")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


REPORTED = RESULTS / "smollm2-135m-reported"


def reported_markdown(folder: Path = REPORTED) -> str:
    """The page's second table: the reported run's ``summary.csv`` (every arm against ROME-80)."""
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    return difference_markdown(pd.read_csv(folder / "summary.csv"), "rome", "ROME-80", settings["gammas"])


def control_table(folder: Path = REPORTED) -> pd.DataFrame:
    """Every SADR arm of the reported run against the fixed-budget control (``control/per_record.jsonl``: ROME
    with no early stop, all the steps SADR runs), paired over the same facts, relation-clustered, Holm."""
    rows = compare.read_per_record(folder / "per_record.jsonl")
    control = compare.read_per_record(folder / "control" / "per_record.jsonl")
    if set(control["case_id"]) != set(rows["case_id"]):
        raise ValueError(f"{folder}/control covers other facts than the run. Fix: run --control with the run's "
                         "--skip and --n.")
    index = rows.drop_duplicates("case_id").set_index("case_id")["index"]
    control = control.assign(index=control["case_id"].map(index))
    both = pd.concat([control, rows[rows["method"] != "rome"]], ignore_index=True)
    return compare.summary_table(both, METRICS, baseline=CONTROL, cluster="relation", correction="holm")


def control_markdown(folder: Path = REPORTED) -> str:
    """The page's third table: :func:`control_table` (every arm against ROME with all its steps)."""
    settings = json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    return difference_markdown(control_table(folder), CONTROL, "ROME, all 80 steps", settings["gammas"])


def write_page(page: Path = PAGE) -> None:
    """Put :func:`calibration_markdown`, :func:`reported_markdown` and :func:`control_markdown` between the page's
    ``table:calibration``, ``table:reported`` and ``table:control`` markers."""
    text = page.read_text(encoding="utf-8")
    for name, table in (("calibration", calibration_markdown()), ("reported", reported_markdown()),
                        ("control", control_markdown())):
        head, rest = text.split(f"<!-- table:{name} -->\n", 1)
        _, tail = rest.split(f"<!-- /table:{name} -->", 1)
        text = f"{head}<!-- table:{name} -->\n{table}\n<!-- /table:{name} -->{tail}"
    page.write_text(text, encoding="utf-8")


def write(out: Path, rows, settings: dict) -> None:
    """The run's outputs: compare's files, ``calibration.csv`` and ``calibration.json``."""
    grid = settings["gammas"]
    table = calibration_table(rows, dict(zip(grid, settings["arms"])))
    compare.write_outputs(out, rows, settings=settings, figure=False, cluster="relation", correction="holm",
                          metrics=METRICS)
    table.to_csv(out / "calibration.csv", index=False)
    if settings.get("role") == "reported":  # gamma was chosen elsewhere: these facts only report it
        summary = {"role": "reported", "gammas": grid, "authors' gamma": DEFAULT_GAMMA,
                   "target PS cost": AUTHORS_PS_COST, "n_facts": settings["n_facts"], "minutes": settings["minutes"]}
    else:
        summary = {"target PS cost": AUTHORS_PS_COST, "chosen gamma": choose_gamma(table),
                   "authors' gamma": DEFAULT_GAMMA, "grid brackets the target": reaches_target(table),
                   "n_facts": settings["n_facts"], "minutes": settings["minutes"]}
    (out / "calibration.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(table.round(4).to_string(index=False))
    print(json.dumps(summary, indent=1))


def combine(shares: list[Path], out: Path) -> None:
    """The union of runs over shares of the validation facts: consecutive shares (``--skip``/``--n``), or a
    share that adds gammas to facts another share ran. A (fact, arm) run in two shares (ROME) is kept once, from
    the first share given; rows that differ (another batch composition moves an edit by float noise) are listed
    in the settings. Settings other than the grid must match."""
    settings = [json.loads((p / "settings.json").read_text(encoding="utf-8")) for p in shares]
    keep = ("model", "steps", "early_stop", "prefixes", "budget", "excluded", "batch", "threads", "precision")
    if any({k: s.get(k) for k in keep} != {k: settings[0].get(k) for k in keep} for s in settings) or len(
            {s.get("role", "validation") for s in settings}) > 1:
        raise SystemExit("--combine: the shares were run with different settings. Fix: rerun them alike.")
    first = min(s["skipped"] for s in settings)
    parts = []
    for p, s in zip(shares, settings):
        rows = compare.read_per_record(p / "per_record.jsonl")
        parts.append(rows.assign(index=rows["index"] + s["skipped"] - first))
    rows = pd.concat(parts, ignore_index=True)
    twice = rows[rows.duplicated(["case_id", "method"], keep=False)]
    differing = []
    if len(twice):  # the same (fact, arm) in two shares: kept once, from the first share given
        cols = [c for c in METRICS if c in rows.columns]
        for (cid, method), g in twice.groupby(["case_id", "method"], sort=False):
            spread = {c: round(float(g[c].max() - g[c].min()), 6) for c in cols if g[c].max() - g[c].min() > 1e-9}
            if spread:  # another batch composition moves an edit by float noise, which can flip a near-tie
                differing.append({"case_id": int(cid), "method": method, "max - min": spread})
        if differing:
            print(f"--combine: {len(differing)} (fact, arm) rows differ between shares; the first share's are kept: "
                  f"{differing}")
        rows = rows.drop_duplicates(["case_id", "method"], keep="first")
    rows = rows.sort_values(["index", "method"], kind="stable").reset_index(drop=True)
    arms = {}
    for s in settings:
        arms.update(zip(s["gammas"], s["arms"]))
    ids = rows.drop_duplicates("case_id").sort_values("index")["case_id"].tolist()
    grid = sorted(arms)
    merged = {**{k: settings[0][k] for k in keep if k in settings[0]}, "role": settings[0].get("role", "validation"), "gammas": grid,
              "arms": [arms[g] for g in grid], "skipped": first, "n_facts": len(ids), "case_ids": ids,
              "minutes": max(s["minutes"] for s in settings), "shares": [p.name for p in shares],
              "minutes per share": [s["minutes"] for s in settings], "rows that differed between shares": differing}
    write(out, rows, merged)


if __name__ == "__main__":
    main()
