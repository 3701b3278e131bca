"""Method or model? The book's claims on two models, side by side, from stored runs only.

Taught in: the page "Method or model?" (``book/method-or-model.md``; issue 30). Every table of that page is
computed here from the runs stored in ``book/results/method-or-model/`` and ``book/results/at-scale/``
(``scripts/method_or_model.py`` makes them; ``tests/test_method_or_model.py`` recomputes every table and checks
the page includes it as written).

A **claim** is one sentence of a paper that the book tests: "SADR raises DNS over ROME". On each model it gets
a paired difference with its 95% bootstrap interval (relations resampled whole for the edits, queries for
steering) and a **verdict**: it *holds* on a model when the interval excludes 0 in the claimed direction, is
*reversed* when it excludes 0 the other way, and is *not shown* otherwise. Across the two models the verdict
reads "holds on both", "only on the larger" (Gemma 3 270M), "only on the smaller" (SmolLM2-135M) or
"on neither". Level claims (ROME's ES near 100 on GPT-J) hold when the interval's lower end reaches the
threshold the claim states.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from editlens.compare import read_per_record, summary_table
from editlens.display import interval_text

SMALL, LARGE = "smollm2-135m-instruct", "gemma3-270m"
MODEL_LABELS = {SMALL: "SmolLM2-135M", LARGE: "Gemma 3 270M"}
"""The two embedded models, smaller first (``editlens.embedded.MODELS``)."""

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "book" / "results" / "method-or-model"
AT_SCALE = ROOT / "book" / "results" / "at-scale" / "smollm2-135m"


@dataclass(frozen=True)
class EditClaim:
    """A claim about an editing method against ROME (``method`` minus ``rome`` on ``metric``), or about ROME's
    own level (``method == "rome"``: its mean must reach ``threshold``)."""

    claim: str
    method: str
    metric: str
    direction: int = +1  # +1: the method raises the metric; -1: it lowers it
    paper: str = ""  # the paper's figure, as reported
    threshold: float | None = None  # level claims only: the interval's lower end must reach it


EDIT_CLAIMS: tuple[EditClaim, ...] = (
    EditClaim("ROME's edit succeeds (ES at least 0.90)", "rome", "ES", paper="GPT-J 0.999", threshold=0.90),
    EditClaim("ROME's edit generalises to paraphrases (PS at least 0.90)", "rome", "PS", paper="GPT-J 0.991",
              threshold=0.90),
    EditClaim("ROME keeps neighbours (NS at least 0.75)", "rome", "NS", paper="GPT-J 0.789", threshold=0.75),
    EditClaim("STEAM raises portability over ROME", "steam", "Port", paper="up to +0.022 (batch; GPT-J, Qwen2, Llama3)"),
    EditClaim("STEAM raises exact-match portability over ROME", "steam", "Port EM", paper="(same claim)"),
    EditClaim("STEAM's generations agree more with the new object (SC)", "steam", "SC",
              paper="better consistency (no value readable)"),
    EditClaim("SADR raises DNS over ROME", "sadr", "DNS", paper="GPT-J +0.189 (0.304 -> 0.494)"),
    EditClaim("SADR raises RelS over ROME", "sadr", "RelS", paper="GPT-J +0.158 (0.119 -> 0.278)"),
    EditClaim("SADR lowers PS (its cost)", "sadr", "PS", direction=-1, paper="GPT-J -0.032 (0.996 -> 0.964)"),
    EditClaim("STEAM+SADR raises DNS over ROME", "steam+sadr", "DNS", paper="(the book's combination)"),
    EditClaim("STEAM+SADR raises portability over ROME", "steam+sadr", "Port", paper="(the book's combination)"),
)


def verdict(low: float, high: float, direction: int = +1) -> str:
    """One model's verdict on a difference's 95% interval: ``holds``, ``reversed`` or ``not shown``."""
    lo, hi = (low, high) if direction > 0 else (-high, -low)
    return "holds" if lo > 0 else "reversed" if hi < 0 else "not shown"


def level_verdict(low: float, threshold: float) -> str:
    """A level claim's verdict: ``holds`` when the interval's lower end reaches ``threshold``."""
    return "holds" if low >= threshold else "not shown"


def across_models(small: str, large: str) -> str:
    """The two models' verdicts as one: holds on both / only on the larger / only on the smaller / on neither
    (a reversal is named)."""
    if small == large == "holds":
        return "holds on both"
    if large == "holds":
        return "only on the larger" + (" (reversed on the smaller)" if small == "reversed" else "")
    if small == "holds":
        return "only on the smaller" + (" (reversed on the larger)" if large == "reversed" else "")
    rev = [MODEL_LABELS[m] for m, v in ((SMALL, small), (LARGE, large)) if v == "reversed"]
    return "on neither" + (f" (reversed on {' and '.join(rev)})" if rev else "")


# --- Chapters 3-6: the edits -------------------------------------------------------------------------------


def edit_rows(results: Path = RESULTS, *, write: str = "nearest") -> dict[str, pd.DataFrame]:
    """Each model's per-record rows on the same facts: Gemma's ``compare`` run (``write``: how ROME writes v* on
    its post-MLP norm, ``nearest`` or ``as_optimised``) and the at-scale SmolLM2 run's rows of the same case ids
    (every fact of the book's set was run there, with the same settings)."""
    large = read_per_record(results / LARGE / f"compare-{write}" / "per_record.jsonl")
    small = read_per_record(AT_SCALE / "per_record.jsonl")
    cases = list(dict.fromkeys(large["case_id"]))
    missing = sorted(set(cases) - set(small["case_id"]))
    if missing:
        raise ValueError(f"edit_rows: case ids {missing[:5]} of the {LARGE} run are not in the at-scale run. Fix: "
                         f"run both models on facts of the book's set.")
    small = small[small["case_id"].isin(cases)].copy()
    order = {c: i for i, c in enumerate(cases)}
    small["index"] = small["case_id"].map(order)
    return {SMALL: small.sort_values(["index", "method"], kind="stable"),
            LARGE: large.assign(index=large["case_id"].map(order))}


def edit_summaries(rows: Mapping[str, pd.DataFrame], *, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Per model, ``compare.summary_table`` as the book pairs methods (:data:`editlens.stats.BOOK_PAIRING`: whole
    relations resampled, Holm's correction over every difference of that model's table)."""
    from editlens.stats import BOOK_PAIRING

    return {m: summary_table(r, seed=seed, **BOOK_PAIRING) for m, r in rows.items()}


def _holm_mark(row: pd.Series) -> str:
    """`` †`` where the difference still excludes 0 after Holm's correction over the model's table."""
    holm = row.get("Holm excludes 0")
    return " †" if isinstance(holm, (bool, np.bool_)) and bool(holm) else ""


def _claim_row(table: pd.DataFrame, c: EditClaim, model: str) -> pd.Series:
    r = table[(table["metric"] == c.metric) & (table["method"] == c.method)]
    if r.empty:
        raise ValueError(f"edit_claims_table: no {c.method} {c.metric} row for {model}.")
    return r.iloc[0]


def _claim_cell(r: pd.Series, c: EditClaim) -> tuple[str, str]:
    """A claim's figure on one model (a level: the mean; else the difference to ROME, `` †`` after Holm) and its
    verdict."""
    if c.threshold is not None:
        return interval_text(r["mean"], r["low"], r["high"], 3, sign=False), level_verdict(r["low"], c.threshold)
    text = interval_text(r["diff vs rome"], r["diff low"], r["diff high"], 3) + _holm_mark(r)
    return text, verdict(r["diff low"], r["diff high"], c.direction)


def edit_claims_table(summaries: Mapping[str, pd.DataFrame], claims: Sequence[EditClaim] = EDIT_CLAIMS
                      ) -> pd.DataFrame:
    """One row per claim: each model's figure with its interval and verdict, the paper's figure and the verdict
    across the two models."""
    rows = []
    for c in claims:
        row: dict[str, object] = {"claim": c.claim}
        verdicts = {}
        for model, table in summaries.items():
            r = _claim_row(table, c, model)
            text, v = _claim_cell(r, c)
            row[MODEL_LABELS[model]] = f"{text} {v}"
            row[f"n {MODEL_LABELS[model]}"] = int(r["n"])
            verdicts[model] = v
        row["paper"] = c.paper
        row["verdict"] = across_models(verdicts[SMALL], verdicts[LARGE])
        rows.append(row)
    return pd.DataFrame(rows)


def sadr_gamma_run(gamma: float) -> str:
    """The folder of both models' ``compare --methods rome,sadr --sadr-gamma GAMMA`` run on the page's 100 facts."""
    return f"compare-sadr-gamma{gamma:g}"


SADR_GAMMA_RUN = sadr_gamma_run(30.0)
"""Both models' ``compare --methods rome,sadr --sadr-gamma 30`` runs on the same facts (the weight that the page
"SADR calibrated on this model" chose on SmolLM2, at the book's 20 steps)."""


CALIBRATION = ROOT / "book" / "results" / "sadr-calibration"
CALIBRATION_RUNS = {SMALL: "smollm2-135m-book-budget", LARGE: "gemma3-270m-book-budget"}
"""Each model's SADR calibration at the book's budget (``scripts/sadr_calibration.py --budget book``: ROME and SADR
at each gamma of a grid, 20 steps stopped on the new object's NLL, on 40 validation facts disjoint from the page's
100), by the folder under :data:`CALIBRATION`."""
AUTHORS_BUDGET_RUN = "smollm2-135m"
"""The page "SADR calibrated on this model": SmolLM2 at the authors' budget (80 steps), where gamma = 30 was chosen."""


def calibration(folder: str, calibration_dir: Path = CALIBRATION) -> tuple[pd.DataFrame, dict, dict]:
    """A stored calibration run (a folder under ``calibration_dir``): its table (``calibration.csv``), its choice
    (``calibration.json``) and its settings."""
    path = calibration_dir / folder
    if not (path / "calibration.csv").exists():
        raise FileNotFoundError(f"{path}/calibration.csv is missing. Fix: scripts/sadr_calibration.py (the command "
                                f"is in book/method-or-model.md).")
    return (pd.read_csv(path / "calibration.csv"), _load_json(path / "calibration.json"),
            _load_json(path / "settings.json"))


def chosen_gamma(model: str, calibration_dir: Path = CALIBRATION) -> float:
    """The SADR weight chosen on ``model``'s own validation facts at the book's budget."""
    return float(calibration(CALIBRATION_RUNS[model], calibration_dir)[1]["chosen gamma"])


def sadr_calibration_table(results: Path = RESULTS, calibration_dir: Path = CALIBRATION) -> pd.DataFrame:
    """SADR's weight calibrated by one protocol (the page "SADR calibrated on this model": PS cost nearest the
    authors' 3.22 points) on each model at the book's budget, beside SmolLM2's calibration at the authors' budget:
    per gamma, the PS cost and DNS gain over ROME on the run's validation facts, the chosen gamma marked. The last
    row counts the validation facts and, in brackets, those among the page's 100 reported facts."""
    reported = set(read_per_record(results / LARGE / SADR_GAMMA_RUN / "per_record.jsonl")["case_id"])
    runs = {f"{MODEL_LABELS[SMALL]}, 80 steps": calibration(AUTHORS_BUDGET_RUN, calibration_dir),
            **{f"{MODEL_LABELS[m]}, 20 steps": calibration(CALIBRATION_RUNS[m], calibration_dir)
               for m in (SMALL, LARGE)}}
    gammas = sorted({float(g) for table, _, _ in runs.values() for g in table["gamma"]})
    rows: list[dict[str, object]] = []
    for g in gammas:
        row: dict[str, object] = {"gamma": f"{g:g}"}
        for label, (table, choice, _) in runs.items():
            r = table[table["gamma"] == g]
            for what in ("PS cost", "DNS gain"):
                row[f"{label}: {what}"] = "" if r.empty else interval_text(
                    r.iloc[0][what], r.iloc[0][f"{what} low"], r.iloc[0][f"{what} high"], 3)
            if not r.empty and g == float(choice["chosen gamma"]):
                row[f"{label}: PS cost"] = f"{row[f'{label}: PS cost']} chosen"
        rows.append(row)
    facts: dict[str, object] = {"gamma": "facts (among the 100)"}
    for label, (_, _, settings) in runs.items():
        ids = set(settings["case_ids"])
        facts[f"{label}: PS cost"], facts[f"{label}: DNS gain"] = f"{len(ids)} ({len(ids & reported)})", ""
    return pd.DataFrame([*rows, facts])


def sadr_gamma_table(results: Path = RESULTS, calibration_dir: Path = CALIBRATION) -> pd.DataFrame:
    """SADR's claims on both models at gamma = 30 (chosen on SmolLM2 at the authors' budget) and at each model's own
    weight chosen at the book's budget (:func:`chosen_gamma`), where that differs; each run pairs SADR with its own
    ROME on the same 100 facts. The verdict reads each model at its own weight."""
    own = {m: chosen_gamma(m, calibration_dir) for m in (SMALL, LARGE)}
    columns = [(m, g) for m in (SMALL, LARGE) for g in sorted({30.0, own[m]}, reverse=True)]
    summaries, cases = {}, {}
    for m, g in columns:
        rows = read_per_record(results / m / sadr_gamma_run(g) / "per_record.jsonl")
        cases[(m, g)] = set(rows["case_id"])
        summaries[(m, g)] = edit_summaries({m: rows})[m]
    if len({frozenset(c) for c in cases.values()}) > 1:
        raise ValueError("sadr_gamma_table: the gamma runs hold different facts. Fix: run each with --cases "
                         f"{results / LARGE / 'compare-nearest' / 'settings.json'}.")
    out = []
    for c in (c for c in EDIT_CLAIMS if c.method == "sadr"):
        row: dict[str, object] = {"claim": c.claim}
        verdicts = {}
        for m, g in columns:
            text, v = _claim_cell(_claim_row(summaries[(m, g)], c, m), c)
            row[f"{MODEL_LABELS[m]}, γ = {g:g}" + (" (its own)" if own[m] == g else "")] = f"{text} {v}"
            if own[m] == g:
                verdicts[m] = v
        row["paper"] = c.paper
        row["verdict, each at its own γ"] = across_models(verdicts[SMALL], verdicts[LARGE])
        out.append(row)
    return pd.DataFrame(out)


def write_comparison(summaries_a: Mapping[str, pd.DataFrame], summaries_b: Mapping[str, pd.DataFrame],
                     claims: Sequence[EditClaim] = EDIT_CLAIMS) -> pd.DataFrame:
    """Gemma's claims under both ways of writing v* (``nearest``, the default, and ``as_optimised``): does the
    verdict depend on the write?"""
    rows = []
    for c in claims:
        row: dict[str, object] = {"claim": c.claim}
        for label, s in (("nearest", summaries_a[LARGE]), ("as optimised", summaries_b[LARGE])):
            text, v = _claim_cell(_claim_row(s, c, LARGE), c)
            row[label] = f"{text} {v}"
        rows.append(row)
    return pd.DataFrame(rows)


# --- Chapter 1: locating the heads --------------------------------------------------------------------------

HEADS_ROWS: tuple[tuple[str, str], ...] = (
    ("accuracy / pairwise consistency", "ParaRel-style probing of the unedited model"),
    ("training pairs, % consistent", ""),
    ("best probe vs its shuffled baseline", "probes on a few heads predict consistency"),
    ("metadata baseline; heads beating it", "(not measured in the paper)"),
    ("top probe head", ""),
    ("top patching heads", "(the paper locates by probes only)"),
    ("largest single-head share of the gap", "a small set of heads decides"),
    ("probe map vs patching map", "(not measured in the paper)"),
    ("activation vs attribution patching", "(not measured in the paper)"),
)
"""Chapter 1's summary rows (its ``this_run`` table) and what the paper says on each."""


def chapter_values(model: str, chapter: str, results: Path = RESULTS) -> dict:
    """The objects a chapter's replay on ``model`` stored (``scripts/method_or_model.py replay``)."""
    path = results / model / chapter / "values.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist. Fix: scripts/method_or_model.py replay {chapter} "
                                f"--model {model}")
    return _load_json(path)


def heads_table(results: Path = RESULTS) -> pd.DataFrame:
    """Chapter 1 on both models: its summary rows, the heads Chapter 2 steers by depth, and the paper's claim."""
    vals = {m: chapter_values(m, "01_consistency_heads", results) for m in (SMALL, LARGE)}
    rows = [{"measure": k, **{MODEL_LABELS[m]: vals[m]["this_run"][k] for m in vals}, "paper": p}
            for k, p in HEADS_ROWS]
    share = {}
    for m, v in vals.items():
        n_heads = int(v["this_run"]["metadata baseline; heads beating it"].split("/")[-1])
        share[MODEL_LABELS[m]] = f"{v['n_beat'] / n_heads:.0%} of {n_heads}"
    rows.insert(4, {"measure": "share of heads beating the metadata baseline", **share, "paper": ""})
    depth = {}
    for m, v in vals.items():
        layers = np.array([layer for layer, _ in v["loaded"]], dtype=float)
        mid = float(np.median(layers))
        depth[MODEL_LABELS[m]] = f"{mid:.0f} of {v['n_layers']} layers (depth {mid / (v['n_layers'] - 1):.2f})"
    rows.append({"measure": "median layer of the heads Chapter 2 steers", **depth, "paper": ""})
    return pd.DataFrame(rows)


# --- Chapter 3: causal tracing ------------------------------------------------------------------------------

PEAK_DEPTH = 0.5
"""The tracing claim: the MLPs' indirect effect at the subject's last token peaks in the first half of the
network (ROME: GPT-2 XL's peak around layer 17 of 48, GPT-J's edit layer 5 of 28)."""


def peak_layers(per_fact: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> tuple[int, np.ndarray]:
    """The layer (from 1: MLP 0 acts on the embedding itself, not an edit site) where the mean indirect effect over
    facts peaks, and the peak layer of each of ``n_boot`` resamples of the facts (seeded)."""
    per_fact = np.asarray(per_fact, dtype=float)
    peak = 1 + int(np.argmax(per_fact[:, 1:].mean(0)))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_fact), size=(n_boot, len(per_fact)))
    boot = 1 + np.argmax(per_fact[draws][:, :, 1:].mean(1), axis=1)
    return peak, boot


def tracing_table(results: Path = RESULTS) -> pd.DataFrame:
    """Causal tracing of the MLPs on both models (the facts each knows among 160 spread over relations): the peak
    layer with the 95% interval of its bootstrap over facts, its depth, the effect there, and the edit layer the
    package uses."""
    from editlens.rome.hparams import get_hparams

    rows: list[dict[str, object]] = []
    verdicts = {}
    for m in (SMALL, LARGE):
        t = _load_json(results / m / "tracing" / "tracing.json")
        n_layers = int(t["n_layers"])
        per_fact = np.asarray(t["per_fact_subject_last"], dtype=float)
        peak, boot = peak_layers(per_fact)
        lo, hi = (int(x) for x in np.percentile(boot, [2.5, 97.5], method="nearest"))
        d_peak, d_lo, d_hi = (layer / (n_layers - 1) for layer in (peak, lo, hi))
        v = "holds" if d_hi <= PEAK_DEPTH else "not shown"
        verdicts[m] = v
        mean = per_fact.mean(0)
        rows.append({
            "model": MODEL_LABELS[m], "facts traced": f"{t['n_traced']} of {t['n_traced'] + t['n_skipped']}",
            "p clean / corrupted": f"{np.mean(t['p_clean']):.2f} / {np.mean(t['p_corrupted']):.3f}",
            "peak MLP layer [95% CI]": f"{peak} [{lo}, {hi}] of {n_layers}",
            "peak depth [95% CI]": f"{d_peak:.2f} [{d_lo:.2f}, {d_hi:.2f}]",
            "effect at peak": f"{mean[peak]:.3f}",
            "edit layer used": str(get_hparams(m).layer),
            "verdict": v,
        })
    rows.append({"model": "paper (ROME)", "facts traced": "", "p clean / corrupted": "",
                 "peak MLP layer [95% CI]": "middle-layer MLPs", "peak depth [95% CI]": "0.36 (GPT-2 XL), 0.19 (GPT-J)",
                 "effect at peak": "", "edit layer used": "17 of 48 (GPT-2 XL), 5 of 28 (GPT-J)",
                 "verdict": across_models(verdicts[SMALL], verdicts[LARGE])})
    return pd.DataFrame(rows)


# --- Chapter 2: steering against fine-tuning -----------------------------------------------------------------

SPLITS = {"test_subjects": "held-out subjects", "test_relations": "held-out relations"}
STEERING_LABELS = {"mass-mean": "uncentred steering (the paper's recipe)", "centred": "per-query centred steering"}


def _interval(frame: pd.DataFrame, diff: str, low: str, high: str) -> tuple[float, float, float]:
    if len(frame) != 1:
        raise ValueError(f"expected one row, got {len(frame)}")
    r = frame.iloc[0]
    return float(r[diff]), float(r[low]), float(r[high])


def steering_claims(results: Path = RESULTS) -> pd.DataFrame:
    """Chapter 2's claims on both models, each per held-out test set: steering (uncentred and centred) raises
    consistency over the unsteered model and over its random-head and random-direction controls; SFT and LoRA
    raise it; steering is cheaper than SFT. Intervals: per-query paired bootstrap (the chapter's)."""
    rows: list[dict[str, object]] = []
    frames = {}
    for m in (SMALL, LARGE):
        folder = results / m / "02_consistency_steering"
        frames[m] = {name: pd.read_csv(folder / f"{name}.csv") for name in ("intervals", "paired", "fair_table")}

    def add(claim: str, paper: str, pick) -> None:
        row: dict[str, object] = {"claim": claim}
        verdicts = {}
        for m in (SMALL, LARGE):
            d, lo, hi = pick(frames[m])
            v = verdict(lo, hi)
            row[MODEL_LABELS[m]] = f"{interval_text(d, lo, hi, 3)} {v}"
            verdicts[m] = v
        row["paper"] = paper
        row["verdict"] = across_models(verdicts[SMALL], verdicts[LARGE])
        rows.append(row)

    for split, split_label in SPLITS.items():
        for directions, label in STEERING_LABELS.items():
            for against in ("unsteered", "random heads", "random directions"):
                def pick(f, directions=directions, split=split, against=against):
                    t = f["intervals"]
                    sel = t[(t["directions"] == directions) & (t["split"] == split) & (t["against"] == against)
                            & (t["metric"] == "consistency")]
                    return _interval(sel, "diff", "low", "high")
                paper = "raises consistency" if against == "unsteered" and directions == "mass-mean" else ""
                add(f"{label} beats the {against if against != 'unsteered' else 'unsteered model'}, "
                    f"{split_label}", paper, pick)
        for method in ("SFT", "LoRA"):
            def pick_tuned(f, method=method, split=split):
                t = f["paired"]
                sel = t[(t["split"] == split) & (t["method"] == method) & (t["metric"] == "consistency")]
                return _interval(sel, "diff vs unsteered", "diff low", "diff high")
            add(f"{method} raises consistency, {split_label}", "SFT: the paper's baseline" if method == "SFT" else "",
                pick_tuned)
    return pd.DataFrame(rows)


def steering_cost(results: Path = RESULTS) -> pd.DataFrame:
    """Seconds to build each chosen model state (Chapter 2's table of section 10) and SFT's and LoRA's cost as a
    multiple of steering's; the paper reports steering up to 23x faster than SFT."""
    rows = []
    for m in (SMALL, LARGE):
        ft = pd.read_csv(results / m / "02_consistency_steering" / "fair_table.csv").set_index("model")
        steer = float(ft.loc["steering", "seconds"])
        rows.append({"model": MODEL_LABELS[m], "steering s": f"{steer:.1f}",
                     "SFT s": f"{ft.loc['SFT', 'seconds']:.1f}", "LoRA s": f"{ft.loc['LoRA', 'seconds']:.1f}",
                     "SFT / steering": f"{ft.loc['SFT', 'seconds'] / steer:.1f}x",
                     "LoRA / steering": f"{ft.loc['LoRA', 'seconds'] / steer:.1f}x"})
    rows.append({"model": "paper (Yang et al.)", "steering s": "", "SFT s": "", "LoRA s": "",
                 "SFT / steering": "up to 23x", "LoRA / steering": ""})
    return pd.DataFrame(rows)


# --- tables as Markdown --------------------------------------------------------------------------------------


def markdown(frame: pd.DataFrame) -> str:
    """A plain pipe table (the page includes the file as written)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(r[c]) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


RUNS: tuple[tuple[str, str, str], ...] = (
    ("Chapter 1 replayed", "01_consistency_heads", "the whole chapter"),
    ("Chapter 2 replayed", "02_consistency_steering", "the whole chapter"),
    ("causal tracing", "tracing", "the known facts among 160, 10 noisy runs each"),
    ("ROME, STEAM, ROME+SADR, STEAM+SADR (v* nearest on its ray)", "compare-nearest", "100 facts, 400 edits"),
    ("the same, v* as optimised", "compare-as_optimised", "100 facts, 400 edits"),
    ("ROME and ROME+SADR at gamma = 30", SADR_GAMMA_RUN, "100 facts, 200 edits, no generation"),
    ("SADR calibration: ROME and 6 gammas", "sadr-calibration", "40 validation facts, 280 edits, no generation"),
)
"""The page's runs: what, the folder under each model's results, and its size."""


NOT_RUN_ON_SMALL = {"compare-nearest": "the at-scale run's rows", "compare-as_optimised": "(no norm after its MLP)"}


def runs_table(results: Path = RESULTS) -> pd.DataFrame:
    """Each run of the page and its wall-clock minutes per model (one thread; ``minutes`` in the run's
    ``settings.json`` or ``tracing.json``). SmolLM2's 4-method edits are the at-scale run's (not timed per fact)."""
    rows = []
    for what, folder, size in RUNS:
        row = {"run": what, "size": size}
        for m in (SMALL, LARGE):
            path = results / m / folder / ("tracing.json" if folder == "tracing" else "settings.json")
            if folder == "sadr-calibration":  # run in shares: their minutes add up
                path = CALIBRATION / CALIBRATION_RUNS[m] / "settings.json"
            if path.exists():
                run = _load_json(path)
                row[MODEL_LABELS[m]] = f"{sum(run.get('minutes per share', [run['minutes']])):.1f} min"
            elif m == SMALL and folder in NOT_RUN_ON_SMALL:
                row[MODEL_LABELS[m]] = NOT_RUN_ON_SMALL[folder]
            else:
                raise FileNotFoundError(f"runs_table: {path} is missing. Fix: make the run (book/method-or-model.md).")
        rows.append(row)
    own: dict[str, object] = {"run": "ROME and ROME+SADR at the model's own gamma", "size": "100 facts, 200 edits, "
                              "no generation"}
    for m in (SMALL, LARGE):
        g = chosen_gamma(m)
        own[MODEL_LABELS[m]] = ("the gamma = 30 run" if g == 30.0 else
                                f"{_load_json(results / m / sadr_gamma_run(g) / 'settings.json')['minutes']:.1f} min "
                                f"(gamma = {g:g})")
    return pd.DataFrame([*rows, own])


def tables(results: Path = RESULTS) -> dict[str, pd.DataFrame]:
    """Every table of the page, by file name, computed from the stored runs in ``results``."""
    out = {"runs": runs_table(results), "heads": heads_table(results), "steering": steering_claims(results), "steering-cost": steering_cost(results),
           "tracing": tracing_table(results)}
    nearest = edit_summaries(edit_rows(results, write="nearest"))
    out["edits"] = edit_claims_table(nearest).drop(columns=[f"n {v}" for v in MODEL_LABELS.values()])
    out["sadr-calibration"] = sadr_calibration_table(results)
    out["sadr-gamma"] = sadr_gamma_table(results)
    out["edits-write"] = write_comparison(nearest, edit_summaries(edit_rows(results, write="as_optimised")))
    return out


def write_tables(results: Path = RESULTS) -> list[Path]:
    """Write every table of the page into ``results`` as ``NAME.csv`` and ``NAME.md``; returns the paths."""
    written = []
    for name, frame in tables(results).items():
        frame.to_csv(results / f"{name}.csv", index=False)
        (results / f"{name}.md").write_text(markdown(frame), encoding="utf-8")
        written += [results / f"{name}.csv", results / f"{name}.md"]
    return written
