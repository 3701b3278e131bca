# %% [markdown]
# # 5. SADR: does an edit make the model stare at its subject?
#
# Chapter 3 measured a side effect of ROME that CounterFact's neighbourhood score does not see.
# Put the edited subject anywhere in the context and ask about something else, and the model
# tends to answer with the edit's new object: RelS (same subject, another relation) fell from
# 100 to 63 and DNS (the edit stated as text, then an unrelated neighbourhood prompt) from 73.5
# to 54.2. SADR {cite}`wang2025sadr` (ICLR 2025, arXiv 2502.14838) calls this *specificity
# failure* and names a cause: *attention drift*. After the edit, attention heads at the
# predicting position look at the edited subject much more than before, so the edited subject's
# new value leaks into every answer given in its presence. Their fix, SADR, adds one term to
# ROME's $v_*$ loss that keeps those attention rows close to where they were.
#
# This chapter checks each link on the embedded model, on the same 50 facts as Chapter 3: the
# failure, the drift, whether the drift *causes* the failure (the authors' own restoration
# experiment, with a control), and whether the regulariser fixes specificity without losing the
# edit. The authors compared ROME run for 20 optimisation steps with ROME+SADR run for 80, so
# the chapter also separates what the regulariser does from what 60 more steps do.
#
# ```{admonition} Objectives
# - Measure specificity failure on distracted prompts, with probabilities, on one fact and over many.
# - See attention drift: attention from the last prompt token to the edited subject, per layer and head, before and after an edit.
# - Test the drift causally: put the unedited attention patterns back into the edited model and measure what comes back, against a random-heads control.
# - Write SADR's regulariser as a `LossTerm` (selective mask, KL to the unedited attention, the authors' reduction and constants) and check that $\gamma = 0$ is ROME bit for bit.
# - Compare ROME and ROME+SADR with paired differences and bootstrap intervals (whole relations resampled, Holm's correction over the comparison table), at the authors' step counts and at equal steps.
# ```
#
# **Prerequisites.** Chapter 3 (ROME, its $v_*$ loss, the evaluation and its DNS and RelS
# probes). Chapter 1 (attention patterns, `hook_pattern`). Chapter 4 (a `LossTerm` added to
# ROME's $v_*$ loss).
#
# **Time to run.** About 8 minutes with the embedded model: 7.8 minutes measured on one thread
# of the book's build machine, whose CPU has native bfloat16 units (AMX; the time is printed at
# the end of the chapter, step by step); a CPU without them computes in float32 and takes longer
# (the float32 column of {ref}`the chapter times <chapter-times>`).
# Almost all of it is computing and evaluating edits: ROME's 50 edits 57.6 s (1.15 s per edit,
# 25 facts optimised together) and their evaluation 42.4 s, the restoration experiment 26.4 s,
# ROME+SADR with the authors' 80 steps 211.8 s for the 50 edits (4.24 s per edit: up to four
# times ROME's steps), whose first 20 steps also give the 20-step ROME+SADR edits (section 5),
# the two evaluations 29.4 s each, the $\gamma$ sweep 29.5 s. Every diagnostic reuses those
# edits. Lower `N_EVAL_FACTS` and `N_SWEEP_FACTS` for a quicker run in class.

# %% tags=["parameters"]
# Parameters (papermill: `-p NAME VALUE`)
# None = the embedded SmolLM2-135M-Instruct; e.g. "gpt2-xl" on a GPU
MODEL_NAME = None
DEVICE = None
# "auto": bf16 matrix products where the CPU/GPU has native bf16, else
# float32; or "float32", "bfloat16"
DTYPE = "auto"
# facts edited by every method (Chapter 3's 50), over the relations
N_EVAL_FACTS = 50
# facts of the gamma sweep (those with the largest drop after ROME)
N_SWEEP_FACTS = 6
N_STOP_FACTS = 3  # facts on which the early-stopping rules are compared
# SADR's gamma: the authors' ROME weight 100 times their factor 1e-4
GAMMA = 0.01
# sweep at equal steps; 0 (ROME) and GAMMA are reused
GAMMAS = [0.0, 0.01, 0.1, 1.0]
# v* steps of ROME (the authors' baseline) and of the equal-steps SADR
STEPS_ROME = 20
STEPS_SADR = 80  # v* steps of the authors' ROME+SADR
# a fact "fails" when P(true answer) on its distracted prompts drops this
# much (restoration, section 3)
MIN_DROP = 0.1
# restoration: the k most drifted heads (and as many random heads)
TOP_K_HEADS = [5, 10, 20]
N_ROW_HEADS = 3  # most drifted heads whose full attention row is drawn
GEN_PROMPTS = 1  # generation prompts per fact (fluency GE)
GEN_TOKENS = 30  # tokens per generation
# facts whose v* are optimised together (one forward and backward pass
# per step for all of them); results equal one-at-a-time to float noise
EDIT_BATCH = 25
SEED = 0

# %%
import contextlib
import textwrap
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from tqdm import tqdm

import editlens
from editlens import evaluate, sadr, stats as estats
from editlens.data import (
    CounterFactRecord,
    as_request,
    load_facts,
    spread_over_relations,
)
from editlens.display import (
    COLUMN_INCHES,
    LINE_WIDTH,
    book_style,
    show_table,
)
from editlens.exercises import assert_close, check_exercise
from editlens.rome import (
    applied_edit,
    compute_rome_edit,
    compute_rome_edits,
    get_hparams,
    stats_for,
)
from editlens.sadr import (
    AUTHORS_STEPS,
    AUTHORS_WEIGHT,
    WEIGHT_SCALE,
    AttentionDriftTerm,
    PrecomputedEdits,
    answer_run,
    attention_drift,
    attention_row,
    distracted_prompts,
    gamma_from_weight,
    pooled_summary,
    prompt_batch,
    restoration_experiment,
    sadr_edits,
    subject_positions,
    with_steps,
)
from editlens.timing import Timings

notebook_start = time.perf_counter()
timings = Timings()  # step -> wall seconds (CPU seconds in timings.cpu)
editlens.seed_everything(SEED)
book_style()
model, tokenizer = editlens.load_model(
    MODEL_NAME, device=DEVICE, dtype=DTYPE
)
facts = load_facts()
eval_facts = spread_over_relations(facts, N_EVAL_FACTS)
case_by_id = {c.case_id: c for c in eval_facts}
# each fact's relation: every bootstrap below resamples whole relations
relation_of = {c.case_id: c.relation_id for c in eval_facts}
hp = get_hparams(model)  # the book's settings (Chapter 3)
# the authors' early stop: the whole loss below hp.v_loss_early_stop
hp_authors = hp.replace(v_early_stop_on="loss")
with timings("key statistics C (cached)"):
    stats = stats_for(model, hp)
N_LAYERS, N_HEADS = model.cfg.n_layers, model.cfg.n_heads
ALL_LAYERS = list(range(N_LAYERS))
# the layers above the edit layer (the only ones an edit can change at
# the last prompt token)
UPPER = [layer for layer in ALL_LAYERS if layer > hp.layer]
n_kv = getattr(model.cfg, "n_key_value_heads", None) or N_HEADS
print(
    f"{len(eval_facts)} facts; edit layer {hp.layer} of {N_LAYERS}; "
    f"{N_HEADS} query heads per layer\nsharing {n_kv} key/value heads"
)
print(textwrap.fill(editlens.precision.of(model).describe(), LINE_WIDTH))

# %% [markdown]
# ## 1. The failure, on one fact and on many
#
# A **distracted prompt** states the edit as text, then asks an unrelated neighbourhood question
# (a different subject whose true answer is the edited fact's *old* object):
#
# > "{rewrite prompt} {new object}. {neighbour prompt}", e.g. *"The mother tongue of X is French.
# > The mother tongue of Y is"*, where Y's answer is the old object.
#
# DNS counts the distracted prompts on which the true answer still beats the new object. Before
# the edit, the first sentence is just a false statement in the context; after it, the edited
# subject in the context carries the new fact into the model's computation. The helper below
# reads, as the model is now, the probability of each distracted prompt's true answer
# (teacher-forced over its tokens) **and**, from the same forward pass, the attention from the
# last prompt token to the edited subject's last token in every layer and head (section 2).
# It is read once on the unedited model and once inside every edit of every method below.


# %%
def readout(case: CounterFactRecord) -> dict | None:
    """P(true answer) and attention to the subject's last token,
    [prompt, layer, head], on the fact's distracted prompts, as the model
    is now."""
    req = as_request(case)
    prompts = distracted_prompts(case)
    if not prompts:  # a record without neighbourhood prompts
        return None
    batch = prompt_batch(model, prompts, [req.target_true] * len(prompts))
    keys = subject_positions(model, prompts, req.subject)
    keys = keys.to(batch.tokens.device)
    p_true, pats = answer_run(model, batch, ALL_LAYERS)
    rows = torch.arange(batch.n, device=keys.device)
    att = torch.stack(
        [pats[layer][rows, :, batch.last, keys] for layer in ALL_LAYERS], 1
    )
    return dict(p_true=p_true.cpu(), att=att.float().cpu())


readouts = {}  # (method, case_id) -> readout
with timings("unedited readouts"):
    for case in tqdm(eval_facts, desc="unedited readouts"):
        readouts[("unedited", case.case_id)] = readout(case)


def p_drop(method: str, cid) -> float:
    """Mean P(true answer) on the distracted prompts: unedited - edited."""
    before, after = readouts[("unedited", cid)], readouts.get((method, cid))
    if before is None or after is None:
        return np.nan
    return float(before["p_true"].mean() - after["p_true"].mean())


def drift_points(method: str, cid) -> float:
    """Attention drift of one edit: the mean, over distracted prompts and
    every head above the edit layer, of the attention to the subject's last
    token, edited minus unedited, in points (100 = all of a head's
    attention)."""
    before, after = readouts[("unedited", cid)], readouts.get((method, cid))
    if before is None or after is None:
        return np.nan
    return float(100 * (after["att"] - before["att"])[:, UPPER].mean())


# %% [markdown]
# Every method's edits are computed **once**, before its evaluation, in batches of `EDIT_BATCH`
# facts: `sadr.PrecomputedEdits` runs the $v_*$ optimisations of a batch together (one forward
# and one backward pass per step for all of them, each fact with its own $\delta$, Adam state and
# loss), which on a CPU costs far less than the same facts one by one; each edit equals the
# one-fact edit up to float noise. Its `editor()` applies each fact's edit in
# `evaluate.evaluate_edits`, and the wrapper below reads the distracted prompts while the edit is
# applied (before it is undone). The later sections reuse the same edits.


# %%
def recording(editor, method: str):
    """`editor`, plus the distracted-prompt readout before each edit is
    undone."""

    @contextlib.contextmanager
    def wrapped(model, case):
        with editor(model, case) as edits:
            yield edits
            readouts[(method, case.case_id)] = readout(case)

    return wrapped


def summary(report, label: str) -> pd.DataFrame:
    """A report's per-record means (evaluate.summarise), one row per
    model: unedited (when the report has it) and edited."""
    rows = [
        {"model": "unedited", **report.summary("unedited")}
        for _ in [0]
        if any("unedited" in r for r in report.records)
    ]
    rows.append({"model": label, **report.summary("edited")})
    return pd.DataFrame(rows)


generation = evaluate.GenerationSettings(
    n_prompts=GEN_PROMPTS, max_new_tokens=GEN_TOKENS
)

# %% [markdown]
# **Which ROME?** Chapter 3 stopped ROME's $v_*$ optimisation early, as soon as the new object's
# NLL fell below 0.05 (the book's rule for SmolLM2, `hp.v_early_stop_on = "nll"`). The
# authors' code stops when the *whole* loss falls below 0.05; section 4 shows why that rule
# fires late, if at all, on this model: their ROME runs 17 to 20 of its 20 steps here (section
# 5 prints the steps of every edit). This chapter compares the methods under the **authors'
# rule** (`hp_authors`), so "20 steps" and "80 steps" mean close to what they say; its ROME is
# therefore a slightly longer-optimised ROME than Chapter 3's, and its RelS and DNS need not
# equal Chapter 3's (59.0 and 50.7 here).

# %%
rome_hp = with_steps(hp_authors, STEPS_ROME)
with timings("ROME: edits"):
    rome_edits = PrecomputedEdits(
        model, eval_facts, rome_hp, stats, batch_size=EDIT_BATCH
    )
with timings("ROME: evaluation"):
    rome_report = evaluate.evaluate_edits(
        model,
        eval_facts,
        recording(rome_edits.editor(), "ROME"),
        generation=generation,
        desc="evaluating ROME",
    )
show_table(summary(rome_report, "ROME"), 1)

# %% [markdown]
# The fact shown in sections 1-3 is chosen by code: among the evaluated facts, the one whose
# distracted prompts lose the most probability of their true answer after the ROME edit. Not
# every fact fails: on some, the edit leaves the distracted prompts alone (the histogram
# below), so a fact picked by hand could show nothing.

# %%
drops = pd.Series(
    {c.case_id: p_drop("ROME", c.case_id) for c in eval_facts}
).dropna()
demo_id = drops.idxmax()
demo_case = case_by_id[demo_id]
demo_req = as_request(demo_case)
demo_prompts = distracted_prompts(demo_case)
demo_edit = rome_edits.edit(demo_case)
neighbours = [
    evaluate.fill_subject(p, demo_req.subject)
    for p in demo_case.neighborhood_prompts
]


def probabilities(prompts: list[str], answer: str) -> np.ndarray:
    """Teacher-forced P(answer) after each prompt, as the model is now."""
    batch = prompt_batch(model, prompts, [answer] * len(prompts))
    return answer_run(model, batch)[0].numpy()


def demo_probabilities() -> dict:
    true, new = demo_req.target_true, demo_req.target_new
    return {
        "P(true) distracted": probabilities(demo_prompts, true),
        "P(new) distracted": probabilities(demo_prompts, new),
        "P(true) plain": probabilities(neighbours, true),
    }


demo_before = demo_probabilities()
with applied_edit(model, demo_edit):
    demo_after = demo_probabilities()
print(
    textwrap.fill(
        f"edit: {demo_req.text} {demo_req.target_true} => "
        f"{demo_req.target_new}",
        LINE_WIDTH,
    )
)
print(f"true answer of the neighbour prompts: {demo_req.target_true}")
columns = {("", "neighbour prompt"): neighbours}
for k in demo_before:  # each probability unedited, then after ROME
    columns[(k, "unedited")] = demo_before[k]
    columns[(k, "ROME")] = demo_after[k]
demo_table = pd.DataFrame(columns)
show_table(demo_table, 3)

# %% [markdown]
# Each row is one neighbour prompt, asked plain (NS's probe) and after the edit stated as text
# (DNS's probe). Compare the columns: a specificity failure is a true answer that survives the
# plain question after the edit but loses probability, often to the new object, once the edited
# subject is in the context.
#
# Over all facts, the per-record RelS and DNS of the unedited and edited models (the table
# above), and the distribution of the drop of the true answer's probability on distracted
# prompts:

# %%
failing = drops[drops >= MIN_DROP].sort_values(ascending=False)
s0, s1 = rome_report.summary("unedited"), rome_report.summary("edited")
print(
    f"RelS {s0['RelS']:.1f} -> {s1['RelS']:.1f}, "
    f"DNS {s0['DNS']:.1f} -> {s1['DNS']:.1f} after ROME"
)
print(
    f"{len(failing)} of {len(drops)} facts lose >= {MIN_DROP} of P(true) "
    "on their\ndistracted prompts"
)

# %%
# NBVAL_CHECK_OUTPUT
# what the prose relies on, with margins that survive float32 vs bf16
print("RelS falls by more than 20 points:", s0["RelS"] - s1["RelS"] > 20)
print("DNS falls by more than 10 points:", s0["DNS"] - s1["DNS"] > 10)
print(
    f"at least 15 of {len(drops)} facts lose >= {MIN_DROP} of P(true):",
    len(failing) >= 15,
)

# %%
fig, ax = plt.subplots(figsize=(COLUMN_INCHES, 3))
sns.histplot(drops, bins=20, ax=ax)
ax.axvline(MIN_DROP, color="grey", ls="--")
ax.set(
    xlabel="mean P(true) on distracted prompts: unedited - ROME",
    ylabel="facts",
    title=f"Drop after ROME (dashed: MIN_DROP = {MIN_DROP})",
)
plt.show()

# %% [markdown]
# ## 2. The drift, seen
#
# SADR's diagnosis: at the last prompt token, the position that predicts the answer, some heads
# attend to the edited subject's last token (the position where ROME writes $v_*$) far more
# after the edit. The heatmaps show that attention for the chosen fact, averaged over its
# distracted prompts, per layer and **query** head, unedited, edited, and the difference.
# SmolLM2 uses grouped-query attention: its 9 query heads per layer share 3 key/value heads,
# but each query head has its own pattern (`hook_pattern` is per query head), so every head is
# a column of its own here, as in the authors' code. The horizontal line sits under the edit
# layer: the rows above it (the edit layer and the layers before it) cannot change at this
# position, because the edit enters after their attention.

# %%
with timings("drift diagnostics"):
    drift = attention_drift(
        model, demo_edit, demo_prompts, demo_req.subject
    )
fig, axes = plt.subplots(1, 3, figsize=(COLUMN_INCHES, 6), sharey=True)
top_value = float(
    max(drift.before.mean(0).max(), drift.after.mean(0).max())
)
panels = [  # the first two share one colour scale (its bar on the second)
    ("unedited", drift.before.mean(0), "viridis", None, False),
    ("ROME", drift.after.mean(0), "viridis", None, True),
    ("ROME - unedited", drift.change, "RdBu_r", 0.0, True),
]
for ax, (title, values, cmap, center, bar) in zip(axes, panels):
    scale = {} if center is not None else dict(vmin=0.0, vmax=top_value)
    sns.heatmap(
        values.numpy(),
        cmap=cmap,
        center=center,
        cbar=bar,
        cbar_kws=dict(location="bottom", pad=0.08),
        xticklabels=2,  # every other head, the same in each panel
        ax=ax,
        **scale,
    )
    ax.set(title=title, xlabel="query head")
    ax.axhline(
        hp.layer + 1, color="white" if center is None else "black", lw=1
    )
axes[0].set_ylabel("layer")
fig.suptitle(
    f"Attention from the last token to '{demo_req.subject}'\n"
    f"(its last token), {len(demo_prompts)} distracted prompts"
)
plt.show()

# %% [markdown]
# Over every fact, the mean change of the same attention after ROME (each fact's distracted
# prompts averaged first):

# %%
changes = [
    (
        readouts[("ROME", c.case_id)]["att"]
        - readouts[("unedited", c.case_id)]["att"]
    ).mean(0)
    for c in eval_facts
    if readouts[("unedited", c.case_id)] is not None
]
mean_change = torch.stack(changes).mean(0)
fig, ax = plt.subplots(figsize=(COLUMN_INCHES * 0.6, 6))
sns.heatmap(mean_change.numpy(), cmap="RdBu_r", center=0.0, ax=ax)
ax.set(
    xlabel="query head",
    ylabel="layer",
    title=f"ROME - unedited, mean over {len(changes)} facts",
)
plt.show()

# %% [markdown]
# **Reading the drift.** Look for heads above the edit layer whose attention to the subject grows
# (red in the difference), on the chosen fact and on average over the facts.
# In the stored run, the chosen fact (iMac: Apple -> Volkswagen) gains up to 0.2 of attention
# to the subject in scattered heads from layer 8 to 23 (L8H7, L14H8, L17H0, L21H6, L23H4), less
# in L5H1 just above the edit layer and in L28H6.
# Averaged over the 50 facts the drift is concentrated: a handful of heads in layers 21-23
# (L21H6 and L22H6 about +0.08-0.09, L22H8 and L23H5 about +0.07, L21H1, L23H1, L23H4 about
# +0.05), one in layer 27 (L27H2, about +0.05) and one just above the edit layer (L5H1, about
# +0.03); most heads do not move.
#
# **The full attention row.** A head that drifts takes its attention from somewhere. For the
# `N_ROW_HEADS` most drifted heads of the chosen fact (attention to the subject grew most,
# layers above the edit), the last token's attention over every position of the distracted
# prompt on which the true answer lost most, unedited and edited. Position 0 (BOS) usually
# takes much of the attention ("attention sink").

# %%
worst = int(
    np.argmax(
        demo_before["P(true) distracted"] - demo_after["P(true) distracted"]
    )
)
row_prompt = demo_prompts[worst]
ids = prompt_batch(model, [row_prompt]).tokens[0].tolist()
labels = [f"{i}:{tokenizer.decode([t])!r}" for i, t in enumerate(ids)]
top = drift.top_heads(N_ROW_HEADS, UPPER)
frames = []
for layer, head in top:
    before_row = attention_row(model, row_prompt, layer, head)
    with applied_edit(model, demo_edit):
        after_row = attention_row(model, row_prompt, layer, head)
    for label, row in [("unedited", before_row), ("ROME", after_row)]:
        frames.append(
            pd.DataFrame(
                dict(
                    token=labels[: len(row)],
                    attention=row.numpy(),
                    model=label,
                    head=f"layer {layer}, head {head}",
                )
            )
        )
rows_df = pd.concat(frames, ignore_index=True)
subject_at = int(
    subject_positions(model, [row_prompt], demo_req.subject)[0]
)
fig, axes = plt.subplots(
    len(top),
    1,
    figsize=(COLUMN_INCHES, 1.9 * len(top) + 2.2),
    sharex=True,
    squeeze=False,
)
for ax, (name, part) in zip(
    axes[:, 0], rows_df.groupby("head", sort=False)
):
    sns.barplot(
        data=part,
        x="token",
        y="attention",
        hue="model",
        ax=ax,
        legend=False,
    )
    ax.axvline(subject_at, color="grey", ls="--")
    ax.set(title=name, xlabel="", ylabel="")
axes[len(top) // 2, 0].set_ylabel("attention")
axes[-1, 0].set_xticks(range(len(labels)))
axes[-1, 0].set_xticklabels(labels, rotation=90, fontsize=9)
colours = sns.color_palette()[:2]
fig.legend(
    handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colours],
    labels=["unedited", "ROME"],
    loc="outside lower center",  # the title takes the top
    ncol=2,
)
fig.suptitle(
    textwrap.fill(f"Last token's attention row on {row_prompt!r}", 60)
    + "\n(dashed: the subject's last token)"
)
plt.show()

# %% [markdown]
# ## 3. Does the drift cause the failure?
#
# Seeing more attention on the subject does not prove it matters. The authors' test: keep
# everything of the edited model (its weights, its values, its MLP outputs) but give it back
# the **unedited attention patterns** (post-softmax, `hook_pattern`) of the layers above the
# edit layer, on the distracted prompts, and see how much of the true answer's probability
# returns. If attention drift carries the failure, the probability should come back; if the
# edited values carry it, it should not. The control restores the same number of (layer, head)
# pairs chosen at random over the whole model, and, for the `TOP_K_HEADS` most drifted heads,
# as many random heads of the same layers (`sadr.restoration_experiment`).
#
# The fraction recovered, $(p_{\text{restored}} - p_{\text{edited}}) /
# (p_{\text{unedited}} - p_{\text{edited}})$, is only meaningful when the edit moved the
# probability: with a small drop, the denominator is noise. So the raw probabilities stand
# beside it. First the chosen fact:

# %%
with timings("restoration experiment"):
    demo_restore, _ = restoration_experiment(
        model,
        demo_edit,
        demo_prompts,
        [demo_req.target_true] * len(demo_prompts),
        demo_req.subject,
        top_k=TOP_K_HEADS,
        seed=SEED,
    )
n_upper, n_all = len(UPPER) * N_HEADS, N_LAYERS * N_HEADS
print(f"drop of mean P(true) on this fact: {drops[demo_id]:.3f}")
print(
    f"the any-layer control draws {n_upper} of {n_all} heads: on average\n"
    f"{n_upper * n_upper / n_all:.0f} of them lie in the upper layers"
)
show_table(demo_restore, 3)

# %% [markdown]
# Then every fact whose distracted prompts lose at least `MIN_DROP` of the true answer's
# probability after ROME (the others have nothing to restore), each fact's prompts averaged
# first. The recovered probability $p_{\text{restored}} - p_{\text{edited}}$ is given per
# condition with a bootstrap interval that resamples whole relations (the facts' relations,
# drawn with replacement), as every interval of this chapter does.

# %%
restore_ids = list(failing.index)
frames = []
with timings("restoration experiment"):
    for cid in tqdm(restore_ids, desc="restoration"):
        case, req = case_by_id[cid], as_request(case_by_id[cid])
        prompts = distracted_prompts(case)
        table, _ = restoration_experiment(
            model,
            rome_edits.edit(case),
            prompts,
            [req.target_true] * len(prompts),
            req.subject,
            top_k=TOP_K_HEADS,
            seed=SEED,
        )
        frames.append(table.assign(fact=cid))
restoration = (
    pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
)


# %%
def restored_minus_edited(part: pd.DataFrame):
    """Mean over facts of p_restored - p_edited, paired, with its CI."""
    return estats.paired_difference(
        part.p_edited.to_numpy(),
        part.p_restored.to_numpy(),
        seed=SEED,
        clusters=part.fact.map(relation_of).to_numpy(),
    )


by_condition = {
    cond: restoration[restoration.condition == cond]
    for cond in dict.fromkeys(restoration.get("condition", []))
}
rows = []
for cond, part in by_condition.items():
    back = restored_minus_edited(part)
    rows.append(
        {
            "condition": cond,
            "restored - edited": back.mean,
            "CI low": back.low,
            "CI high": back.high,
            "fraction recovered": sadr.fraction_recovered(
                part.p_unedited.mean(),
                part.p_edited.mean(),
                part.p_restored.mean(),
            ),
        }
    )
print(f"{len(restore_ids)} facts with a drop >= {MIN_DROP}")
show_table(pd.DataFrame(rows), 2)

# %%
# NBVAL_CHECK_OUTPUT
# the claims the prose relies on, with margins
print(
    f"at least 15 facts with a drop >= {MIN_DROP}:", len(restore_ids) >= 15
)
for k in TOP_K_HEADS if len(restore_ids) >= 2 else []:
    top_k = by_condition[f"top-{k} drifted heads"]
    random_k = by_condition[
        f"{k} random heads (layers {UPPER[0]}-{UPPER[-1]})"
    ]
    better = estats.paired_difference(
        random_k.p_restored.to_numpy(),
        top_k.p_restored.to_numpy(),
        seed=SEED,
        clusters=top_k.fact.map(relation_of).to_numpy(),
    )
    print(
        f"top-{k} drifted heads restore more than {k} random upper heads "
        f"(CI > 0):",
        better.low > 0,
    )

# %%
if len(restoration):
    long = restoration.melt(
        id_vars=["fact", "condition"],
        value_vars=["p_unedited", "p_edited", "p_restored"],
        var_name="P(true)",
        value_name="probability",
    )
    fig, ax = plt.subplots(figsize=(COLUMN_INCHES, 5.5))
    sns.barplot(
        data=long, y="condition", x="probability", hue="P(true)", ax=ax
    )
    ax.set(
        ylabel="",
        title=f"Unedited attention put back: {len(restore_ids)} failing "
        "facts\n(95% bootstrap intervals)",
    )
    sns.move_legend(
        ax, "upper center", bbox_to_anchor=(0.4, -0.12), ncol=3, title=None
    )
    plt.show()

# %% [markdown]
# **Reading the restoration.** Compare the row "all heads of layers ..." with the row of as many
# random heads anywhere: restoring attention is only evidence for drift if the heads that
# drifted give back more than the same number of heads chosen blindly. With the edit at layer
# 4 of 30, though, the upper layers hold most of the model's heads, so that random draw
# overlaps them heavily (printed above) and is a weak control. The sharper one is the top-$k$
# drifted heads against $k$ random heads of the same layers: it tells whether what comes back
# is carried by the heads that drifted, and whether the drift is concentrated in a few heads.
# In the stored run, on the chosen fact the edit took the true answer's probability from 0.490
# to 0.138; restoring all 225 upper heads brought it to 0.253, 225 random heads of any layer to
# 0.270, the top-10 drifted heads to 0.286, the top-20 to 0.352, and 10 random upper heads not at
# all (0.129). Over the 24 facts that lose at least 0.1: all upper heads +0.06 [+0.01, +0.12],
# the any-layer control +0.05 [+0.01, +0.10] (the two overlap, as expected from their overlap),
# the top-5, 10 and 20 drifted heads +0.08 [+0.03, +0.14], +0.09 [+0.04, +0.15] and +0.08
# [+0.04, +0.15] (0.37 to 0.41 of the lost probability), and the same numbers of random upper
# heads -0.01 each ([-0.01, 0.00], [-0.01, 0.00] and [-0.02, 0.00]). Each top-$k$ set restores
# more than its $k$ random upper heads with a paired interval above 0 (printed above; three
# intervals, each read on its own). The few most drifted heads give back at least as much as all
# 225 upper heads together (0.31 of the loss). So the drift is part of the cause,
# carried by a few heads, but restoring attention brings back less than half of what was lost:
# most of the failure travels another way (the edited MLP output itself, read at the last token).
#
# ## 4. The regulariser
#
# SADR adds to ROME's $v_*$ loss (Chapter 3, section 4) a penalty on the attention rows at the
# predicting position, as the authors' `compute_v` computes it:
#
# $$\begin{aligned}
# \mathcal{L}_{\text{SADR}}(\delta) &= \gamma \sum_{l} \frac{1}{n}\sum_{b=1}^{n}\sum_{h}
# M_{b,l,h}\, \mathrm{KL}\!\left(A^0_{l,h}[b, i_b, :] \,\middle\|\, A_{l,h}[b, i_b, :]\right),\\
# M_{b,l,h} &= \mathbb{1}\!\left[A_{l,h}[b,i_b,s_b] > \max_{h'} A^0_{l,h'}[b,i_b,s_b]\right]
# \end{aligned}$$
#
# - $A_{l,h}$: this step's post-softmax attention pattern of layer $l$, query head $h$
#   (`blocks.{l}.attn.hook_pattern`, with gradients); $A^0$ the same at $\delta = 0$, the unedited
#   weights, recorded once and detached. At the first step $A = A^0$ and the term is 0.
# - $b$: the $n$ rewrite rows of ROME's batch (the bare rewrite prompt and its prefixed copies);
#   the KL prompt "{subject} is a" is excluded. $i_b$: the last prompt token of row $b$ (before
#   the target's tokens); the whole key row is compared. $s_b$: the subject's last token.
# - KL$(A^0 \| A) = \sum_k (A^0_k + \epsilon) \log\frac{A^0_k + \epsilon}{A_k + \epsilon}$,
#   $\epsilon = 10^{-8}$ added to both, as in their code.
# - The **selective mask** $M$, per row, layer and head, recomputed at every step, without
#   gradient: a head counts only if it *now* attends to the subject more than **any** head of that
#   layer did before. It is not a per-head before/after comparison.
# - Reduction: sum over keys and heads, divide by the number of rewrite rows, sum over layers,
#   times $\gamma$.
# - **GQA.** SmolLM2's 9 query heads per layer share 3 key/value heads. `hook_pattern` holds one
#   pattern per *query* head, so the mask and the KL are per query head, as in the authors'
#   code (their patterns come after the key/value heads are repeated; nothing else is done).
# - Every layer and every head is read; layers at or below the edit layer contribute exactly 0
#   (their attention does not depend on $\delta$), so the package does not hook them (its tests
#   check that reading them gives the same value).
# - **Constants.** The authors configure a weight and their code multiplies it by $10^{-4}$:
#   $\gamma$ = weight $\times 10^{-4}$.

# %%
# NBVAL_CHECK_OUTPUT
print(
    f"authors' weight for ROME {AUTHORS_WEIGHT['rome']:g} x "
    f"{WEIGHT_SCALE:g} = "
    f"gamma {gamma_from_weight(AUTHORS_WEIGHT['rome']):g};\n"
    f"their ROME+SADR ran {AUTHORS_STEPS['rome']} steps, "
    f"their ROME {sadr.ROME_STEPS}"
)
print(
    f"this chapter: gamma = {GAMMA:g}, steps {STEPS_ROME} and {STEPS_SADR}"
)

# %% [markdown]
# `AttentionDriftTerm` is that term, a `LossTerm` of `editlens.rome.values` like Chapter 4's
# alignment term. We run one ROME+SADR edit of the chosen fact with a subclass that keeps what
# the term saw (the attention rows at the query position, now and at $\delta = 0$, the subject's
# positions and the real keys) at the first step where the mask selects a head, and how many
# heads the mask selects at every step.
#
# ### Exercise 5.1: the selective mask
#
# Given `rows_now` and `rows_before` (`[row, head, key]`: the attention rows at the query position
# of one layer, this step and at $\delta = 0$) and `subject` (`[row]`, the subject's last token
# of each row), return the boolean mask `[row, head]`: head $h$ of row $b$ is selected when its
# attention to the subject now is strictly larger than the largest attention any head of that
# row paid to the subject before. No gradient may flow through it.


# %%
def selective_mask(
    rows_now: torch.Tensor, rows_before: torch.Tensor, subject: torch.Tensor
) -> torch.Tensor:
    # Your code here
    raise NotImplementedError


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def selective_mask_solution(
    rows_now: torch.Tensor, rows_before: torch.Tensor, subject: torch.Tensor
) -> torch.Tensor:
    rows = torch.arange(rows_now.shape[0], device=rows_now.device)
    now = rows_now.detach()[rows, :, subject]  # [row, head]
    before = rows_before.detach()[rows, :, subject].amax(-1, keepdim=True)
    return now > before


# %%
class SeenDrift(AttentionDriftTerm):
    """AttentionDriftTerm that keeps what it saw (the first step whose
    mask selects a head, else step 1) and the number of selected heads per
    step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen, self.selected = None, []

    def __call__(self, ctx):
        value = super().__call__(ctx)
        if ctx.step == 0 or not self.hook_names:
            return value
        now = self.query_rows(ctx)
        before = self.query_rows(ctx, initial=True)
        subject = ctx.batch.subject_idx[: ctx.batch.n_rewrite]
        n_selected = sum(
            int(sadr.selective_mask(a, a0, subject).sum())
            for a, a0 in zip(now, before)
        )
        self.selected.append(dict(step=ctx.step, heads=n_selected))
        if self.seen is None or (n_selected and not self.seen["heads"]):
            self.seen = dict(
                now=[a.detach().float().cpu() for a in now],
                before=[a.detach().float().cpu() for a in before],
                subject=subject.cpu(),
                keys=self.key_mask(ctx).cpu(),
                value=float(value.detach()),
                step=ctx.step,
                heads=n_selected,
            )
        return value


spy = SeenDrift(GAMMA)
with timings("one SADR edit with a spy (section 4)"):
    spy_edit = compute_rome_edit(model, demo_case, rome_hp, stats, [spy])
seen = spy.seen
print(
    f"step {seen['step']}: {seen['heads']} (row, layer, head) triples "
    f"selected of {len(seen['now']) * seen['now'][0].shape[0] * N_HEADS}"
)
print(f"layers read: {spy.layers[0]}..{spy.layers[-1]}")


def test_selective_mask(fn) -> None:
    # by hand: the subject is key 2; before, the heads paid 0.1, 0.3, 0.2
    # (max 0.3)
    before = torch.zeros(1, 3, 4)
    before[0, :, 2] = torch.tensor([0.1, 0.3, 0.2])
    now = torch.zeros(1, 3, 4)
    now[0, :, 2] = torch.tensor([0.35, 0.3, 0.25])
    got = fn(now, before, torch.tensor([2]))
    assert got.tolist() == [[True, False, False]], (
        "by hand: expected [[True, False, False]] (strictly above the max "
        f"over "
        f"heads before), got {got.tolist()}"
    )
    # the rows the term saw in the edit above, every layer
    for layer, a, a0 in zip(spy.layers, seen["now"], seen["before"]):
        expected = sadr.selective_mask(a, a0, seen["subject"])
        got = fn(a, a0, seen["subject"])
        assert torch.equal(got.bool(), expected), (
            f"mask differs at layer {layer}"
        )


selective_mask = check_exercise(
    "5.1 selective_mask",
    selective_mask,
    selective_mask_solution,
    test_selective_mask,
)

# %% [markdown]
# ### Exercise 5.2: the attention KL
#
# Given `rows_before` ($A^0$) and `rows_now` ($A$), both `[row, head, key]`, and `keys`
# (`[row, key]`, True for the real keys of each row's query position), return
# KL$(A^0 \| A)$ per row and head, `[row, head]`, with $\epsilon$ = `sadr.EPS` added to both
# patterns and the keys outside `keys` counting 0. The check then rebuilds the term's value at
# that step from your KL and your mask: $\gamma \sum_l \frac{1}{n}\sum_{b,h} M \cdot
# \mathrm{KL}$.


# %%
def row_kl(
    rows_before: torch.Tensor, rows_now: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    # Your code here
    raise NotImplementedError


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def row_kl_solution(
    rows_before: torch.Tensor, rows_now: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    p = rows_before.float() + sadr.EPS
    q = rows_now.float() + sadr.EPS
    return (p * (p / q).log() * keys[:, None, :]).sum(-1)


# %%
def test_row_kl(fn) -> None:
    total = 0.0
    for layer, a, a0 in zip(spy.layers, seen["now"], seen["before"]):
        kl = fn(a0, a, seen["keys"])
        assert_close(
            kl,
            sadr.row_kl(a0, a, seen["keys"]),
            atol=1e-6,
            what=f"KL(A0 || A) at layer {layer}",
        )
        mask = sadr.selective_mask(a, a0, seen["subject"])
        total += float((kl * mask).sum()) / a.shape[0]
    assert_close(
        spy.weight * total,
        seen["value"],
        atol=1e-7,
        rtol=1e-3,
        what="gamma * sum over layers of the masked KL at step "
        f"{seen['step']}",
    )


row_kl = check_exercise("5.2 row_kl", row_kl, row_kl_solution, test_row_kl)

# %% [markdown]
# The $v_*$ loss of that edit, term by term, and how many heads the mask selected at each step
# (summed over rows and layers). The dashed line is the early-stopping threshold 0.05.

# %%
history = pd.DataFrame(spy_edit.v_result.history)
terms = [
    c for c in ["nll", "kl", "weight_decay", "sadr", "loss"] if c in history
]
fig, axes = plt.subplots(2, 1, figsize=(COLUMN_INCHES, 6.5), sharex=True)
sns.lineplot(
    data=history.melt(id_vars="step", value_vars=terms, var_name="term"),
    x="step",
    y="value",
    hue="term",
    marker="o",
    ax=axes[0],
)
axes[0].axhline(hp.v_loss_early_stop, color="grey", ls="--")
axes[0].set(yscale="log", title=f"ROME+SADR v* loss, gamma = {GAMMA:g}")
sns.move_legend(axes[0], "upper left", bbox_to_anchor=(1.01, 1), title=None)
sns.lineplot(
    data=pd.DataFrame(spy.selected),
    x="step",
    y="heads",
    marker="o",
    ax=axes[1],
)
axes[1].set_title("(row, layer, head) triples selected by the mask")
plt.show()

# %% [markdown]
# **$\gamma = 0$ is ROME.** `compute_v` skips a term whose weight is 0, so the edit must equal
# ROME's bit for bit (the same $v_*$, the same $\Delta W$):

# %%
# NBVAL_CHECK_OUTPUT
with timings("gamma = 0 check (2 edits)"):
    rome_again = compute_rome_edit(model, demo_case, rome_hp, stats)
    sadr_zero = compute_rome_edit(
        model, demo_case, rome_hp, stats, [AttentionDriftTerm(0.0)]
    )
print(
    "gamma = 0 gives ROME's edit bit for bit:",
    torch.equal(rome_again.delta, sadr_zero.delta)
    and torch.equal(rome_again.v_star, sadr_zero.v_star),
)
print(
    f"gamma = {GAMMA:g} changes v*:",
    not torch.equal(rome_again.v_star, spy_edit.v_star),
)

# %% [markdown]
# ### Early stopping: why "80 steps" needs the authors' rule
#
# ROME stops its $v_*$ optimisation early when a watched loss falls below 0.05. The authors'
# code watches the **whole** loss. Its weight-decay term, $0.5\,\|\delta\| / \|v_0\|^2$, is
# tiny for GPT-2 XL's large MLP outputs but not for SmolLM2's: once $\delta$ has grown, it and
# the KL term keep the whole loss near or above the threshold (the loss history above; in the
# table below the authors' ROME ends at a loss of 0.073 to 0.213 with an NLL of 0.018 to 0.120),
# so on this model the authors' rule fires late, if at all: ROME's 50 edits run 17 to 20 of their
# 20 steps, SADR-80's 54 to 80 of their 80 (section 5), and 80 steps are up to four times 20.
# The book's rule for SmolLM2 (Chapter 3) watches the new object's NLL alone instead, for ROME and
# for every method that adds a term, and stops as soon as it is below 0.05; the SADR term does not
# count toward the stop. In the table below SADR, allowed 80 steps, stops after 13, 30 and
# 12 steps on the three facts, ROME, allowed 20, after 13, 20 and 11. On two facts SADR stops
# within a step of ROME. On the third (575) ROME reaches its limit with the NLL still at 0.123,
# and SADR, allowed more, runs on until its NLL is 0.049, at step 30. So under the book's rule a
# limit of 80 buys a few more steps where 20 did not bring the NLL down, and nothing elsewhere:
# none of the three comes near 80. That is why this chapter switches to the authors' rule to
# compare 20 with 80 steps. On the first `N_STOP_FACTS` facts, the steps each rule runs, and the
# final loss terms (section 5 prints the steps of every edit of the comparison):

# %%
stop_facts = eval_facts[:N_STOP_FACTS]
stop_edits = {
    ("authors (loss)", "ROME"): [rome_edits.edit(c) for c in stop_facts]
}
with timings(
    "early-stop comparison"
):  # the book's rule, batched per method
    for method, steps, gamma in [
        ("ROME", STEPS_ROME, 0.0),
        ("SADR", STEPS_SADR, GAMMA),
    ]:
        terms_ = [
            [AttentionDriftTerm(gamma)] if gamma else [] for _ in stop_facts
        ]
        stop_edits[("book (nll)", method)] = compute_rome_edits(
            model, stop_facts, with_steps(hp, steps), stats, terms_
        )
stop_rows = []
for (rule, method), edits in stop_edits.items():
    limit = STEPS_ROME if method == "ROME" else STEPS_SADR
    for case, e in zip(stop_facts, edits):
        last = e.v_result.history[-1]
        stop_rows.append(
            dict(
                fact=case.case_id,
                rule=rule,
                method=f"{method} (limit {limit})",
                steps=len(e.v_result.history),
                nll=last["nll"],
                weight_decay=last["weight_decay"],
                loss=last["loss"],
            )
        )
stop_table = pd.DataFrame(stop_rows).sort_values(["fact", "rule"])
show_table(stop_table, 3)

# %%
# NBVAL_CHECK_OUTPUT
authors = stop_table[stop_table.rule.str.startswith("authors")]
book_sadr = stop_table[
    stop_table.rule.str.startswith("book")
    & (stop_table.method.str[:4] == "SADR")
]
print(
    "authors' rule: every ROME edit runs all its steps:",
    bool((authors.steps == STEPS_ROME).all()),
)
print(
    f"book's rule: every SADR edit stops before step {STEPS_SADR}:",
    bool((book_sadr.steps < STEPS_SADR).all()),
)

# %% [markdown]
# ## 5. ROME vs ROME+SADR on the same facts
#
# Three methods, the same facts, the same evaluation, all under the authors' early-stopping rule
# (an edit runs its step limit unless its whole loss falls below 0.05 first; the steps each edit
# ran are printed below):
#
# - **ROME**: `STEPS_ROME` = 20 steps (the authors' baseline; computed above);
# - **SADR-20**: ROME+SADR, $\gamma$ = `GAMMA`, the same 20 steps: the regulariser alone;
# - **SADR-80**: ROME+SADR, $\gamma$ = `GAMMA`, `STEPS_SADR` = 80 steps: the authors' protocol.
#
# Then SADR-80 minus ROME (what the authors compared) is the sum of SADR-20 minus ROME (the
# regulariser at equal steps) and SADR-80 minus SADR-20 (60 more steps with the regulariser).
# After each edit, the drift is read on the distracted prompts, as in section 2.
#
# **SADR-20 is the start of SADR-80.** Nothing in a $v_*$ step depends on the step limit (the
# loss, the early stop, Adam's state, the clamp), so a 20-step run is exactly the first 20 steps
# of an 80-step run. `sadr_edits(..., also_steps=[20])` keeps, from each 80-step optimisation,
# the edit it held after 20 steps (`also_steps` of `compute_rome_edit`; the package's tests check
# that it equals a separate 20-step run bit for bit), and SADR-20's evaluation applies those
# kept edits (`editor(steps=20)`). SADR-20 therefore has no edit seconds of its own below (–):
# its optimisation is the first 20 steps of SADR-80's.

# %%
SADR_EQ, SADR_AUTH = f"SADR-{STEPS_ROME}", f"SADR-{STEPS_SADR}"
edit_seconds = {"ROME": rome_edits.seconds / len(eval_facts)}
if STEPS_SADR > STEPS_ROME:  # one optimisation per fact gives both edits
    with timings(f"{SADR_AUTH} (and {SADR_EQ}): edits"):
        sadr_run = sadr_edits(
            model,
            eval_facts,
            hp_authors,
            stats,
            gamma=GAMMA,
            steps=STEPS_SADR,
            also_steps=[STEPS_ROME],
            batch_size=EDIT_BATCH,
        )
    editors = {
        SADR_EQ: sadr_run.editor(steps=STEPS_ROME),
        SADR_AUTH: sadr_run.editor(),
    }
    edit_seconds[SADR_AUTH] = sadr_run.seconds / len(eval_facts)
else:  # separate runs (one, if the step counts are equal)
    editors = {}
    for label, steps in {
        SADR_EQ: STEPS_ROME,
        SADR_AUTH: STEPS_SADR,
    }.items():
        with timings(f"{label}: edits"):
            run = sadr_edits(
                model,
                eval_facts,
                hp_authors,
                stats,
                gamma=GAMMA,
                steps=steps,
                batch_size=EDIT_BATCH,
            )
        editors[label] = run.editor()
        edit_seconds[label] = run.seconds / len(eval_facts)
reports = {"ROME": rome_report}
for label, editor in editors.items():  # SADR-20, then SADR-80
    with timings(f"{label}: evaluation"):
        reports[label] = evaluate.evaluate_edits(
            model,
            eval_facts,
            recording(editor, label),
            baseline=False,
            generation=generation,
            desc=f"evaluating {label}",
        )
METHODS = list(reports)
show_table(
    pd.concat(
        [summary(rome_report, "ROME")]
        + [summary(reports[m], m) for m in METHODS[1:]]
    ),
    1,
)

# %% [markdown]
# Per fact and method: the probes (in %), fluency GE, the drift (mean change of attention to
# the subject, in points, over the heads above the edit layer) and the drop of the true
# answer's probability on distracted prompts. The table reports for each metric the mean over
# facts with a 95% bootstrap interval and the **paired** difference to ROME (per fact, method
# minus ROME) with its interval (`editlens.stats.paired_metrics_table`, 2,000 seeded draws of
# whole relations, as in Chapter 4: facts of one relation are not independent evidence), and
# `p Holm`, each difference's bootstrap p-value after Holm's correction over the table. The
# unedited model is a row of its own (its drift and drop are 0 by definition).

# %%
METRICS = ["ES", "PS", "NS", "RelS", "DNS", "GE", "drift", "P(true) drop"]
rows = []
for i, case in enumerate(eval_facts):
    cid = case.case_id
    runs = [("unedited", reports["ROME"].records[i]["unedited"])]
    runs += [(m, reports[m].records[i]["edited"]) for m in METHODS]
    for method, m in runs:
        row = dict(fact=cid, method=method)
        for k in METRICS[:5]:
            row[k] = 100.0 * m.get(k, np.nan)
        row["GE"] = m.get("GE", np.nan)
        if method == "unedited":
            ok = readouts[("unedited", cid)] is not None
            row["drift"] = row["P(true) drop"] = 0.0 if ok else np.nan
        else:
            row["drift"] = drift_points(method, cid)
            row["P(true) drop"] = p_drop(method, cid)
            row["steps"] = reports[method].records[i]["edit_info"]["edits"][
                0
            ]["steps"]
        rows.append(row)
per_fact = pd.DataFrame(rows)
per_fact["relation"] = per_fact.fact.map(relation_of)


# every paired table: relations resampled, Holm over the table (Chapter 4)
PAIRED_KW = dict(seed=SEED, **estats.BOOK_PAIRING)
with timings("paired tables"):
    table = estats.paired_metrics_table(
        per_fact, METRICS, baseline="ROME", **PAIRED_KW
    )
steps_run = per_fact[per_fact.method != "unedited"].groupby("method")[
    "steps"
]
show_table(
    pd.DataFrame(
        {
            "method": METHODS,
            "v* steps (min)": [steps_run.min()[m] for m in METHODS],
            "v* steps (max)": [steps_run.max()[m] for m in METHODS],
            "s per edit (batched)": [edit_seconds.get(m) for m in METHODS],
        }
    ),
    {"s per edit (batched)": 2},
)

# %% [markdown]
# The headline numbers: each metric's mean per method, whether the paired interval of its
# difference to ROME excludes 0, and whether that difference stays significant after Holm's
# correction over the whole table (`after Holm`: its corrected p-value below the 5% level). A
# difference that excludes 0 but not after Holm is not a finding at this table's size.

# %%
means = table.pivot(index="metric", columns="method", values="mean")
diffs = table.pivot(index="metric", columns="method", values="diff vs ROME")
excl = table.pivot(index="metric", columns="method", values="CI excludes 0")
holm = table.pivot(
    index="metric", columns="method", values="Holm excludes 0"
)
others = [m for m in METHODS if m != "ROME"]
headline = means.reindex(METRICS)[["unedited", *METHODS]].reset_index()
for m in others:
    headline[f"{m} - ROME: CI excl. 0"] = [
        "yes" if bool(excl.loc[k, m]) else "no" for k in headline.metric
    ]
    headline[f"{m}: after Holm"] = [
        "yes" if bool(holm.loc[k, m]) else "no" for k in headline.metric
    ]
show_table(headline, 2)

# %%
# NBVAL_CHECK_OUTPUT
# the claims the prose relies on, with margins that survive float32 vs bf16
ci = table.set_index(["metric", "method"])[["diff low", "diff high"]]


def above(metric: str, method: str) -> bool:  # paired CI entirely > 0
    return bool(ci.loc[(metric, method), "diff low"] > 0)


def below(metric: str, method: str) -> bool:  # paired CI entirely < 0
    return bool(ci.loc[(metric, method), "diff high"] < 0)


for k, margin in [("ES", 2), ("NS", 2), ("GE", 0.1)]:
    print(
        f"{k}: every method within {margin:g} of ROME:",
        bool(diffs.loc[k, others].abs().max() <= margin),
    )
print(
    f"{SADR_AUTH} raises RelS over ROME (CI > 0):", above("RelS", SADR_AUTH)
)
print(
    f"{SADR_AUTH} raises DNS over ROME (CI > 0):", above("DNS", SADR_AUTH)
)
print(f"{SADR_AUTH} lowers the drift (CI < 0):", below("drift", SADR_AUTH))
print(f"{SADR_EQ} lowers the drift (CI < 0):", below("drift", SADR_EQ))

# %% [markdown]
# **Separating the regulariser from the longer optimisation.** The same paired differences,
# decomposed: the regulariser at equal steps, the 60 extra steps with the regulariser, and the
# authors' comparison (their sum). Each interval here is read on its own (this table has no Holm
# correction; the headline table above gives it for the first and the last contrast):

# %%
wide = per_fact.pivot(index="fact", columns="method")
contrasts = [
    ("regulariser (equal steps)", "ROME", SADR_EQ),
    ("more steps (with SADR)", SADR_EQ, SADR_AUTH),
    ("authors' protocol", "ROME", SADR_AUTH),
]
rows = []
for metric in ["ES", "PS", "NS", "RelS", "DNS", "GE", "drift"]:
    for name, a, b in contrasts:
        if a == b or a not in wide[metric] or b not in wide[metric]:
            continue
        ok = wide[metric][[a, b]].notna().all(axis=1)
        d = estats.paired_difference(
            wide[metric][a][ok],
            wide[metric][b][ok],
            seed=SEED,
            clusters=wide.index[ok.to_numpy()].map(relation_of),
        )
        rows.append(
            dict(
                metric=metric,
                contrast=name,
                difference=d.mean,
                low=d.low,
                high=d.high,
                CI_excludes_0="yes" if d.excludes_zero() else "no",
            )
        )
decomposition = pd.DataFrame(rows)
show_table(decomposition.rename(columns={"CI_excludes_0": "CI excl. 0"}), 2)

# %%
# NBVAL_CHECK_OUTPUT
dec = decomposition.set_index(["metric", "contrast"]).difference
if SADR_EQ != SADR_AUTH:
    print(
        "RelS: the extra steps add more than the regulariser at equal "
        "steps:",
        bool(
            dec[("RelS", "more steps (with SADR)")]
            > dec[("RelS", "regulariser (equal steps)")]
        ),
    )

# %%
plot_df = per_fact.melt(
    id_vars=["fact", "method"],
    value_vars=["RelS", "DNS", "NS", "drift"],
    var_name="metric",
)
grid = sns.catplot(
    data=plot_df,
    x="method",
    y="value",
    col="metric",
    col_wrap=2,
    kind="point",
    sharey=False,
    height=2.6,
    aspect=COLUMN_INCHES / 2 / 2.6,
)
grid.set_titles("{col_name}")
grid.set_axis_labels("", "")
for ax in grid.axes.flat:  # four method names under a half-column panel
    ax.tick_params(axis="x", labelrotation=30)
grid.figure.suptitle(
    f"Means over {len(eval_facts)} facts (95% bootstrap intervals)"
)
grid.figure.subplots_adjust(top=0.86)  # room for the title above the panels
plt.show()

# %% [markdown]
# The authors report their results **pooled** over prompts (every prompt of a kind counts once,
# so a fact with 10 neighbour prompts weighs ten times one with 1), where the table above
# averages each fact's rate. Both, for reference:

# %%
pooled = pd.DataFrame(
    {"unedited": pooled_summary(rome_report, eval_facts, "unedited")}
    | {m: pooled_summary(reports[m], eval_facts) for m in METHODS}
).T
show_table(
    pooled[
        [c for c in ["ES", "PS", "NS", "S", "RelS", "DNS"] if c in pooled]
    ]
    .rename_axis("model")
    .reset_index(),
    1,
)

# %% [markdown]
# **Does SADR remove the drift?** The mean change of attention to the subject after each method,
# over the facts (the ROME panel is section 2's):


# %%
def mean_attention_change(method: str) -> torch.Tensor:
    """[layer, head]: attention to the subject, method - unedited, averaged
    over each fact's distracted prompts, then over facts."""
    per_fact_change = [
        (
            readouts[(method, c.case_id)]["att"]
            - readouts[("unedited", c.case_id)]["att"]
        ).mean(0)
        for c in eval_facts
        if readouts[("unedited", c.case_id)] is not None
    ]
    return torch.stack(per_fact_change).mean(0)


method_changes = {m: mean_attention_change(m) for m in METHODS}
vmax = max(float(ch.abs().max()) for ch in method_changes.values())
fig, axes = plt.subplots(
    1, len(METHODS), figsize=(COLUMN_INCHES, 6), sharey=True, squeeze=False
)
for i, (ax, (method, ch)) in enumerate(
    zip(axes[0], method_changes.items())
):
    sns.heatmap(
        ch.numpy(),
        cmap="RdBu_r",
        center=0.0,
        vmin=-vmax,
        vmax=vmax,
        cbar=i == len(METHODS) - 1,  # one scale for every panel
        xticklabels=2,  # every other head, the same in each panel
        ax=ax,
    )
    # two-line titles: three panels share the column
    ax.set(title=f"{method}\n- unedited", xlabel="query head")
axes[0, 0].set_ylabel("layer")
plt.show()

# %% [markdown]
# **Reading the comparison.** The authors report, on GPT-J and pooled over prompts, RelS (their
# "RS") 11.9 → 27.8 and DNS 30.4 → 49.4 for ROME → ROME+SADR, with ES unchanged (99.9 → 99.8)
# and PS slightly lower (99.6 → 96.4). The questions for this
# model are, in order: does SADR-80 raise RelS and DNS over ROME with an interval that excludes
# 0, also after Holm's correction; does it keep ES and PS; does it lower the drift; and how much
# of any gain remains at equal steps (SADR-20).
# In the stored run (50 facts), ROME / SADR-20 / SADR-80: ES 98.0 for all three, PS 97.0 / 96.0
# / 96.0, NS 98.4 / 98.2 / 98.2 (no difference to ROME excludes 0); RelS 59.0 / 60.0 / 66.0
# (only SADR-80's interval excludes 0, and not after Holm's correction); DNS 50.7 / 52.1 / 56.4
# (only SADR-80's interval excludes 0, also after Holm); drift 0.62 / 0.46 / 0.22 (both
# exclude 0, also after Holm); GE 4.40 / 4.47 / 4.44; the drop of P(true) on the distracted
# prompts 0.10 / 0.10 / 0.07 (both exclude 0, but only SADR-80's after Holm; SADR-20's
# difference is smaller than the rounding). Decomposed: the regulariser at equal steps lowers
# the drift by 0.15 [-0.22, -0.10] and moves neither DNS (+1.43 [-0.37, +3.60]) nor RelS
# (+1.00 [0.00, +3.12]) beyond noise; the 60 extra steps with the regulariser add DNS +4.29
# [+1.59, +7.60] (excluding 0, an uncorrected interval) and RelS +6.00 [0.00, +11.54] (not), and
# lower the drift by another 0.24 [-0.34, -0.14]; together, the authors' protocol, RelS +7.00
# [+2.00, +12.50], DNS +5.72 [+2.54, +9.84] and drift -0.39 [-0.54, -0.25], at PS -1.00 [-3.13,
# 0.00] (not excluding 0).
# Holm's correction over the headline table keeps SADR-80's DNS gain and both methods' drift
# reductions, and drops SADR-80's RelS gain: at 50 facts, +7.00 on RelS is not a finding, and
# SADR-20's +1.43 on DNS does not exclude 0 even before the correction. (The same chapter run on
# another CPU with AMX put that interval at +1.63 [+0.17, +3.17], just above 0: a difference this
# small sits at the edge, where the last bits of a CPU's kernels move it; the page *Setup* tells
# the story.)
# Pooled as the authors pool: RelS 66.2 -> 73.0, DNS 52.1 -> 57.6. So the direction of the
# authors' effect reproduces on DNS and the drift falls by about two thirds (0.62 to 0.22), but
# the gain is a fraction of theirs, the RelS gain does not survive the correction, and at equal
# steps the regulariser lowers the drift with no DNS gain that excludes 0: the gain there is
# needs the 80 steps.
#
# ## 6. How strong should the regulariser be?
#
# A larger $\gamma$ pulls the attention rows harder toward $A^0$; at some point it must fight
# the edit itself. The sweep runs at equal steps (`STEPS_ROME`) on the `N_SWEEP_FACTS` facts
# whose distracted prompts lost the most after ROME, where there is something to fix (a
# selection on ROME's outcome, so its ROME numbers are worse than the average; every $\gamma$
# is compared on these same facts). $\gamma = 0$ is ROME and $\gamma$ = `GAMMA` is SADR-20,
# both reused.

# %%
sweep_ids = list(drops.sort_values(ascending=False).index[:N_SWEEP_FACTS])
sweep_facts = [case_by_id[cid] for cid in sweep_ids]
sweep_records = {
    0.0: ("ROME", {r["case_id"]: r for r in rome_report.records}),
}
if SADR_EQ in reports:
    sweep_records[float(GAMMA)] = (
        SADR_EQ,
        {r["case_id"]: r for r in reports[SADR_EQ].records},
    )
with timings("gamma sweep"):
    for g in GAMMAS:
        if float(g) in sweep_records:
            continue
        label = f"gamma={g:g}"
        g_edits = sadr_edits(
            model,
            sweep_facts,
            hp_authors,
            stats,
            gamma=g,
            steps=STEPS_ROME,
            batch_size=EDIT_BATCH,
            desc=f"computing edits ({label})",
        )
        rep = evaluate.evaluate_edits(
            model,
            sweep_facts,
            recording(g_edits.editor(), label),
            baseline=False,
            generation=generation,
            desc=f"evaluating {label}",
        )
        sweep_records[float(g)] = (
            label,
            {r["case_id"]: r for r in rep.records},
        )
sweep_rows = []
for g, (label, recs) in sorted(sweep_records.items()):
    for cid in sweep_ids:
        m = recs[cid]["edited"]
        sweep_rows.append(
            dict(
                fact=cid,
                relation=relation_of[cid],
                method=f"gamma={g:g}",
                gamma=g,
                **{
                    k: 100 * m.get(k, np.nan)
                    for k in ["ES", "PS", "NS", "RelS", "DNS"]
                },
                GE=m.get("GE", np.nan),
                drift=drift_points(label, cid),
            )
        )
sweep = pd.DataFrame(sweep_rows)

# %%
sweep_means = sweep.groupby("method", sort=False)[
    ["ES", "PS", "NS", "RelS", "DNS", "GE", "drift"]
].mean()
if len(sweep_ids) >= 2:
    sweep_table = estats.paired_metrics_table(
        sweep,
        ["ES", "PS", "NS", "RelS", "DNS", "GE", "drift"],
        baseline="gamma=0",
        **PAIRED_KW,
    )
    flags = sweep_table.pivot(
        index="method", columns="metric", values="CI excludes 0"
    )

    def excludes(metric: str, method: str) -> bool:
        v = flags[metric].get(method) if metric in flags else None
        return isinstance(v, (bool, np.bool_)) and bool(v)

    sweep_means["CI excl. 0 (vs gamma=0)"] = [
        ", ".join(k for k in sweep_means.columns if excludes(k, m)) or "–"
        for m in sweep_means.index
    ]
show_table(sweep_means.reset_index(), 1)

# %%
# NBVAL_CHECK_OUTPUT
by_gamma = sweep.groupby("gamma")[["ES", "PS", "DNS", "drift"]].mean()
largest = by_gamma.index.max()
print(
    f"the drift at gamma={largest:g} is below gamma=0's by more than 0.3:",
    bool(by_gamma.drift[0.0] - by_gamma.drift[largest] > 0.3),
)
print(
    f"DNS at gamma={largest:g} is above gamma=0's by more than 5 points:",
    bool(by_gamma.DNS[largest] - by_gamma.DNS[0.0] > 5),
)
print(
    "ES stays at 90 or more at every gamma:", bool(by_gamma.ES.min() >= 90)
)

# %%
fig, axes = plt.subplots(2, 2, figsize=(COLUMN_INCHES, 5), sharex=True)
for ax, metric in zip(axes.flat, ["ES", "DNS", "RelS", "drift"]):
    sns.pointplot(data=sweep, x="gamma", y=metric, ax=ax)
    ax.set(title=metric, ylabel="")
fig.suptitle(
    f"The sweep over gamma ({len(sweep_ids)} facts, 95% intervals)"
)
plt.show()

# %% [markdown]
# **Reading the sweep.** With only `N_SWEEP_FACTS` facts, only large effects show. Read it for
# the trade-off: does the drift fall as $\gamma$ grows, do DNS and RelS follow, and at which
# $\gamma$ does the edit itself (ES, PS) start to give way?
# In the stored run (6 facts): the drift falls from 0.6 at $\gamma = 0$ to 0.5, 0.2 and -0.2
# at 0.01, 0.1 and 1 (every change excludes 0), and DNS rises with it (52.5, 55.8, 69.2, 76.2;
# only the last excludes 0), while ES and PS stay at 100.0 and RelS at 83.3 (too few facts to
# move); NS dips to 96.7 at 0.01 (98.3 at 0, 0.1 and 1), within noise. Fluency shows no
# steady cost: GE 4.5, 4.6, 4.2, 4.2; the dips at $\gamma$ = 0.1 and 1 do not exclude 0, and the
# one GE interval that does, at $\gamma$ = 0.01, is a small rise. The column marks intervals before
# Holm's correction (the table does not print which survive it), on 6 facts whose relations are
# resampled: read it as a trend over $\gamma$, not as findings one by one.
#
# ## 7. What holds
#
# On the embedded model, with the book's 50 facts:
#
# 1. **The failure**: RelS 100.0 -> 59.0 and DNS 73.5 -> 50.7 after ROME; 24 of 50 facts
#    lose at least 0.1 of the true answer's probability on their distracted prompts.
# 2. **The drift**: concentrated in a few heads of layers 21-23 on average (up to about +0.09 of
#    attention to the subject), up to +0.2 in single heads on the chosen fact.
# 3. **Cause, in part**: over the 24 failing facts, restoring the top drifted heads brings back
#    +0.08 to +0.09 of P(true) (about 40% of the loss) where as many random heads bring back
#    nothing; the rest of the failure does not go through attention.
# 4. **The fix, small**: SADR-80 vs ROME DNS +5.72 [+2.54, +9.84] and drift -0.39
#    [-0.54, -0.25], both also after Holm's correction, at PS -1.00 and unchanged ES, NS, GE (none
#    excluding 0); RelS +7.00 [+2.00, +12.50] excludes 0 but not after Holm, so it is not a
#    finding at 50 facts. At equal steps the drift falls (-0.15 [-0.22, -0.10], also after
#    Holm), but DNS (+1.43 [-0.37, +3.60]) and RelS (+1.00) stay within noise. The authors' direction reproduces on DNS; the size does not (they report RS 11.9 ->
#    27.8 and DNS 30.4 -> 49.4 on GPT-J, DNS 52.2 -> 58.5 on Llama-3-8B, the closest to ours),
#    and most of the gain here needs the longer optimisation.
#
# These are this model's numbers, not a verdict on the method at scale: a 135M-parameter model
# with 30 layers, edited at layer 4 with a regularised $C$, need not route an edited fact the
# way GPT-J does. Rerun the chapter with `MODEL_NAME` on a GPU to test it there.
#
# ## Timing

# %%
minutes = (time.perf_counter() - notebook_start) / 60
print(
    f"this notebook ran for {minutes:.1f} minutes "
    f"({torch.get_num_threads()} torch thread(s))"
)
show_table(timings.table().reset_index(), 1)

# %% [markdown]
# ### Open exercises
#
# 1. **ROME with 80 steps.** Add `rome_editor(with_steps(hp_authors, 80), stats)` to the
#    comparison. Does ROME itself change with 60 more steps, and is SADR-80 minus ROME-80 the
#    same as SADR-20 minus ROME?
# 2. **No mask.** `sadr_editor(..., hinge=False)` pulls every head back, not only those that now
#    look at the subject more than any head did. Does the drift fall further, and at what cost
#    to ES and PS?
# 3. **The book's rule.** `sadr_editor(hp, stats, gamma=GAMMA)` uses Chapter 3's early stop,
#    which stops SADR, like ROME, once the new object's NLL is below 0.05. How many steps do
#    SADR's edits run then, and does the regulariser still lower the drift with so few steps?
#    Try `hp.replace(v_early_stop_on="nll+extra")`, which keeps optimising while NLL + the SADR
#    term is above 0.05.
# 4. **Fewer layers.** Restore (section 3) only the layers where the drift is largest, or only
#    the top-$k$ heads for larger $k$: how concentrated is the effect?
#
# ## Summary
#
# - Specificity failure shows on distracted prompts: the edit stated as text, then an unrelated
#   question whose true answer is the edit's old object. DNS and RelS measure it; the true
#   answer's probability shows it fact by fact, and it is not visible on every fact.
# - Attention drift is read at the last prompt token: attention to the edited subject's last
#   token, per layer and query head, unedited vs edited.
# - The causal test puts the unedited attention patterns back into the edited model and
#   measures the recovered probability against random heads, with raw probabilities beside the
#   fraction recovered.
# - SADR's term is $\gamma$ times a masked KL$(A^0 \| A)$ at the last prompt token, summed over
#   keys and heads, divided by the rewrite rows and summed over layers; $\gamma$ is the authors'
#   weight times $10^{-4}$; $\gamma = 0$ is ROME bit for bit.
# - A step-count change hides in the authors' comparison (20 vs 80 steps, under an early-stop
#   rule that fires late, if at all, on this model): compare at equal steps too. Here the
#   regulariser alone lowers the drift, but neither DNS (under 2 points, its interval including 0)
#   nor RelS moves beyond noise. Most of the gains of the
#   authors' protocol need the 60 extra steps, and of them only DNS (with the drift) survives
#   Holm's correction over the table.
# - Resample whole relations, not single facts (facts of one relation succeed or fail
#   together), and correct a table of many differences (Holm) before calling one a finding.
# - The authors' $\gamma$ was tuned on GPT-J. The page {doc}`../book/sadr-calibration`
#   calibrates it on this model, with the authors' protocol (ROME at the same steps as the
#   baseline, 21 rewrite prompts) on facts this chapter does not report: their weight is
#   under-regularised here, and a hundred times more reaches a plateau of DNS gains. Run on this
#   chapter's 50 facts, the calibrated weight raises DNS by about 10 points over ROME at the same
#   80 steps (intervals above 0, not after Holm), for about 4 points of PS and 7 of portability.
#
# **Next:** Chapter 6, synthesis: every method of Chapters 3-5 (and STEAM with SADR in one
# optimisation) on the same facts, through the consistency lens of Chapters 1-2, and in sequence.
