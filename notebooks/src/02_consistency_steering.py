# %% [markdown]
# # 2. Consistency steering: a bias in a few heads, against fine-tuning
#
# Chapter 1 located heads whose activity decides which answer the model gives to paraphrased
# prompts. The second half of Yang et al. (2024) {cite}`yang2024consistency` *uses* them: add a
# fixed vector to those heads' outputs, along a "consistency direction", and the model answers
# paraphrases more consistently, with no gradient step on its weights, reportedly matching
# supervised fine-tuning (SFT) at up to 23 times less cost. The recipe is Inference-Time
# Intervention {cite}`li2023iti` applied to consistency. This chapter builds it, checks that the
# two ways of injecting the bias are the same function, evaluates it only on data it never saw,
# runs the controls that tell an effect from an accident, and measures SFT's cost on the same
# machine instead of quoting the paper.
#
# ```{admonition} Objectives
# By the end of this chapter you can
# - compute per-head steering directions (mass-mean and probe) and their strength $\alpha\,\sigma\,\theta$,
# - inject them with a hook on `hook_z`, or bake them into an output-projection bias $b_O \mathrel{+}= W_O\,\text{shift}$, and show the two are equal,
# - save a steered model as an ordinary checkpoint, reload it, and remove the steering again,
# - choose K (heads) and $\alpha$ (strength) on validation data and report held-out results with controls,
# - measure side effects (known facts, perplexity, free-form answers) and compare the cost with fine-tuning,
# - put full fine-tuning and LoRA on the same footing as steering (selected on validation, tested once, same side effects), with per-query bootstrap confidence intervals,
# - choose between uncentred and per-query centred directions on validation, and test both on held-out data against random-head and random-direction controls with paired intervals,
# - run the other open variants (probe-ranked heads, last-token injection) against their controls,
# - diagnose a failure to generalise (direction stability, where the changed answers go, the effect per relation) and examine a speed claim as the training set grows.
# ```
#
# **Prerequisites.** Chapter 0 (hooks, `hook_z`, $W_O$) and Chapter 1 (pairwise consistency,
# attribution patching).
#
# **Time to run.** About 10 minutes with the embedded model: 573.0 s of wall-clock measured on
# one thread of the book's build machine, whose CPU has native bfloat16 units (AMX; the timing table
# at the end of the chapter gives every step); a CPU without them computes in float32 and takes
# longer
# (the float32 column of {ref}`the chapter times <chapter-times>`). Scoring answers dominates:
# every evaluation scores 7 paraphrases of each query against
# the relation's whole candidate list (each shared prompt prefix once, `editlens.scoring`), and the
# chapter runs about a hundred of them (the K x $\alpha$ sweep for two candidate directions, the
# held-out tests of four steering configurations with their controls, fine-tuning checkpoints and
# their test sets, and the cost curve). In this run the held-out tests took 65.0 s (section 7),
# 52.5 s (the centred candidate) and 106.5 s (the two other variants), the sweep 60.4 s, SFT and
# LoRA 92.3 s and 68.5 s (training and testing), the cost curve 46.3 s. Each state is scored
# once: the unsteered model's answers, the sweep's chosen cells and the fine-tuning runs are reused
# wherever a later section needs the same numbers. Lower `K_VALUES`, `ALPHAS`, `N_CONTROL_SEEDS`,
# `SFT_STEPS` or `COST_SIZES` for a quicker run.
#
# Everything here is in `editlens.steering` (directions, injection, baking, side effects),
# `editlens.sft` (the fine-tuning baselines), `editlens.steering.fair` (the validation sweep, the
# held-out tests with controls and intervals, the diagnosis and the cost curve) and
# `editlens.consistency`.

# %% tags=["parameters"]
# Parameters (papermill: `-p NAME VALUE`)
# None = the embedded SmolLM2-135M-Instruct; or a Hugging Face name
MODEL_NAME = None
DEVICE = None  # None = GPU if available, else CPU
# "auto": bf16 matrix products where the CPU/GPU has native bf16, else
# float32; or "float32", "bfloat16"
DTYPE = "auto"
SEED = 0
# inconsistent training pairs for the attribution-patching head ranking
# (as Chapter 1)
N_ATTR_PAIRS = 64
# numbers of heads in the sweep (top K of the ranking)
K_VALUES = [8, 16, 32, 64]
# strengths in the sweep (multiples of each head's sigma)
ALPHAS = [0.25, 0.5, 1, 2]
# where the shift is added: "all" positions (what a bias does) or the
# "last" prompt token
POSITION = "all"
# random-head and random-direction controls (sections 7 and 11),
# averaged over seeds
N_CONTROL_SEEDS = 2
# the validation rule: most consistent (K, alpha) whose accuracy drops by
# at most this
MAX_ACCURACY_DROP = 0.02
SFT_LR = 2e-5  # fine-tuning baseline: AdamW learning rate (full model)
SFT_STEPS = 50  # optimisation steps (batches of 16 prompts)
SFT_EVAL_EVERY = 10  # validation consistency every this many steps
LORA_R = 8  # LoRA baseline (peft): rank on q_proj, v_proj, o_proj
LORA_LR = 1e-3  # its learning rate (same steps and batches as SFT)
# the cost as the training set grows (section 13): training-set sizes,
# fine-tuning steps and validation checks per size (full: [25, 50, 111])
COST_SIZES = [25, 111]
COST_STEPS = 20
COST_EVAL_EVERY = 10

# %%
import tempfile
import textwrap
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

import editlens
from editlens import consistency as C
from editlens import localize as LZ
from editlens import sft, steering
from editlens import stats as estats
from editlens.data import (
    load_facts,
    load_object_descriptions,
    load_openended,
)
from editlens.data.paraphrases import steering_splits
from editlens.display import (
    COLUMN_INCHES,
    LINE_WIDTH,
    book_style,
    show_table,
)
from editlens.exercises import assert_close, check_exercise
from editlens.paths import cache_dir
from editlens.plots import heatmap
from editlens.scoring import ROWS_PER_BATCH
from editlens.steering import fair, side_effects
from editlens.timing import Timings

notebook_start = time.perf_counter()
editlens.seed_everything(SEED)
book_style()
model, tokenizer = editlens.load_model(
    MODEL_NAME, device=DEVICE, dtype=DTYPE
)
print(textwrap.fill(editlens.precision.of(model).describe(), LINE_WIDTH))
fingerprint = editlens.weights_fingerprint(model)
timings = Timings()  # step -> wall seconds (CPU seconds in timings.cpu)
timed = timings


# %% [markdown]
# ## 1. Four sets of queries, nothing shared
#
# Steering is fitted on some prompts and must help on others. We split the paraphrase set
# ({doc}`../book/data`) four ways: **train** (fit heads and directions; also the SFT data),
# **validation** (choose K and $\alpha$), and two tests the choice never sees: **held-out
# subjects** (same relations, new subjects) and **held-out relations** (relations absent from
# training altogether: capital, language, product maker).

# %%
# NBVAL_CHECK_OUTPUT
splits = steering_splits()
relations = {
    n: sorted({q.relation_id for q in qs}) for n, qs in splits.items()
}
for name, qs in splits.items():
    print(
        f"{name:>15}: {len(qs):3d} queries x 7 templates, "
        f"{len(relations[name])} relations"
    )
print(
    textwrap.fill("train relations: " + ", ".join(relations["train"]), 76)
)
print(
    "validation and test_subjects: the same relations:",
    relations["validation"]
    == relations["test_subjects"]
    == relations["train"],
)
print("test_relations:", ", ".join(relations["test_relations"]))


# %% [markdown]
# ## 2. The training signal: which prompts agree with the majority?
#
# ITI labels single activations (truthful or not). The consistency paper labels *pairs*. A pair's
# label is symmetric in its two prompts, while a steering direction lives in one prompt's
# activation space, so we label each **prompt**: 1 when its answer equals its query's majority
# answer over the seven templates, 0 when it deviates. A prompt that agrees with the majority is
# on the consistent side of every pair it forms with the majority. (The choice is open in the
# paper; this one gives each activation exactly one label.)

# %%
# wall-clock of the answers and of the activations, for section 13
train_seconds = {}
with timed("steering: answers + activations (train)"):
    # ROWS_PER_BATCH packed rows per forward pass: faster on a CPU
    z_train, labels, train_answers = steering.collect_training_activations(
        model,
        splits["train"],
        rows_per_batch=ROWS_PER_BATCH,
        seconds=train_seconds,
    )
print(
    f"hook_z at the last token: {tuple(z_train.shape)} "
    "(prompt, layer, head, d_head)"
)
print(
    "prompts agreeing with their query's majority: "
    f"{labels.mean():.2f} ({labels.sum()} of {len(labels)})"
)

# %% [markdown]
# ## 3. Which heads? Attribution patching on the training pairs
#
# Chapter 1 found that the paper's probes mostly read which relation and template a prompt uses,
# while attribution patching measures what a head *does* to the answer. We rank all heads by
# attribution patching, as Chapter 1 recommends, on pairs of the training queries only (the
# Chapter 1 run used another split, so we recompute rather than load its file). The map shows each
# head's estimated share of the answer gap between the two prompts of a pair; the top
# `max(K_VALUES)` heads of the ranking are outlined. The largest estimate is L23H4's; the next
# ones are spread from the first layers to the last (L0H5, L29H1, L2H3, L23H5).

# %%
with timed("steering: head ranking (attribution patching)"):
    pairs = LZ.make_pairs(train_answers)
    patch_set = LZ.patch_set(pairs, max_pairs=N_ATTR_PAIRS, seed=SEED)
    attribution = LZ.attribution_patching(model, patch_set)
ranking = LZ.select_heads(
    attribution.effect, model.cfg.n_layers * model.cfg.n_heads
)
fig, ax = plt.subplots(figsize=(COLUMN_INCHES, 6.5))
heatmap(
    attribution.normalised_effect,
    ax=ax,
    center=0,
    cbar_label="estimated fraction of the gap",
    title=f"Attribution patching, {attribution.n_pairs} training pairs",
    mark=ranking[: max(K_VALUES)],
)
plt.show()

# %%
# the order of close heads moves with the precision: not a checked output
top16 = " ".join(f"L{l}H{h}" for l, h in ranking[:16])
print(textwrap.fill("top 16 heads: " + top16, 76))

# %%
chapter1_file = cache_dir() / "chapter1" / "heads_attribution.json"
# None unless Chapter 1 has run on this machine, with these weights
chapter1_heads = LZ.saved_heads(
    chapter1_file, model_fingerprint=fingerprint
)
if chapter1_heads is not None:
    overlap = len(set(chapter1_heads) & set(ranking[: len(chapter1_heads)]))
    print(
        f"Chapter 1's top {len(chapter1_heads)} (other split): {overlap} "
        f"also in this ranking's top {len(chapter1_heads)}"
    )

# %% [markdown]
# ## 4. Directions and strengths
#
# For a head $(l, h)$ let $x \in \mathbb{R}^{64}$ be its `hook_z` at the last prompt token. The
# **mass-mean direction** is $\mu_1 - \mu_0$, the mean over agreeing prompts minus the mean over
# deviating ones, normalised to unit length $\theta_{l,h}$. The **probe direction** is the weight
# vector of a logistic regression predicting the label from $x$, normalised. The **strength**
# $\sigma_{l,h}$ is the standard deviation of the training activations projected on $\theta$, so
# that $\alpha$ is measured in "typical spreads" of that head, and the shift is
# $\alpha\,\sigma_{l,h}\,\theta_{l,h}$.
#
# A third direction is an open choice we test as seriously as the first: the **per-query centred**
# mass-mean direction. Subtract from each prompt's activation its query's mean over the seven
# templates, then take the mass-mean difference (and $\sigma$) of what is left. The uncentred
# direction can encode *which* queries the model answers consistently (easy subjects, easy
# relations); the centred one cannot, it only sees how a paraphrase deviates from its siblings.
#
# ### Exercise 2.1: a mass-mean direction
#
# Given one head's activations `x` (`[prompt, d_head]`) and 0/1 `labels`, return `(theta, sigma)`:
# the unit mass-mean direction and the (population) standard deviation of `x @ theta`.


# %%
def mass_mean_direction(
    x: torch.Tensor, labels: np.ndarray
) -> tuple[torch.Tensor, float]:
    # Your code here
    raise NotImplementedError


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def mass_mean_direction_solution(
    x: torch.Tensor, labels: np.ndarray
) -> tuple[torch.Tensor, float]:
    y = torch.as_tensor(labels).bool()
    direction = x[y].mean(0) - x[~y].mean(0)
    theta = direction / direction.norm()
    return theta, float((x @ theta).std(correction=0))


# %%
def test_mass_mean_direction(fn) -> None:
    head = ranking[0]
    theta, sigma = fn(z_train[:, head[0], head[1]].double(), labels)
    reference = steering.fit_directions(
        z_train, labels, heads=[head], method="mass_mean"
    )
    assert_close(
        theta.float(), reference.theta[head], atol=1e-5, what="theta"
    )
    assert_close(
        torch.tensor(sigma).float(),
        reference.sigma[head],
        atol=1e-5,
        what="sigma",
    )


mass_mean_direction = check_exercise(
    "2.1 mass_mean_direction",
    mass_mean_direction,
    mass_mean_direction_solution,
    test_mass_mean_direction,
)

# %%
top = ranking[: max(K_VALUES)]
with timed("steering: fit directions"):
    directions = {
        method: steering.fit_directions(
            z_train, labels, heads=top, method=method, seed=SEED
        )
        for method in ("mass_mean", "probe")
    }
# the per-query centred candidate (fitted with the others, timed apart)
directions["centred"] = steering.fit_directions(
    z_train,
    labels,
    heads=top,
    method="mass_mean",
    centre_by=train_answers["query_id"],
)


def cosine(a: str, b: str, l: int, h: int) -> float:
    return torch.dot(
        directions[a].theta[l, h], directions[b].theta[l, h]
    ).item()


direction_table = pd.DataFrame(
    [
        {
            "head": f"L{l}H{h}",
            "sigma mass-mean": directions["mass_mean"].sigma[l, h].item(),
            "sigma probe": directions["probe"].sigma[l, h].item(),
            "sigma centred": directions["centred"].sigma[l, h].item(),
            "cos(mass-mean, probe)": cosine("mass_mean", "probe", l, h),
            "cos(mass-mean, centred)": cosine("mass_mean", "centred", l, h),
        }
        for l, h in top
    ]
)
show_table(direction_table.head(8), 3)

# %%
cosines = direction_table.drop(columns="head").filter(like="cos")
show_table(
    cosines.describe()
    .loc[["min", "50%", "max"]]
    .rename(index={"50%": "median"}),
    2,
    index=True,
    caption=f"Cosines over the top {len(top)} heads",
)

# %%
# NBVAL_CHECK_OUTPUT
median_cos = cosines.median()
print(
    "median cosine(mass-mean, probe) below 0.4:",
    median_cos["cos(mass-mean, probe)"] < 0.4,
)
print(
    "the centred direction differs from the uncentred one\n"
    "(median cosine below 0.8):",
    median_cos["cos(mass-mean, centred)"] < 0.8,
)

# %% [markdown]
# ## 5. Two ways to inject, one function
#
# **A hook.** Add the shift to `blocks.{l}.attn.hook_z[:, pos, h]` during the forward pass. No
# weight changes; the hook is removed afterwards.
#
# **A bias.** `hook_z` is the input of the output projection, $\text{attn\_out} = \sum_h z_h W_O[h]
# (+ b_O)$, with TransformerLens' $W_O$ of shape `[head, d_head, d_model]`. Adding $s_h$ to $z_h$ at
# every position adds $s_h W_O[h]$ to the output at every position, which is exactly a bias:
# $b_O \mathrel{+}= \sum_h W_O[h]^\top s_h$. SmolLM2 (like every Llama) has no output-projection
# bias, so baking one in means adding it. A trap from the ITI code base: one public script writes
# the raw shift $s_h$ into the bias, which is not even the right shape here (64 vs 576 numbers) and
# is the wrong vector wherever it fits.
#
# ### Exercise 2.2: fold a shift into a bias
#
# Given one layer's `W_O` (`[head, d_head, d_model]`) and `shifts` (a dict head -> `[d_head]`),
# return the bias `[d_model]`.


# %%
def fold_into_bias(
    W_O: torch.Tensor, shifts: dict[int, torch.Tensor]
) -> torch.Tensor:
    # Your code here
    raise NotImplementedError


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def fold_into_bias_solution(
    W_O: torch.Tensor, shifts: dict[int, torch.Tensor]
) -> torch.Tensor:
    return sum(shift @ W_O[head] for head, shift in shifts.items())


# %%
def test_fold_into_bias(fn) -> None:
    shifts = directions["mass_mean"].shift(ranking[:8], alpha=4.0)
    layer = ranking[0][0]
    in_layer = {h: s for (l, h), s in shifts.items() if l == layer}
    W_O = model.blocks[layer].attn.W_O.detach()
    expected = steering.bias_from_shifts(
        model, {(layer, h): s for h, s in in_layer.items()}
    )[layer]
    assert_close(fn(W_O, in_layer), expected, atol=1e-5, what="bias")


fold_into_bias = check_exercise(
    "2.2 fold_into_bias",
    fold_into_bias,
    fold_into_bias_solution,
    test_fold_into_bias,
)

# %% [markdown]
# Now the claim itself: the hook (at every position) and the baked bias give the same logits, the
# original weights are untouched after either, and a steered model saved to disk (safetensors,
# a standard checkpoint with `attention_bias=True`) reloads to the same function. "The same
# function" is a statement about exact arithmetic, so we compare in float32
# (`editlens.precision.full_precision`): in bfloat16 the two forms round differently (the hook
# adds the shift to bf16 activations, the bias is added inside the output projection), and the
# comparison would measure the rounding instead.

# %%
demo_shifts = directions["mass_mean"].shift(ranking[:8], alpha=4.0)
tokens = model.to_tokens(
    ["The capital of France is", "Pelé played the sport of"],
    prepend_bos=True,
)
originals = {n: p.detach().clone() for n, p in model.named_parameters()}
with torch.no_grad(), editlens.precision.full_precision(model):
    plain = model(tokens)
    with steering.steered(model, demo_shifts, position="all"):
        hooked = model(tokens)
    with steering.baked(model, demo_shifts):
        baked_logits = model(tokens)
    after = model(tokens)
logit_move = float((hooked - plain).abs().max())
baked_gap = float((hooked - baked_logits).abs().max())
print(f"steering moves the logits by up to {logit_move:.1f}")
print(f"hook vs baked bias: max |difference| {baked_gap:.1e}")

# %%
# NBVAL_CHECK_OUTPUT
# float noise, whose size depends on the CPU: checked as claims
print("steering moves the logits by more than 1:", logit_move > 1)
print(
    f"hook vs baked bias: max |difference| below 1e-3: {baked_gap < 1e-3} "
    f"(same function: {torch.allclose(hooked, baked_logits, atol=1e-3)})"
)
print(
    "original weights bit-identical afterwards:",
    all(torch.equal(p, originals[n]) for n, p in model.named_parameters())
    and len(originals) == len(dict(model.named_parameters())),
)
print("unsteered logits unchanged:", torch.equal(after, plain))

# %%
with tempfile.TemporaryDirectory() as folder:
    steering.save_steered(model, demo_shifts, folder)
    reloaded, _ = editlens.load_model(folder, device=DEVICE, dtype=DTYPE)
    with torch.no_grad(), editlens.precision.full_precision(reloaded):
        reloaded_logits = reloaded(tokens)
    del reloaded

# %%
# NBVAL_CHECK_OUTPUT
reload_gap = float((reloaded_logits - hooked).abs().max())
print(
    "saved and reloaded: max |difference| to the hooked model "
    f"below 1e-3: {reload_gap < 1e-3}"
)

# %% [markdown]
# ## 6. Choosing K and $\alpha$ on validation, for two candidate directions
#
# Each cell of the sweep steers the top-K heads of the ranking at strength $\alpha$ and scores
# every validation prompt. We run it for both candidates, the uncentred mass-mean directions (the
# paper's recipe) and the per-query centred ones, and each candidate gets its own K and $\alpha$
# by the same rule, fixed before looking: the most consistent setting whose accuracy is at most
# `MAX_ACCURACY_DROP` below the unsteered model's (ties to the smaller K, then the smaller
# $\alpha$). Consistency alone can be bought by answering everything the same way; accuracy is
# the guard. (`fair.sweep_settings` runs the sweep, `fair.choose_setting` is the rule.)


# %%
answer_frames = {}  # (split, model) -> answers, for the diagnosis (sec. 12)


def evaluate(
    queries, shifts=None, position=POSITION, keep=None
) -> dict[str, float]:
    """Consistency and accuracy of the model, steered by `shifts`; `keep`
    stores the answers under that key of `answer_frames`."""
    frames = {}
    row = fair.evaluate_state(
        model,
        {"q": queries},
        shifts=shifts,
        position=position,
        answers_out=frames,
    )
    if keep is not None:
        answer_frames[keep] = frames["q"]
    return {
        "consistency": row["q_consistency"],
        "accuracy": row["q_accuracy"],
    }


base_val = evaluate(splits["validation"], keep=("validation", "unsteered"))
candidates = {
    "mass-mean": directions["mass_mean"],
    "centred": directions["centred"],
}
sweep_frames = {}  # (candidate, K, alpha) -> validation answers
with timed("sweep (validation)"):
    sweep = fair.sweep_settings(
        model,
        splits["validation"],
        candidates,
        ranking,
        K_VALUES,
        ALPHAS,
        position=POSITION,
        answers_out=sweep_frames,
    )

# %% [markdown]
# The figure shows each cell's change from the unsteered model: top row the uncentred mass-mean
# directions, bottom row the centred ones; left consistency, right accuracy.

# %%
fig, axes = plt.subplots(
    2, 2, figsize=(COLUMN_INCHES, 6.2), sharex=True, sharey=True
)
for row, name in zip(axes, candidates):
    for ax, metric in zip(row, ["consistency", "accuracy"]):
        grid = (
            sweep[sweep.directions == name].pivot(
                index="K", columns="alpha", values=metric
            )
            - base_val[metric]
        ).round(2) + 0.0  # rounds to 0: "+0.00", never "-0.00"
        sns.heatmap(
            grid,
            annot=True,
            fmt="+.2f",
            center=0,
            vmin=-0.15,
            vmax=0.15,
            cmap="RdBu_r",
            cbar=False,
            annot_kws={"size": 10},
            ax=ax,
        )
        ax.set_title(f"{name}: {metric}", fontsize=12)
fig.suptitle("Validation: steered minus unsteered", fontsize=13)
plt.show()

# %%
chosen = {
    name: fair.choose_setting(
        sweep[sweep.directions == name],
        base_val["accuracy"],
        MAX_ACCURACY_DROP,
    )
    for name in candidates
}
best = chosen["mass-mean"]
K_BEST, ALPHA_BEST = int(best.K), float(best.alpha)
K_CENTRED = int(chosen["centred"].K)
ALPHA_CENTRED = float(chosen["centred"].alpha)
print(
    f"unsteered validation: consistency {base_val['consistency']:.3f}, "
    f"accuracy {base_val['accuracy']:.3f}"
)
for name, c in chosen.items():
    print(
        f"{name} chosen on validation: K = {int(c.K)}, "
        f"alpha = {c.alpha:g}\n    -> consistency {c.consistency:.3f}, "
        f"accuracy {c.accuracy:.3f}"
    )

# %%
# NBVAL_CHECK_OUTPUT
# which cell wins depends on near-ties that move with the precision;
# what the sections below rely on does not
print(
    "each candidate's choice gains consistency on validation:",
    all(c.consistency > base_val["consistency"] for c in chosen.values()),
)
print(
    "the centred choice gains more than the uncentred one:",
    chosen["centred"].consistency > best.consistency,
)

# %% [markdown]
# At the uncentred choice, the other choices the paper leaves open, still on validation: the
# probe direction instead of mass-mean, and the last prompt token instead of every position.
# (The first row is the sweep's own cell, not scored again.)

# %%
answer_frames[("validation", "steering")] = sweep_frames[
    ("mass-mean", K_BEST, ALPHA_BEST)
]
variants = {
    "mass-mean, all positions": dict(
        consistency=best.consistency, accuracy=best.accuracy
    ),
    "probe, all positions": evaluate(
        splits["validation"],
        directions["probe"].shift(ranking[:K_BEST], ALPHA_BEST),
    ),
    "mass-mean, last token": evaluate(
        splits["validation"],
        directions["mass_mean"].shift(ranking[:K_BEST], ALPHA_BEST),
        "last",
    ),
}
validation_variants = pd.DataFrame(variants).T.rename_axis("steering")
show_table(validation_variants.reset_index(), 3)

# %%
# NBVAL_CHECK_OUTPUT
print(
    "the probe direction gains less than mass-mean on validation:",
    variants["probe, all positions"]["consistency"] < best.consistency,
)

# %% [markdown]
# ## 7. Held-out results, with controls
#
# Two controls at the chosen K and $\alpha$: **random heads** (K heads drawn outside the ranking's
# top K, each with its own mass-mean direction and $\sigma$) and **random directions** (the chosen
# heads, random unit directions, $\sigma$ measured along them), `N_CONTROL_SEEDS` seeds of each
# (`fair.control_shifts`). An effect that the controls reproduce is not about consistency heads.
# `fair.controlled_evaluation` scores every state on both test sets; the unsteered model is scored
# once and shared with the other configurations of section 11.

# %%
held_out_splits = {
    k: splits[k] for k in ("test_subjects", "test_relations")
}
chosen_shifts = directions["mass_mean"].shift(ranking[:K_BEST], ALPHA_BEST)
with timed("held-out evaluation"):
    unsteered_test = {}
    for split_name, qs in held_out_splits.items():
        evaluate(qs, keep=(split_name, "unsteered"))
        unsteered_test[split_name] = answer_frames[
            (split_name, "unsteered")
        ]
    controlled = {
        "mass-mean": fair.controlled_evaluation(
            model,
            held_out_splits,
            fair.control_shifts(
                z_train,
                labels,
                ranking[:K_BEST],
                ALPHA_BEST,
                n_seeds=N_CONTROL_SEEDS,
                seed=SEED,
            ),
            position=POSITION,
            unsteered=unsteered_test,
        )
    }
for split_name in held_out_splits:
    answer_frames[(split_name, "steering")] = controlled[
        "mass-mean"
    ].frames[split_name]["steered"][0]
headline = controlled["mass-mean"].summary()
print(
    f"K = {K_BEST}, alpha = {ALPHA_BEST:g}, {POSITION} positions; "
    f"controls averaged over {N_CONTROL_SEEDS} seeds"
)
show_table(
    headline.set_axis(
        [f"{s} {m[:4]}" for s, m in headline.columns], axis=1
    ).rename_axis("model"),
    3,
    index=True,
)

# %%
# NBVAL_CHECK_OUTPUT
h = headline
gap = h.loc["steered"] - h.loc["unsteered"]
print(
    "steered minus unsteered, held-out subjects, within +-0.05:",
    abs(gap[("test_subjects", "consistency")]) < 0.05,
)
print(
    "a control within 0.05 of steered on both test sets:",
    all(
        (
            h.loc["steered", (s, "consistency")]
            - h.loc[
                ["random heads", "random directions"], (s, "consistency")
            ]
        ).min()
        < 0.05
        for s in held_out_splits
    ),
)

# %% [markdown]
# **What this shows: on SmolLM2-135M the effect does not survive held-out data.** On validation the
# chosen setting gained 0.067 in consistency (0.622 to 0.689), accuracy 0.687 (0.686). On held-out
# subjects it gains a little (0.629 against 0.602 unsteered); on held-out relations it loses a
# little (0.625 against 0.635) and loses some accuracy (0.696 against 0.717). Random heads at the
# same strength do better than the located heads on both test sets (0.645 and 0.646), and the
# paired intervals of sections 10 and 11 include 0 on both. The validation gain is the best of 16
# cells measured on 38 queries, and the best of many noisy numbers is biased upwards (the winner's
# curse): that is exactly why the choice is made on validation and reported on test. The probe
# direction gains nothing even on validation (0.614, below the unsteered 0.622), and its direction
# is far from the mass-mean one (median cosine 0.21 in section 4), which fits Chapter 1's finding
# that the probe signal at these heads is mostly about which relation and template a prompt uses,
# not about agreement.
#
# So with the paper's recipe (uncentred directions) we **do not reproduce** its claim on this
# model. It was shown on 7B-13B models with their own data; on this 135M model the uncentred
# direction does not carry a transferable "agree with the other phrasings" signal (section 12 asks
# what it carries instead). Section 11 tests the centred candidate the same way, with intervals.
# Readers with a GPU can rerun the chapter on a larger model (`MODEL_NAME`); the exercises below
# try other choices on this one.

# %% [markdown]
# ## 8. Side effects
#
# Steering is applied to every prompt, not only to questions about paraphrased facts. Three
# checks, all with the steering *baked* (Hugging Face `generate` does not run TransformerLens
# hooks, one more reason to have the bias form):
#
# - **known facts**: on the Chapter 3 facts set, does the true object still beat the counterfactual
#   one, on the rewrite prompts and the neighbourhood prompts (the unsteered model knows nearly all
#   of them, by construction of the set)?
# - **perplexity** on held-out text: the reference sentences about objects that ship with the
#   facts set (not model-generated, not used for fitting);
# - **free-form consistency**: the model answers each open-ended question in 3-4 paraphrases
#   (greedy, 24 tokens); the answers are embedded with all-MiniLM-L6-v2 and their mean pairwise
#   cosine is the question's agreement.

# %%
facts = load_facts()
texts = [t for ts in load_object_descriptions().values() for t in ts]
questions = load_openended()
side_rows = []
with timed("side effects"):
    for name, shifts in [("unsteered", None), ("steered", chosen_shifts)]:
        ctx = steering.baked(model, shifts) if shifts else torch.no_grad()
        with ctx:
            known = side_effects.known_facts(model, facts)
            ppl = side_effects.perplexity(model, texts)
            gen = side_effects.generation_consistency(
                model, questions, return_answers=True
            )
        side_rows.append(
            dict(
                model=name,
                known_rewrite=known["rewrite"],
                known_neighbourhood=known["neighbourhood"],
                perplexity=ppl,
                generation_agreement=gen["agreement"],
                answers=gen["answers"],
            )
        )
side = pd.DataFrame(side_rows).set_index("model")

side_names = {
    "known_rewrite": "known",
    "known_neighbourhood": "known nb",
    "perplexity": "ppl",
    "generation_agreement": "gen agree",
}
show_table(
    side.drop(columns="answers").rename(columns=side_names),
    {"known": 3, "known nb": 3, "ppl": 1, "gen agree": 3},
    index=True,
)

# %%
# NBVAL_CHECK_OUTPUT
print(
    f"{len(facts)} facts, {len(texts)} reference sentences, "
    f"{len(questions)} open-ended questions"
)
print(
    "the unsteered model knows at least 99% of the facts:",
    side.loc["unsteered", ["known_rewrite", "known_neighbourhood"]]
    .ge(0.99)
    .all(),
)
print(
    "steering loses some known facts:",
    side.loc["steered", "known_rewrite"]
    < side.loc["unsteered", "known_rewrite"],
)
print(
    "steering does not lower perplexity:",
    side.loc["steered", "perplexity"]
    >= side.loc["unsteered", "perplexity"],
)

# %%
example = 0
print("question:", questions[example].paraphrases[0])
for name in side.index:
    print(
        f"{name}:",
        *[a[:70] for a in side.loc[name, "answers"][example]],
        sep="\n   ",
    )

# %% [markdown]
# Steering is not free either: with the bias baked in, some known facts flip to the counterfactual
# object (0.927 known against 0.997 unsteered, 0.965 against 0.999 on the neighbourhood prompts)
# and perplexity on the reference sentences rises (47.3 against 41.9). The free-form answers agree
# with each other a little *less* than before (0.681 against 0.692), and the example shows what
# changes instead: where the unsteered answers describe an iron tower in Paris, three of the four
# steered answers call it an "iron lady", one of them "of the 18th century" (it was built in
# 1889). Steering changes what the model says without making its answers agree.
#
# ## 9. Against supervised fine-tuning: quality and wall-clock
#
# The baseline fine-tunes the whole model on the same training queries: every template prompt
# of a query is trained (teacher-forced cross-entropy) to give the query's majority answer, so
# paraphrases agree. Every `SFT_EVAL_EVERY` steps we measure validation consistency; the best
# checkpoint's gain and the optimisation time to reach it are the baseline's numbers. Steering's
# time is everything it needed: scoring the training prompts with their activations, ranking the
# heads and fitting the directions (the K x $\alpha$ sweep is model selection, like SFT's
# validation passes, and is excluded from both). One run, same machine, same thread count.
#
# To put fine-tuning on the same footing as steering, the checkpoint chosen on validation is
# then evaluated once on both test sets and for the same side effects (inside
# `sft.finetuned(..., restore_best="consistency")`, which yields that checkpoint and restores the
# original weights on exit), and so is a parameter-efficient baseline: LoRA adapters
# {cite}`hu2022lora` through `peft`, the library a user would pick, on the attention projections
# of every layer, same data, same steps, same selection rule. The figure below follows the SFT run:
# validation consistency and accuracy against optimisation time, with steering's validation
# consistency dashed.


# %%
def validation_metrics(m) -> dict[str, float]:
    row = fair.evaluate_state(m, {"v": splits["validation"]})
    return {
        "consistency": row["v_consistency"],
        "accuracy": row["v_accuracy"],
    }


side_data = fair.SideEffectData(
    facts=facts, texts=texts, questions=questions
)


# Work done once: the training answers of section 2 give the majority
# targets, and the unsteered validation scores of section 6 are every
# run's step-0 row (the untrained model is the unsteered one).
train_targets = sft.majority_targets(train_answers)


def fine_tune(name: str, **kwargs):
    """Train, keep the best validation checkpoint, test it once."""
    frames = {}
    with sft.finetuned(
        model,
        splits["train"],
        train_targets,
        initial_eval=base_val,
        steps=SFT_STEPS,
        batch_size=16,
        eval_fn=validation_metrics,
        eval_every=SFT_EVAL_EVERY,
        seed=SEED,
        progress=False,
        restore_best="consistency",
        **kwargs,
    ) as (tuned, result):
        row = fair.evaluate_state(
            tuned,
            held_out_splits,
            name=name,
            side=side_data,
            answers_out=frames,
        )
    answer_frames.update({(k, name): v for k, v in frames.items()})
    return result, row


with timed("sft"):
    sft_result, sft_row = fine_tune("SFT", lr=SFT_LR)
sft_history = pd.DataFrame(sft_result.history)
fig, ax = plt.subplots(figsize=(COLUMN_INCHES, 3.6))
sns.lineplot(
    data=sft_history.melt(
        id_vars="train_seconds", value_vars=["consistency", "accuracy"]
    ),
    x="train_seconds",
    y="value",
    hue="variable",
    marker="o",
    ax=ax,
)
ax.axhline(
    best.consistency,
    color="grey",
    ls="--",
    lw=1,
    label="steering's consistency",
)
ax.set(
    xlabel="fine-tuning time (s, optimisation only)",
    ylabel="validation",
    title="SFT baseline",
)
handles, names = ax.get_legend_handles_labels()
ax.get_legend().remove()
fig.legend(handles, names, loc="outside lower center", ncol=3)
plt.show()

# %%
sft_best = sft_result.best("consistency")
sft_gain = sft_best["consistency"] - base_val["consistency"]
steering_gain = best.consistency - base_val["consistency"]
print(
    "SFT: best validation consistency "
    f"{sft_best['consistency']:.3f} (gain {sft_gain:+.3f},\n"
    f"     accuracy {sft_best['accuracy']:.3f}) at step {sft_best['step']}"
)
print(
    f"steering: validation consistency {best.consistency:.3f} "
    f"(gain {steering_gain:+.3f},\n"
    f"     accuracy {best.accuracy:.3f})"
)

# %%
# NBVAL_CHECK_OUTPUT
print(
    "SFT's validation gain is more than twice steering's:",
    sft_gain > 2 * steering_gain,
)
print(
    "weights restored after fine-tuning:",
    all(torch.equal(p, originals[n]) for n, p in model.named_parameters()),
)

# %%
steering_seconds = sum(
    v for k, v in timings.items() if k.startswith("steering:")
)
sft_seconds = sft_best["train_seconds"]
cost = pd.DataFrame(
    {
        "seconds": {
            **{
                k: v
                for k, v in timings.items()
                if k.startswith("steering:")
            },
            "steering total": steering_seconds,
            "SFT to its best checkpoint": sft_seconds,
        }
    }
)
show_table(cost.rename_axis("step").reset_index(), 1)

# %%
print(
    f"SFT / steering wall-clock: {sft_seconds / steering_seconds:.1f}x "
    f"on {torch.get_num_threads()} CPU thread(s)\n"
    "(the paper reports up to 23x)"
)

# %% [markdown]
# Fine-tuning on the same 111 training queries raises validation consistency two and a half times
# as much as steering did (+0.168 against +0.067). Its validation accuracy rises at the first check
# and then falls back: at the best checkpoint, step 30 of 50, it is level with the unsteered
# model's (0.698 against 0.686), and consistency does not rise further after that step. On this
# machine and model SFT costs about twice steering's wall-clock (31.4 s to its best checkpoint
# against 16.0 s, the 2.0x printed above), not 23 times: steering's own cost is dominated by
# scoring the training prompts (10.5 s), which a 135M model makes as expensive as about ten
# optimisation steps (1.0 s per step, as printed below with LoRA's).
# `benchmarks/bench_steering.py` measures the same two costs in one run outside the notebook.
# Section 13 follows the two costs as the training set grows.
#
# The LoRA baseline trains adapters of rank `LORA_R` on the query, value and output projections
# of every layer; only the adapters receive gradients, and they are removed again on exit.

# %%
with timed("lora"):
    lora_result, lora_row = fine_tune(
        "LoRA", lr=LORA_LR, lora=sft.LoraSpec(r=LORA_R, seed=SEED)
    )

# %%
lora_best = lora_result.best("consistency")
lora_gain = lora_best["consistency"] - base_val["consistency"]
print(
    f"LoRA: {lora_result.seconds_per_step:.1f} s per step "
    f"(full SFT: {sft_result.seconds_per_step:.1f} s)"
)
print(
    "LoRA: best validation consistency "
    f"{lora_best['consistency']:.3f} (gain {lora_gain:+.3f},\n"
    f"      accuracy {lora_best['accuracy']:.3f}) "
    f"at step {lora_best['step']}"
)

# %%
# NBVAL_CHECK_OUTPUT
n_model = sum(p.numel() for p in model.parameters())
print(
    f"LoRA (r = {LORA_R}): {lora_result.n_trainable:,} trainable "
    f"parameters ({lora_result.n_trainable / n_model:.2%} of the model)"
)
print(
    "LoRA's validation gain is more than twice steering's:",
    lora_gain > 2 * steering_gain,
)
print(
    "weights restored after LoRA:",
    editlens.weights_fingerprint(model) == fingerprint,
)

# %% [markdown]
# ## 10. Steering and fine-tuning on the same footing
#
# One table for every model state, each selected on validation only and tested once: consistency
# and accuracy on both test sets, the side effects of section 8, the cost (seconds to build the
# model state; for fine-tuning, optimisation up to the chosen checkpoint) and the validation
# consistency it was chosen on. The controls have no side-effect columns (they are not candidates).

# %%
state_rows = []
for name, source in [
    ("unsteered", "unsteered"),
    ("steering", "steered"),
    ("random heads", "random heads"),
    ("random directions", "random directions"),
]:
    row = {"model": name}
    for split in held_out_splits:
        for metric in ("consistency", "accuracy"):
            row[f"{split}_{metric}"] = headline.loc[source, (split, metric)]
    if source in side.index:
        row.update(side.loc[source].drop("answers").to_dict())
    state_rows.append(row)
fair_table = pd.DataFrame(state_rows + [sft_row, lora_row]).set_index(
    "model"
)
# model -> (validation consistency it was chosen on, seconds to build it);
# the controls were not chosen, so they have neither
chosen_on = {
    "unsteered": (base_val["consistency"], 0.0),
    "steering": (best.consistency, steering_seconds),
    "SFT": (sft_best["consistency"], sft_best["train_seconds"]),
    "LoRA": (lora_best["consistency"], lora_best["train_seconds"]),
}
fair_table[["validation_consistency", "seconds"]] = [
    chosen_on.get(m, (np.nan, np.nan)) for m in fair_table.index
]
short = {
    "test_subjects_consistency": "subj cons",
    "test_subjects_accuracy": "subj acc",
    "test_relations_consistency": "rel cons",
    "test_relations_accuracy": "rel acc",
    "known_rewrite": "known",
    "known_neighbourhood": "known nb",
    "perplexity": "ppl",
    "generation_agreement": "gen agree",
    "validation_consistency": "val cons",
}
show_table(
    fair_table.drop(columns="seconds").rename(columns=short),
    {c: 3 for c in short.values()} | {"ppl": 1},
    index=True,
)

# %%
# NBVAL_CHECK_OUTPUT
ft = fair_table
for name in ("SFT", "LoRA"):
    print(
        f"{name} raises consistency by more than 0.1 on both test sets:",
        all(
            ft.loc[name, f"{s}_consistency"]
            > ft.loc["unsteered", f"{s}_consistency"] + 0.1
            for s in held_out_splits
        ),
    )
print(
    "SFT keeps at least as many known facts as steering:",
    ft.loc["SFT", "known_rewrite"] >= ft.loc["steering", "known_rewrite"],
)

# %% [markdown]
# The table's consistency is ParaRel's macro average over relations. The confidence intervals
# below are per query instead: each query's pairwise consistency and accuracy under a model state
# minus the unsteered model's on the *same* query, and a bootstrap over queries of the mean
# difference (`editlens.stats.paired_table`, 2,000 resamples, seeded). An interval that contains
# 0 is no evidence of an effect.

# %%
ci_tables = []
for split in held_out_splits:
    per_query = pd.concat(
        [
            C.query_consistency(answer_frames[(split, name)]).assign(
                method=name
            )
            for name in ("unsteered", "steering", "SFT", "LoRA")
        ]
    )
    t = estats.paired_table(
        per_query,
        ["consistency", "accuracy"],
        fact="query_id",
        baseline="unsteered",
        seed=SEED,
    )
    ci_tables.append(t[t.method != "unsteered"].assign(split=split))
paired = pd.concat(ci_tables)


def with_interval(diff, low, high) -> str:
    return f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"


paired["vs unsteered [95% CI]"] = [
    with_interval(r["diff vs unsteered"], r["diff low"], r["diff high"])
    for _, r in paired.iterrows()
]
show_table(
    paired.pivot_table(
        index=["split", "method"],
        columns="metric",
        values="vs unsteered [95% CI]",
        aggfunc="first",
        sort=False,
    ).reset_index()
)

# %%
# NBVAL_CHECK_OUTPUT
cons = paired[paired.metric == "consistency"].set_index(["split", "method"])
print(
    "SFT and LoRA: consistency interval above 0 on both test sets:",
    all(
        cons.loc[(s, m), "diff low"] > 0
        for s in held_out_splits
        for m in ("SFT", "LoRA")
    ),
)
print(
    "steering: interval on held-out subjects includes 0:",
    cons.loc[("test_subjects", "steering"), "diff low"]
    < 0
    < cons.loc[("test_subjects", "steering"), "diff high"],
)

# %% [markdown]
# **Fine-tuning generalises; steering does not.** Both fine-tuned models, chosen on validation and
# tested once, raise consistency on both held-out sets with intervals far from 0 (SFT: held-out
# subjects +0.23 [+0.13, +0.32], held-out relations +0.25 [+0.20, +0.29]; LoRA: +0.24 [+0.13, +0.34]
# and +0.15 [+0.10, +0.20]). Accuracy rises with it on held-out relations (+0.17 and +0.09,
# intervals above 0); on the 36 held-out subjects the accuracy intervals include 0 (+0.08 [-0.04,
# +0.17] and +0.07 [-0.04, +0.17]). Uncentred steering is indistinguishable from nothing on both
# test sets: +0.03 [-0.03, +0.08] on held-out subjects and -0.02 [-0.06, +0.01] on held-out
# relations, where its accuracy interval only just includes 0 (-0.03 [-0.07, +0.01]). The side
# effects favour full fine-tuning: SFT keeps more known facts than steering (0.972 and 0.983
# against 0.927 and 0.965) and *lowers* perplexity on the reference sentences (33.3 against 41.9
# unsteered); its free-form answers agree less (0.654 against 0.692), LoRA's more (0.753). LoRA's
# side effects are mixed: it keeps more rewrite facts than steering (0.943) but fewer
# neighbourhood facts (0.940), and raises perplexity almost as much as steering (46.7 against
# 47.3). LoRA trains 0.55% of the parameters (737,280) at about 60% of the seconds per step (0.6 s
# against 1.0 s) and reached the highest validation consistency (0.835), at step 30, as SFT did;
# the selection rule for fine-tuning looks at consistency only, and LoRA's checkpoint had
# validation accuracy 0.600 (unsteered 0.686), although on both test sets its accuracy is above
# the unsteered model's (0.728 and 0.827 against 0.670 and 0.717). So on the same footing the
# comparison is not close where it matters, held-out consistency: the baseline the paper beats on
# cost gains 0.15-0.25, steering nothing.
#
# ## 11. The centred candidate and the other open variants, with their controls
#
# Section 6 chose K and $\alpha$ separately for the **per-query centred** directions. Here that
# configuration gets the test section 7 gave the uncentred one: both test sets, a random-head and
# a random-direction control over `N_CONTROL_SEEDS` seeds (for the centred directions the
# controls follow the centred recipe: random heads get centred directions, and every $\sigma$ is
# measured on centred activations), and then, for **both** chosen configurations, paired
# per-query bootstrap intervals (`fair.steered_vs_controls`, built on `editlens.stats.paired_table`
# as in section 10): steered minus unsteered, and steered minus each control (the control's seeds
# averaged per query). A configuration that helps should beat all three, on both test sets.

# %%
centre_by = train_answers["query_id"]
with timed("variants: centred directions"):
    controlled["centred"] = fair.controlled_evaluation(
        model,
        held_out_splits,
        fair.control_shifts(
            z_train,
            labels,
            ranking[:K_CENTRED],
            ALPHA_CENTRED,
            centre_by=centre_by,
            n_seeds=N_CONTROL_SEEDS,
            seed=SEED,
        ),
        position=POSITION,
        unsteered=unsteered_test,
    )
centred_summary = controlled["centred"].summary()
print(
    f"centred: K = {K_CENTRED}, alpha = {ALPHA_CENTRED:g}; "
    f"controls averaged over {N_CONTROL_SEEDS} seeds"
)
show_table(
    centred_summary.set_axis(
        [f"{s} {m[:4]}" for s, m in centred_summary.columns], axis=1
    ).rename_axis("model"),
    3,
    index=True,
)

# %% [markdown]
# The intervals, one row per (directions, test set, comparison):

# %%
intervals = pd.concat(
    [
        controlled[name].intervals(seed=SEED).assign(directions=name)
        for name in ("mass-mean", "centred")
    ],
    ignore_index=True,
)
intervals["steered minus [95% CI]"] = [
    with_interval(r["diff"], r["low"], r["high"])
    for _, r in intervals.iterrows()
]
show_table(
    intervals.pivot_table(
        index=["directions", "split", "against"],
        columns="metric",
        values="steered minus [95% CI]",
        aggfunc="first",
        sort=False,
    ).reset_index()
)

# %%
# NBVAL_CHECK_OUTPUT
ci = intervals[intervals.metric == "consistency"].set_index(
    ["directions", "split", "against"]
)


def includes_0(directions, split, against="unsteered") -> bool:
    row = ci.loc[(directions, split, against)]
    return bool(row["low"] < 0 < row["high"])


def above_0(directions, split, against="unsteered") -> bool:
    return bool(ci.loc[(directions, split, against), "low"] > 0)


controls = ("random heads", "random directions")
print(
    "uncentred, held-out subjects: interval vs unsteered includes 0:",
    includes_0("mass-mean", "test_subjects"),
)
print(
    "uncentred: above unsteered and both controls on a test set:",
    any(
        all(above_0("mass-mean", s, a) for a in ("unsteered", *controls))
        for s in held_out_splits
    ),
)
for s in held_out_splits:
    print(
        f"centred, {s}: above unsteered: {above_0('centred', s)}; "
        "above both controls:",
        all(above_0("centred", s, a) for a in controls),
    )

# %% [markdown]
# **The centred candidate holds up on both test sets; the uncentred one does not.** Chosen on
# validation at K = 32, $\alpha = 2$ (consistency 0.718 against 0.622 unsteered, accuracy 0.700),
# the per-query centred directions raise consistency to 0.757 on held-out subjects and 0.699 on
# held-out relations (unsteered 0.602 and 0.635), and accuracy to 0.720 and 0.777 (unsteered
# 0.670 and 0.717), while their controls stay near the unsteered model (random heads 0.624 and
# 0.635, random directions 0.612 and 0.626). Every paired consistency interval lies above 0: on
# held-out subjects +0.16 [+0.07, +0.26] against unsteered, +0.14 [+0.04, +0.25] against random
# heads, +0.16 [+0.06, +0.25] against random directions; on held-out relations +0.07 [+0.04,
# +0.11], +0.07 [+0.04, +0.11] and +0.08 [+0.04, +0.12]. On held-out subjects the macro gain
# (0.155, section 12's table) is even larger than on validation (0.096), so no winner's curse
# shows; on unseen relations it is smaller (0.063), with an interval that still starts at +0.04.
# For accuracy it is the other way round: the gain is clear on held-out relations, +0.06 [+0.03,
# +0.09] (and above both controls), but not on held-out subjects, +0.06 [-0.02, +0.13], whose
# interval includes 0. Since the controls stay close to the unsteered model, the consistency
# margins over them are about the same as the margin over the unsteered model.
#
# The uncentred directions, at their own choice (K = 32, $\alpha = 1$), beat nothing: no interval
# lies above 0, against the unsteered model (+0.03 [-0.03, +0.08] on held-out subjects, -0.02
# [-0.06, +0.01] on held-out relations) or against either control. Against random heads the
# difference is negative on both test sets (-0.01 [-0.06, +0.03] on held-out subjects, -0.03
# [-0.06, +0.01] on held-out relations), with intervals that include 0: the located heads do, if
# anything, worse than random ones. The centred result is one model, one training split and one
# head ranking, but it is the one form of steering in this chapter that passes every test the
# chapter sets, on both test sets.
#
# The two other open choices run at the uncentred K and $\alpha$, with the same controls on both
# test sets:
#
# - **probe-ranked heads**: heads ranked by the held-out accuracy of Chapter 1's pair probes
#   instead of attribution patching;
# - **last-token injection**: the shift added at the last prompt token only.

# %%
with timed("variants: probe ranking"):
    probe_ranked, _ = fair.probe_ranking(z_train, train_answers, seed=SEED)
variant_specs = {
    "probe-ranked heads": (probe_ranked[:K_BEST], POSITION),
    "last token": (ranking[:K_BEST], "last"),
}
with timed("variants: evaluation"):
    for variant, (heads, position) in variant_specs.items():
        controlled[variant] = fair.controlled_evaluation(
            model,
            held_out_splits,
            fair.control_shifts(
                z_train,
                labels,
                heads,
                ALPHA_BEST,
                n_seeds=N_CONTROL_SEEDS,
                seed=SEED,
            ),
            position=position,
            unsteered=unsteered_test,
            desc=variant,
        )
variants_table = pd.concat(
    {name: run.summary() for name, run in controlled.items()},
    names=["variant", "model"],
)
shared = len(set(probe_ranked[:K_BEST]) & set(ranking[:K_BEST]))
print(
    f"probe-ranked top {K_BEST} heads: {shared} among attribution "
    f"patching's top {K_BEST}"
)
show_table(
    variants_table.drop(index="unsteered", level="model")
    .set_axis([f"{s} {m[:4]}" for s, m in variants_table.columns], axis=1)
    .reset_index(),
    3,
)

# %%
# NBVAL_CHECK_OUTPUT
variant_ci = pd.concat(
    [
        controlled[v].intervals(seed=SEED).assign(variant=v)
        for v in variant_specs
    ]
)
vc = variant_ci[variant_ci.metric == "consistency"]
for v in variant_specs:
    print(
        f"{v}: above unsteered and both controls on a test set:",
        any(
            (vc[(vc.variant == v) & (vc.split == s)]["low"] > 0).all()
            for s in held_out_splits
        ),
    )

# %% [markdown]
# Neither of the other variants beats the unsteered model and both controls on a test set.
# Probe-ranked heads (only 5 of their top 32 are among attribution patching's top 32) come closest:
# 0.646 on held-out subjects (unsteered 0.602, their random heads 0.638, random directions 0.622)
# and 0.653 on held-out relations (unsteered 0.635, random heads 0.639, random directions 0.636).
# The point estimates are above all three on both test sets, but the margins over the controls are
# small, and on neither test set do all three paired intervals lie above 0. Last-token injection
# stays below the unsteered model on both test sets (0.591 and 0.629) and below both of its
# controls (random heads 0.630 and 0.643, random directions 0.617 and 0.639).
#
# ## 12. Why does it not generalise? A diagnosis
#
# Three explanations fit the held-out failure of the uncentred directions, and each predicts
# something different:
#
# 1. **Unstable directions**: the training data do not pin the directions down, so what is
#    fitted is noise. Then directions fitted on two halves of the training queries disagree
#    (cosine near the chance level $1/\sqrt{d_\text{head}}$).
# 2. **Collapse onto one answer**: the shift pushes every prompt toward one frequent candidate,
#    which raises agreement on some queries by accident and breaks it on others. Then the changed
#    answers go mostly to the relation's most frequent answer, not to each query's own majority.
# 3. **A query-specific signal that does not transfer**: the direction helps the relations it
#    was fitted on and hurts others. Then the effect differs in sign between relations.

# %%
stability = pd.concat(
    [
        fair.direction_stability(
            z_train,
            labels,
            train_answers["query_id"],
            heads=ranking[:k],
            centre=centre,
            seed=SEED,
        ).assign(directions=name)
        for name, k, centre in [
            ("mass-mean", K_BEST, False),
            ("centred", K_CENTRED, True),
        ]
    ]
)
chance = stability["chance"].iloc[0]
print(
    "cosine between directions fitted on two halves of the training\n"
    f"queries (each candidate's chosen heads; chance level {chance:.2f}):"
)
show_table(
    stability.groupby("directions", sort=False)["cosine"]
    .describe()[["count", "min", "25%", "50%", "75%", "max"]]
    .rename(columns={"count": "heads", "50%": "median"})
    .reset_index(),
    {"heads": 0, "min": 2, "25%": 2, "median": 2, "75%": 2, "max": 2},
)

# %%
# NBVAL_CHECK_OUTPUT
medians = stability.groupby("directions")["cosine"].median()
print(
    "median cosine above 0.4 for both candidates:",
    (medians > 0.4).all(),
)
print(
    "median cosine above 3x the chance level for both:",
    (medians > 3 * chance).all(),
)

# %% [markdown]
# The histogram: both candidates' split-half cosines sit far to the right of the chance band
# (dashed), the centred ones lower and wider, their lowest (-0.01) inside the band.

# %%
fig, ax = plt.subplots(figsize=(COLUMN_INCHES, 3.4))
sns.histplot(
    data=stability,
    x="cosine",
    hue="directions",
    bins=20,
    element="step",
    ax=ax,
)
ax.axvline(chance, color="grey", ls="--", lw=1)
ax.axvline(-chance, color="grey", ls="--", lw=1)
ax.set(
    title="Direction stability across two halves of the training set",
    xlabel="cosine (dashed: +-1 sd of two random directions)",
)
sns.move_legend(ax, "upper left", bbox_to_anchor=(0, 1), title=None)
plt.show()

# %%
for split in held_out_splits:
    answer_frames[(split, "centred")] = controlled["centred"].frames[split][
        "steered"
    ][0]
answer_frames[("validation", "centred")] = sweep_frames[
    ("centred", K_CENTRED, ALPHA_CENTRED)
]
shift_rows = []
for split in ("validation", *held_out_splits):
    for name in ("steering", "centred", "SFT", "LoRA"):
        if (split, name) not in answer_frames:
            continue  # fine-tuned states are tested, not validated, here
        moved = fair.answer_shift(
            answer_frames[(split, "unsteered")],
            answer_frames[(split, name)],
        )
        shift_rows.append(dict(split=split, model=name, **moved.summary))
shift_table = pd.DataFrame(shift_rows)
print(
    "changed answers and where they went (fractions of the changed);\n"
    "H: mean entropy (bits) of a query's answers over its templates"
)
show_table(
    shift_table[
        [
            "split",
            "model",
            "n_changed",
            "frac_to_majority",
            "frac_to_frequent",
            "frac_elsewhere",
            "entropy_before",
            "entropy_after",
        ]
    ].set_axis(
        [
            "split",
            "model",
            "changed",
            "majority",
            "frequent",
            "elsewhere",
            "H before",
            "H after",
        ],
        axis=1,
    ),
    2,
)

# %%
# NBVAL_CHECK_OUTPUT
st = shift_table.set_index(["split", "model"])
print(
    "SFT and LoRA send a larger share of changes to the majority than\n"
    "uncentred steering, on both test sets:",
    all(
        st.loc[(s, m), "frac_to_majority"]
        > st.loc[(s, "steering"), "frac_to_majority"]
        for s in held_out_splits
        for m in ("SFT", "LoRA")
    ),
)
print(
    "answer entropy falls under SFT and LoRA on both test sets:",
    all(
        st.loc[(s, m), "entropy_after"] < st.loc[(s, m), "entropy_before"]
        for s in held_out_splits
        for m in ("SFT", "LoRA")
    ),
)

# %%
per_relation = pd.concat(
    [
        fair.effect_per_relation(
            answer_frames[(split, "unsteered")],
            answer_frames[(split, name)],
        ).assign(split=split, directions=name)
        for split in ("validation", *held_out_splits)
        for name in ("steering", "centred")
    ]
)
by_relation = per_relation.pivot_table(
    index=["split", "relation_id", "n_queries"],
    columns="directions",
    values=["d_consistency", "d_accuracy"],
    sort=False,
)
by_relation.columns = [
    f"{'cons' if m == 'd_consistency' else 'acc'} {d}"
    for m, d in by_relation.columns
]
print("effect per relation (after minus before):")
show_table(by_relation.reset_index(), 3)

# %% [markdown]
# What the numbers support:
#
# 1. **Not unstable directions.** The mass-mean directions fitted on two disjoint halves of the
#    training queries agree closely (median cosine 0.75, interquartile range 0.67-0.80, against a
#    chance level of 0.12); the centred ones less (median 0.56, 0.44-0.73, with one head at
#    -0.01). The data pin the directions down; the question is what they point at.
# 2. **Not mainly collapse onto one answer, and no alignment.** Of the prompts whose answer the
#    uncentred steering changed, only 0.20-0.37 (as fractions of the changed) moved to their
#    query's majority answer, and at most 0.03 to the relation's most frequent answer, except on
#    held-out relations (0.18, close to the 0.20 that went to the majority there); most moved
#    *elsewhere* (0.60-0.77). On the test sets the answer entropy per query barely moves (0.80 to
#    0.77 bits on held-out subjects, 0.72 to 0.76 on held-out relations; on validation it fell,
#    0.75 to 0.65). Fine-tuning does what steering was meant to: 0.46-0.65 of its changes go to the
#    majority, and the entropy falls to 0.22-0.41 bits. The centred directions send as large a
#    share of their changes to the majority as fine-tuning (0.47 and 0.46), but change fewer
#    answers, and their entropy falls less (to 0.50 and 0.58).
# 3. **No relation-specific signal that transfers either.** The uncentred validation gain came
#    from five relations (athlete_sport +0.214, color +0.181, landmark_country +0.116, currency
#    +0.056, company_country +0.048) against a loss on profession (-0.214); on held-out subjects of
#    the *same* relations the two largest gains do not hold (athlete_sport +0.048, color -0.019),
#    currency turns slightly negative (-0.014), landmark_country (+0.071) keeps part of its gain and
#    company_country (+0.076) gains more than on validation; on unseen relations steering loses on
#    capital (-0.072), stays level on language (-0.006) and gains on product_maker (+0.048). With
#    5-8 queries per relation these are noisy, which is itself the point: the validation gain was a
#    few relations' luck. The centred directions gain on held-out subjects in the four relations
#    where they gained on validation (currency +0.408, athlete_sport +0.294, color +0.238,
#    landmark_country +0.111) and lose again on company_country (-0.124, against -0.048 on
#    validation), but the sizes move a lot: their largest held-out gain, currency, was nearly flat
#    on validation (+0.016), their largest validation gain, color (+0.514), halved. On unseen
#    relations they gain on language (+0.119), capital (+0.069) and, barely, product_maker
#    (+0.002).
#
# Together with section 11 this suggests one explanation: the uncentred direction is a stable
# feature of the training set, but it mostly encodes *which queries* the model answers
# consistently (a contrast between easy and hard subjects and relations), not *how* a prompt
# agrees with its paraphrases. Adding it moves every prompt toward "an easy query", which changes
# answers without aligning them. Centring per query removes that between-query component, and the
# centred direction is the one variant that beat the unsteered model and both controls on both
# test sets.
#
# ## 13. The speed claim examined
#
# Where could a 23x ratio come from? Steering's cost is scoring the training prompts (and reading
# their activations): it grows with the training set. Fine-tuning's cost is its optimisation
# steps: with a fixed number of steps it barely grows with the data (only the unedited model's
# answers, which both need for the majority targets, do). `fair.cost_by_train_size` measures the
# three methods on nested random subsets of the training queries (`COST_SIZES`), with
# `COST_STEPS` fine-tuning steps, each checkpoint chosen on validation. On all training queries
# the fine-tuning points are the first `COST_STEPS` steps of section 9's runs: training is seeded
# and deterministic, so a new run would repeat them step for step, and the function checks that
# their settings, targets and starting point are the curve's before it reuses them
# (`SFTResult.first_steps`).

# %%
with timed("cost: mass-mean directions"):
    steering.fit_directions(
        z_train, labels, heads=ranking[:K_BEST], method="mass_mean"
    )
fit_seconds = timings["cost: mass-mean directions"]
with timed("cost by training-set size"):
    cost_curve = fair.cost_by_train_size(
        model,
        splits["train"],
        splits["validation"],
        ranking[:K_BEST],
        sizes=COST_SIZES,
        alpha=ALPHA_BEST,
        sft_kwargs=dict(
            lr=SFT_LR, steps=COST_STEPS, eval_every=COST_EVAL_EVERY
        ),
        lora_kwargs=dict(
            lr=LORA_LR, steps=COST_STEPS, eval_every=COST_EVAL_EVERY
        ),
        lora_spec=sft.LoraSpec(r=LORA_R, seed=SEED),
        seed=SEED,
        base_consistency=base_val["consistency"],
        # all training queries: the first COST_STEPS steps of section 9's
        # runs, which are the same runs (checked), not trained again
        full_runs=(
            {"sft": sft_result, "lora": lora_result}
            if SFT_STEPS >= COST_STEPS and SFT_EVAL_EVERY == COST_EVAL_EVERY
            else None  # other settings: the curve trains its own runs
        ),
        # and steering on all of them is sections 2-6: its answers, their
        # cost, and the sweep's score of these heads at this alpha
        full_steering=dict(
            answers=train_answers,
            answers_seconds=train_seconds["answers"],
            seconds=train_seconds["answers"]
            + train_seconds["activations"]
            + fit_seconds,
            val_consistency=best.consistency,
        ),
    )

# %% [markdown]
# Left, what each method cost at each training-set size; right, the validation gain it bought.

# %%
fig, axes = plt.subplots(1, 2, figsize=(COLUMN_INCHES, 3.8))
for ax, y, label in [
    (axes[0], "seconds", "cost (s, one thread)"),
    (axes[1], "val_gain", "validation consistency gain"),
]:
    sns.lineplot(
        data=cost_curve,
        x="n_train",
        y=y,
        hue="method",
        marker="o",
        ax=ax,
        legend=ax is axes[0],
    )
    ax.set(xlabel="training queries", ylabel=label)
axes[0].set_title("Cost", fontsize=12)
axes[1].set_title("What the cost buys", fontsize=12)
handles, names = axes[0].get_legend_handles_labels()
axes[0].get_legend().remove()
fig.legend(handles, names, loc="outside lower center", ncol=3)
plt.show()

# %%
# wall-clock ratios vary from run to run: not a checked output
print(
    "cost / steering's cost at the same size "
    f"({COST_STEPS} fine-tuning steps):"
)
show_table(
    cost_curve.pivot(
        index="n_train", columns="method", values="ratio"
    ).reset_index(),
    {"lora": 1, "sft": 1, "steering": 1},
)

# %% [markdown]
# The ratio falls as the training set grows: with 25 training queries fine-tuning costs 7.7x
# (SFT) and 4.6x (LoRA) steering's time, with all 111 only 2.7x and 1.7x, because steering's cost
# is scoring its training prompts (linear in the data) while 20 fine-tuning steps cost the same
# whatever the data. A 23x ratio needs the opposite regime: few training prompts and many
# expensive optimisation steps, e.g. a 7B-13B model trained for several epochs with its optimizer
# state, where one step costs far more than a forward pass. That is a statement about the setting,
# not about steering; on this model and these data it does not arise, and where steering is
# cheapest (small training sets) it also has the least data to fit its directions.
#
# Where this run's time went, step by step (wall-clock and CPU seconds; the steps the chapter
# timed):

# %%
time_table = timings.table()
time_table.loc["whole chapter (wall)"] = [
    time.perf_counter() - notebook_start,
    float("nan"),
]
show_table(time_table.reset_index(), digits=1)

# %% [markdown]
# ### Exercises to explore (no automatic check)
#
# 1. Centre per *relation* instead of per query (`centre_by=train_answers["relation_id"]`): does
#    the direction keep its held-out gain when it may again encode which subject is easy?
# 2. Combine the variants: per-query centred directions on probe-ranked heads, last token.
# 3. Give LoRA the same wall-clock as full SFT (more steps): how far does it get?
# 4. Rerun with `DTYPE = "float32"` and compare the K and $\alpha$ chosen in section 6 and the
#    intervals of section 11: which conclusions move with the precision?
#
# ## Summary
#
# - A steering shift for head $(l, h)$ is $\alpha\,\sigma_{l,h}\,\theta_{l,h}$: a unit direction
#   (mass-mean of agreeing minus deviating prompts, or a probe's weight vector) scaled by the spread
#   of the activations along it.
# - Added to `hook_z` at every position it is exactly an output-projection bias
#   $b_O = \sum_h W_O[h]^\top s_h$ (max difference $5.1\times 10^{-5}$ here, in float32); baked in,
#   the model saves as an ordinary checkpoint and reloads to the same function, and removing it
#   restores the weights bit for bit.
# - Choose K and $\alpha$ on validation, report on held-out subjects and relations, with random-head
#   and random-direction controls: here the uncentred directions' validation gain (+0.067)
#   disappears on test (paired intervals +0.03 [-0.03, +0.08] and -0.02 [-0.06, +0.01]), and
#   random heads do better than the located heads on both test sets.
# - Side effects are measurable (known facts, perplexity, free-form answers): steering loses known
#   facts and raises perplexity; its free-form answers agree a little less than before (0.681
#   against 0.692).
# - Supervised fine-tuning on the same data gains more at about twice the cost (2.0x here), and on
#   the same footing (chosen on validation, tested once) full SFT and LoRA raise held-out
#   consistency by 0.15-0.25 on both test sets with intervals far from 0, where uncentred steering
#   gains nothing on either.
# - Per-query centred directions, chosen on validation like the uncentred ones, are the one form of
#   steering that beats the unsteered model and both controls on both test sets: consistency 0.757
#   on held-out subjects and 0.699 on held-out relations (unsteered 0.602 and 0.635, controls at
#   most 0.624 and 0.635), paired intervals +0.16 [+0.07, +0.26] and +0.07 [+0.04, +0.11] against
#   the unsteered model. Its accuracy gain is clear on held-out relations (+0.06 [+0.03, +0.09])
#   but not on held-out subjects (+0.06 [-0.02, +0.13]). Still well short of fine-tuning.
# - The diagnosis: the directions are stable (median cosine 0.75 between halves for the uncentred
#   ones, 0.56 for the centred), uncentred steering changes answers without aligning them (most
#   changes go elsewhere, entropy barely moves on the test sets), and its per-relation gains on
#   validation do not transfer. The uncentred direction seems to encode which queries are easy,
#   not agreement.
# - The cost ratio falls from 7.7x (SFT) and 4.6x (LoRA) to 2.7x and 1.7x as the training set grows
#   from 25 to 111 queries; a 23x ratio needs few training prompts and expensive optimisation
#   steps, which this setting is not.
#
# **Next:** Chapter 3 turns from making a model consistent about what it knows to changing what it
# knows.
