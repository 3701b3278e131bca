"""Several editing methods over the same records, paired: the synthesis table of Chapter 6 and ``editlens compare``.

Taught in: Chapter 6 (synthesis). One job: run every method of :data:`METHODS` on each record (each edit starts
from the unedited weights; :func:`editlens.evaluate.evaluate_edits` restores them exactly), collect one row per
(record, method), and pair the methods on those records (:func:`editlens.stats.paired_table`, against ROME).

The editors are the chapters' own: ``rome`` (:func:`~editlens.rome.editor.rome_editor`), ``steam``
(:func:`~editlens.steam.steam_editor`), ``sadr`` (ROME+SADR, :func:`~editlens.sadr.sadr_editor`) and
``steam+sadr`` (STEAM's and SADR's terms in one v* optimisation: ``sadr_editor(..., also=steam_terms(...))``), all
made by :func:`build_editors` from the registry of methods, :mod:`editlens.methods`.

A record's row does not depend on the process or the order it runs in: every (record, method) edit starts from the
same weights and is seeded from the record's position in the full list (:func:`record_seed`), so a run spread over
processes (:func:`shares`, then :func:`merge_rows` of the gathered rows) equals a single-process run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from editlens.data import FactLike, as_case
from editlens.display import interval_text
from editlens.fingerprint import weights_fingerprint

# re-exported: the registry's names, as compare has always offered them
from editlens.methods import (  # noqa: F401
    LABELS,
    NAMES,
    UnknownMethodError,
    build_editors,
    parse_methods,
    uses,
)
from editlens.seeding import seed_everything

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

METHODS = NAMES
"""Method names accepted by :func:`parse_methods` (``sadr`` is ROME+SADR): the registry's, :mod:`editlens.methods`."""

ROW_METRICS = ("ES", "PS", "NS", "EM", "PM", "NM", "RelS", "DNS", "Port", "Port EM", "GE", "RS", "SC")
"""Per-record metrics copied from :func:`editlens.evaluate.case_metrics` (those a record has)."""

TABLE_METRICS = ("ES", "PS", "NS", "RelS", "DNS", "Port", "Port EM", "GE", "RS", "SC", "steps", "seconds")
"""Metrics of the summary table and figure, in order (those present in the per-record results)."""

COST_METRICS = ("steps", "seconds")
"""What each edit cost: its v* ``steps`` (every method stops by ROME's rule on the same quantity, so a difference is
the method's term) and ``seconds`` per edit."""

KEYS = ("index", "case_id", "relation", "method")
"""Identifying columns of a per-record row; the rest are metrics (:data:`COST_METRICS`: the edit's cost)."""


def record_seed(seed: int, index: int) -> int:
    """The seed of record ``index`` (its position in the full record list): the same in every process."""
    return (int(seed) * 1_000_003 + int(index)) % 2**31


def run_methods(model: TransformerBridge, cases: Sequence[FactLike], editors: Mapping[str, Any], *,
                indices: Sequence[int] | None = None,
                generation: Any = None, seed: int = 0, descriptions: dict | None = None, progress: bool = True,
                warmup: bool = True, check_restored: bool = True, generation_batch: int = 32) -> pd.DataFrame:
    """One row per (record, method): ``index`` (position in the full list; ``indices`` gives them for a share),
    ``case_id``, ``relation``, ``method``, the metrics of the edited model (:data:`ROW_METRICS` that the record has),
    the edit's v* ``steps`` (:func:`editlens.evaluate.edit_steps`) and ``seconds`` per edit. Each edit runs alone
    from the unedited weights, seeded with :func:`record_seed`, and is measured as
    :func:`editlens.evaluate.evaluate_edits` measures it. An editor with a ``prepare`` method
    (``build_editors(..., batch=n)``) computes the v* of its next ``n`` records together before the first of them
    is edited; each of them is then charged an equal share of that batch's seconds, so ``seconds`` stays the
    method's cost per edit (amortised over its batch), and a row depends on the records of its batch up to float
    noise. ``generation``: :class:`editlens.evaluate.GenerationSettings` or None. Greedy generations are deferred and
    run in batches of about ``generation_batch`` rows (a record's prompts under every method, for as many
    consecutive records as fill a batch; each row with its method's rank-one edit, :mod:`editlens.rome.rowwise`):
    one token for 32 rows costs about what one token for one row costs on a CPU, whose small forward passes are
    bound by reading the weights. A row's generations depend on the other records of its batch through left
    padding only, at float rounding, as its v* depends on the records of its v* batch.
    ``warmup``: one untimed edit per method first (the first edit of a process pays one-time costs that would
    otherwise count against the first method). ``check_restored`` verifies at the end that the weights are those of
    the start (bit for bit: :func:`editlens.fingerprint.weights_fingerprint` hashes their bytes again)."""
    from tqdm import tqdm

    from editlens.data import load_object_descriptions
    from editlens.evaluate import (
        DeferredGenerations,
        edit_steps,
        measure_edit,
        run_deferred_generations,
    )
    from editlens.rome.editor import EarlierEdits

    records = [as_case(c) for c in cases]
    indices = list(range(len(records))) if indices is None else list(indices)
    if len(indices) != len(records):
        raise ValueError(f"run_methods: {len(indices)} indices for {len(records)} records.")
    descriptions = load_object_descriptions() if descriptions is None else descriptions
    corpus = [t for ts in descriptions.values() for t in ts]
    if getattr(generation, "semantic", False):
        from editlens.sentence import load_sentence_model

        load_sentence_model()  # now, not inside the progress bar
    before = weights_fingerprint(model, recompute=True) if check_restored else None
    if warmup and records:
        for editor in editors.values():
            seed_everything(record_seed(seed, indices[0]))
            with editor(model, records[0]):
                pass
    rows: list[dict[str, Any]] = []
    batch_share: dict[str, dict[tuple, float]] = {m: {} for m in editors}  # method -> record key -> its seconds
    deferred: list[DeferredGenerations] = []  # records x methods whose generations wait for a full batch

    def generate_deferred() -> None:
        run_deferred_generations(model, deferred, generation, descriptions=descriptions, corpus=corpus,
                                 batch_size=generation_batch)
        deferred.clear()

    with tqdm(total=len(records) * len(editors), disable=not progress, desc="records x methods") as bar:
        for pos, (i, case) in enumerate(zip(indices, records)):
            for method, editor in editors.items():
                seed_everything(record_seed(seed, i))
                prepare = getattr(editor, "prepare", None)
                if prepare is not None:
                    t0 = time.perf_counter()
                    made = prepare(model, records[pos:])
                    if made:
                        share = (time.perf_counter() - t0) / len(made)
                        batch_share[method].update((key, share) for key in made)
                t0 = time.perf_counter()
                with editor(model, case) as info:
                    seconds = time.perf_counter() - t0 + batch_share[method].pop(EarlierEdits.key(case), 0.0)
                    metrics, later = measure_edit(model, case, info, generation=generation,
                                                  descriptions=descriptions, corpus=corpus)
                if later is not None:
                    deferred.append(later)
                rows.append({"index": i, "case_id": case.case_id, "relation": case.relation_id,
                             "method": method, "steps": edit_steps(info), "seconds": seconds, "_metrics": metrics})
                bar.update(1)
                bar.set_postfix(method=method, case=case.case_id)
            if sum(len(d.prompts) for d in deferred) >= generation_batch:
                generate_deferred()
        if deferred:
            generate_deferred()
    if check_restored and weights_fingerprint(model, recompute=True) != before:
        raise RuntimeError("run_methods: the weights after the edits differ from those before; an editor did not "
                           "restore them. Fix: edit inside the editor's context manager only.")
    for row in rows:
        edited = row.pop("_metrics")
        row.update({k: float(edited[k]) for k in ROW_METRICS if k in edited})
    return per_record_frame(rows)


def per_record_frame(rows: Sequence[Mapping]) -> pd.DataFrame:
    """Per-record rows (dicts) as a DataFrame: :data:`KEYS`, then the metrics present, in table order, then any
    other measurement the rows carry (a script's own, e.g. ``scripts/steam_alignment.py``'s cosines), in the order
    first seen (a value that a row lacks is NaN)."""
    present = list(dict.fromkeys(k for r in rows for k in r))
    metrics = [k for k in (*ROW_METRICS, *COST_METRICS) if k in present]
    extra = [k for k in present if k not in KEYS and k not in metrics]
    return pd.DataFrame(list(rows), columns=[*KEYS, *metrics, *extra]).astype({k: float for k in metrics})


def shares(n: int, n_processes: int) -> list[list[int]]:
    """The record indices of each process: contiguous shares, the first ``n % n_processes`` one longer
    (what :meth:`accelerate.PartialState.split_between_processes` gives a list of ``n`` items)."""
    base, extra = divmod(n, n_processes)
    out, start = [], 0
    for p in range(n_processes):
        end = start + base + (1 if p < extra else 0)
        out.append(list(range(start, end)))
        start = end
    return out


def merge_rows(parts: Iterable[Iterable[Mapping]], methods: Sequence[str], n_records: int | None = None
               ) -> list[dict]:
    """Rows gathered from the processes (in any order) -> one list in record order, then method order.
    Checks that every (record, method) is there exactly once (records ``0..n_records-1`` when given)."""
    rows = [dict(r) for part in parts for r in part]
    order = {m: k for k, m in enumerate(methods)}
    seen = [(r["index"], r["method"]) for r in rows]
    if len(set(seen)) != len(seen):
        raise ValueError("merge_rows: a (record, method) came back twice; the processes' shares overlap.")
    if n_records is not None:
        want = {(i, m) for i in range(n_records) for m in methods}
        if set(seen) != want:
            raise ValueError(f"merge_rows: {len(want - set(seen))} (record, method) results are missing and "
                             f"{len(set(seen) - want)} unexpected.")
    return sorted(rows, key=lambda r: (r["index"], order[r["method"]]))


def summary_table(per_record: pd.DataFrame, metrics: Sequence[str] | None = None, *, baseline: str = "rome",
                  n_boot: int = 2000, seed: int = 0, cluster: str | None = None,
                  correction: str | None = None) -> pd.DataFrame:
    """Per metric and method: mean over records with its bootstrap CI, and the paired difference to ``baseline``
    (:func:`editlens.stats.paired_table`). A metric is paired on the records where every method has it (Port and
    RelS exist only for some records; ``n`` says how many); a metric no record has under all methods is left out.
    Rates (ES ... Port) are fractions in [0, 1], as in the per-record results. ``cluster="relation"``: intervals
    that resample whole relations; ``correction="holm"``: bootstrap p-values with Holm's adjustment over every
    difference of the table (``p``, ``p Holm``, ``Holm excludes 0``)."""
    from editlens.stats import paired_metrics_table

    methods = list(dict.fromkeys(per_record["method"]))
    if baseline not in methods:
        raise ValueError(f"summary_table: baseline {baseline!r} is not among the methods {methods}. Fix: include it "
                         f"(e.g. --methods rome,...) or pass baseline= one of them.")
    methods = [baseline] + [m for m in methods if m != baseline]
    metrics = [m for m in (metrics or TABLE_METRICS) if m in per_record.columns]
    ordered = per_record.assign(method=pd.Categorical(per_record["method"], methods)).sort_values(["method", "index"])
    ordered = ordered.assign(method=ordered["method"].astype(str))
    try:
        table = paired_metrics_table(ordered, metrics, method="method", fact="index", baseline=baseline,
                                     n_boot=n_boot, seed=seed, cluster=cluster, correction=correction)
    except ValueError as err:
        raise ValueError(f"summary_table: {err}") from None
    table.insert(2, "label", table["method"].map(LABELS).fillna(table["method"]))
    return table


def _excludes_zero(row: Mapping) -> bool:
    v = row.get("CI excludes 0")
    return isinstance(v, (bool, np.bool_)) and bool(v)


def summary_markdown(table: pd.DataFrame) -> str:
    """The summary table as Markdown: ``mean [low, high]`` and the paired difference with its CI (``*``: the CI
    excludes 0; ``†``: still so after Holm's correction, when the table has it). Three decimals, never ``-0.000``;
    an end of an excluding CI that rounds to 0 shows more digits (:func:`editlens.display.interval_text`)."""
    diff = next((c for c in table.columns if c.startswith("diff vs ")), None)
    head = "| metric | method | n | mean [95% CI] |" + (f" {diff} [95% CI] |" if diff else "")
    lines = [head, "|---|---|---:|---|" + ("---|" if diff else "")]
    for _, r in table.iterrows():
        mean = interval_text(r["mean"], r["low"], r["high"], 3, sign=False)
        line = f"| {r['metric']} | {r['label']} | {r['n']} | {mean} |"
        if diff:
            v = r[diff]
            holm = r.get("Holm excludes 0")
            star = (" *" if _excludes_zero(r) else "") + (" †" if isinstance(holm, (bool, np.bool_)) and holm else "")
            line += (" |" if pd.isna(v) else f" {interval_text(v, r['diff low'], r['diff high'], 3)}{star} |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def summary_figure(table: pd.DataFrame, path: str | Path | None = None, *, ncol: int = 2):
    """One seaborn figure: a panel per metric, ``ncol`` panels per row, each method's mean with its 95% CI (the
    baseline's mean as a dashed line; a filled marker where the paired CI against it excludes 0). One book column
    wide (:data:`editlens.display.COLUMN_INCHES`), so its text reads at the body's size. Returns the figure; saves
    it to ``path``."""
    import seaborn as sns
    from matplotlib.figure import Figure

    from editlens.display import COLUMN_INCHES, DPI

    metrics = list(dict.fromkeys(table["metric"]))
    labels = list(dict.fromkeys(table["label"]))
    colours = dict(zip(labels, sns.color_palette("colorblind", len(labels))))
    ncol = max(1, min(ncol, len(metrics)))
    nrow = -(-len(metrics) // ncol)
    size = (COLUMN_INCHES, 0.5 + nrow * (0.7 + 0.25 * len(labels)))
    # A figure saved to a file is not registered with pyplot (no backend switch, nothing left open in a notebook);
    # the styles are scoped to this figure (no global seaborn theme change).
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        if path is None:
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=size, dpi=DPI, layout="constrained")
        else:
            fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        axes = fig.subplots(nrow, ncol, sharey=True, squeeze=False)
        _draw_summary(axes, table, metrics, labels, colours)
        fig.suptitle(f"Mean per record, 95% bootstrap CI. Dashed: {labels[0]}'s mean;\n"
                     f"filled: {labels[0]}, and each method whose paired CI against it excludes 0")
    if path is not None:
        fig.savefig(path, dpi=DPI)  # the column's pixels at 100% zoom (editlens.display)
    return fig


def _draw_summary(axes, table: pd.DataFrame, metrics: list, labels: list, colours: dict) -> None:
    for ax, metric in zip(axes.flat, metrics):
        t = table[table["metric"] == metric].set_index("label").reindex(labels).dropna(subset=["mean"])
        ax.axvline(t["mean"].iloc[0], color="grey", ls="--", lw=1)
        for y, (label, r) in enumerate(t.iterrows()):
            sig = _excludes_zero(r)
            ax.errorbar(r["mean"], y, xerr=[[r["mean"] - r["low"]], [r["high"] - r["mean"]]], fmt="o", ms=6,
                        color=colours[label], mfc=colours[label] if sig or y == 0 else "white", capsize=3)
        ax.set_yticks(range(len(t)), list(t.index))
        ax.set_title(f"{metric} (n={int(t['n'].iloc[0])})")
        ax.set_ylim(len(labels) - 0.5, -0.5)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)


def write_outputs(out: str | Path, per_record: pd.DataFrame, *, settings: Mapping[str, Any] | None = None,
                  figure: bool = True, cluster: str | None = None, correction: str | None = None,
                  metrics: Sequence[str] | None = None) -> dict[str, Path]:
    """``out/per_record.jsonl`` (one JSON object per row, record order), ``summary.csv``, ``summary.md``,
    ``figure.png`` and ``settings.json``. Returns the paths written. ``cluster``, ``correction``: how the summary's
    intervals are computed (:func:`summary_table`); recorded in ``settings.json`` under ``"summary"``.
    ``metrics``: the summary's metrics (default :data:`TABLE_METRICS`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"per_record": out / "per_record.jsonl", "summary_csv": out / "summary.csv",
             "summary_md": out / "summary.md"}
    with paths["per_record"].open("w", encoding="utf-8") as f:
        for row in per_record.to_dict(orient="records"):
            clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            f.write(json.dumps(clean, default=str) + "\n")
    table = summary_table(per_record, metrics, cluster=cluster, correction=correction)
    table.to_csv(paths["summary_csv"], index=False)
    paths["summary_md"].write_text(summary_markdown(table), encoding="utf-8")
    if figure:
        paths["figure"] = out / "figure.png"
        summary_figure(table, paths["figure"])
    if settings is not None:
        settings = {**settings, "summary": {"cluster": cluster, "correction": correction}}
        paths["settings"] = out / "settings.json"
        paths["settings"].write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")
    return paths


def read_per_record(path: str | Path) -> pd.DataFrame:
    """``per_record.jsonl`` back as a DataFrame (missing metrics as NaN)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return per_record_frame([{k: (math.nan if v is None else v) for k, v in r.items()} for r in rows])
