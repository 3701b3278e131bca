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
# - run the open variants (per-query centred directions, probe-ranked heads, last-token injection) against their controls,
# - diagnose a failure to generalise (direction stability, where the changed answers go, the effect per relation) and examine a speed claim as the training set grows.
# ```
#
# **Prerequisites.** Chapter 0 (hooks, `hook_z`, $W_O$) and Chapter 1 (pairwise consistency,
# attribution patching).
#
# **Time to run.** 29 minutes measured on one CPU thread of a 2-core machine whose other core
# ran the test suite for the first 22 of them (44 minutes, with the other core busy throughout,
# before the chapter stopped repeating work: section 2's training answers now give the
# fine-tuning targets, the unsteered validation scores are every fine-tuning run's step 0, and
# the cost curve reuses section 9's runs at the full training set; Hugging Face-size models need a
# GPU).
# Scoring answers dominates: every evaluation scores 7 paraphrases of each query against the
# relation's whole candidate list (each shared prompt prefix once, `editlens.scoring`), and the
# chapter runs about forty of them (the K x $\alpha$ sweep, the held-out tests with controls,
# fine-tuning checkpoints, the fair comparison's test sets, the variants and the cost curve). Lower
# `K_VALUES`, `ALPHAS`, `N_CONTROL_SEEDS`, `SFT_STEPS` or `COST_SIZES` for a quicker run; the
# variants of section 11 run small by default (`VARIANT_SPLITS`, `N_VARIANT_SEEDS` give the full
# version).
#
# Everything here is in `editlens.steering` (directions, injection, baking, side effects),
# `editlens.sft` (the fine-tuning baselines), `editlens.steering.fair` (the fair comparison, the
# variants, the diagnosis and the cost curve) and `editlens.consistency`.

# %% tags=["parameters"]
# Parameters (papermill: `-p NAME VALUE`)
# None = the embedded SmolLM2-135M-Instruct; or a Hugging Face name
MODEL_NAME = None
DEVICE = None  # None = GPU if available, else CPU
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
# random-head and random-direction controls, averaged over seeds
N_CONTROL_SEEDS = 2
# the validation rule: most consistent (K, alpha) whose accuracy drops by
# at most this
MAX_ACCURACY_DROP = 0.02
SFT_LR = 2e-5  # fine-tuning baseline: AdamW learning rate (full model)
SFT_STEPS = 50  # optimisation steps (batches of 16 prompts)
SFT_EVAL_EVERY = 10  # validation consistency every this many steps
LORA_R = 8  # LoRA baseline (peft): rank on q_proj, v_proj, o_proj
LORA_LR = 1e-3  # its learning rate (same steps and batches as SFT)
# the open variants (section 11), each with its controls: on these test
# splits with this many control seeds (full version: both test splits, 2)
VARIANT_SPLITS = ["test_subjects"]
N_VARIANT_SEEDS = 1
# the cost as the training set grows (section 13): training-set sizes,
# fine-tuning steps and validation checks per size (full: [25, 50, 111])
COST_SIZES = [25, 111]
COST_STEPS = 20
COST_EVAL_EVERY = 10

# %%
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from tqdm import tqdm

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
from editlens.exercises import assert_close, check_exercise
from editlens.paths import cache_dir
from editlens.plots import heatmap
from editlens.steering import fair, side_effects
from editlens.timing import Timings

editlens.seed_everything(SEED)
sns.set_theme(style="whitegrid", context="notebook")
pd.set_option("display.width", 120)
model, tokenizer = editlens.load_model(MODEL_NAME, device=DEVICE)
fingerprint = editlens.weights_fingerprint(model)
timings = Timings()  # step -> wall seconds; the cost comparison reads them
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
for name, qs in splits.items():
    relations = sorted({q.relation_id for q in qs})
    print(
        f"{name:>15}: {len(qs):3d} queries x 7 templates; "
        f"relations {relations}"
    )


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
with timed("steering: answers + activations (train)"):
    z_train, labels, train_answers = steering.collect_training_activations(
        model, splits["train"]
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
# Chapter 1 run used another split, so we recompute rather than load its file).

# %%
with timed("steering: head ranking (attribution patching)"):
    pairs = LZ.make_pairs(train_answers)
    patch_set = LZ.patch_set(pairs, max_pairs=N_ATTR_PAIRS, seed=SEED)
    attribution = LZ.attribution_patching(model, patch_set)
ranking = LZ.select_heads(
    attribution.effect, model.cfg.n_layers * model.cfg.n_heads
)
fig, ax = plt.subplots(figsize=(5.5, 6))
heatmap(
    attribution.normalised_effect,
    ax=ax,
    center=0,
    cbar_label="estimated fraction of the gap",
    title=f"Attribution patching, {attribution.n_pairs} training pairs",
    mark=ranking[: max(K_VALUES)],
)
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
print("top 16 heads:", " ".join(f"L{l}H{h}" for l, h in ranking[:16]))

# %%
chapter1_file = cache_dir() / "chapter1" / "heads_attribution.json"
if chapter1_file.exists():  # present once Chapter 1 has run on this machine
    chapter1_heads, _ = LZ.load_heads(
        chapter1_file, model_fingerprint=fingerprint
    )
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
with timed("steering: fit directions"):
    directions = {
        method: steering.fit_directions(
            z_train,
            labels,
            heads=ranking[: max(K_VALUES)],
            method=method,
            seed=SEED,
        )
        for method in ("mass_mean", "probe")
    }
top = ranking[: max(K_VALUES)]
direction_table = pd.DataFrame(
    [
        dict(
            head=f"L{l}H{h}",
            sigma_mass_mean=directions["mass_mean"].sigma[l, h].item(),
            sigma_probe=directions["probe"].sigma[l, h].item(),
            cos_mass_mean_probe=torch.dot(
                directions["mass_mean"].theta[l, h],
                directions["probe"].theta[l, h],
            ).item(),
        )
        for l, h in top
    ]
)
direction_table.head(8).round(3)

# %%
# NBVAL_CHECK_OUTPUT
cosines = direction_table.cos_mass_mean_probe
print(
    f"cosine(mass-mean, probe) over the top {len(top)} heads: "
    f"median {cosines.median():.2f}, "
    f"min {cosines.min():.2f}, max {cosines.max():.2f}"
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
# a standard checkpoint with `attention_bias=True`) reloads to the same function.

# %%
# NBVAL_CHECK_OUTPUT
demo_shifts = directions["mass_mean"].shift(ranking[:8], alpha=4.0)
tokens = model.to_tokens(
    ["The capital of France is", "Pelé played the sport of"],
    prepend_bos=True,
)
originals = {n: p.detach().clone() for n, p in model.named_parameters()}
with torch.no_grad():
    plain = model(tokens)
    with steering.steered(model, demo_shifts, position="all"):
        hooked = model(tokens)
    with steering.baked(model, demo_shifts):
        baked_logits = model(tokens)
    after = model(tokens)
print(
    f"steering moves the logits by up to {(hooked - plain).abs().max():.2f}"
)
# float noise, whose size depends on the CPU: checked as a claim
baked_gap = float((hooked - baked_logits).abs().max())
print(
    f"hook vs baked bias: max |difference| below 1e-3: {baked_gap < 1e-3} "
    f"(same function: {torch.allclose(hooked, baked_logits, atol=1e-4)})"
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
    reloaded, _ = editlens.load_model(folder, device=DEVICE)
    with torch.no_grad():
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
# ## 6. Choosing K and $\alpha$ on validation
#
# Each cell of the sweep steers the top-K heads of the ranking with mass-mean directions at
# strength $\alpha$ and scores every validation prompt. The rule, fixed before looking: the most
# consistent setting whose accuracy is at most `MAX_ACCURACY_DROP` below the unsteered model's.
# (Consistency alone can be bought by answering everything the same way; accuracy is the guard.)


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
sweep_rows = []
with timed("sweep (validation)"):
    for k in tqdm(K_VALUES, desc="K x alpha sweep"):
        for alpha in ALPHAS:
            s = evaluate(
                splits["validation"],
                directions["mass_mean"].shift(ranking[:k], alpha),
            )
            sweep_rows.append(
                dict(
                    K=k,
                    alpha=alpha,
                    consistency=s["consistency"],
                    accuracy=s["accuracy"],
                )
            )
sweep = pd.DataFrame(sweep_rows)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, metric in zip(axes, ["consistency", "accuracy"]):
    grid = (
        sweep.pivot(index="K", columns="alpha", values=metric)
        - base_val[metric]
    )
    sns.heatmap(
        grid,
        annot=True,
        fmt="+.3f",
        center=0,
        cmap="RdBu_r",
        ax=ax,
        cbar_kws={"label": f"change in {metric}"},
    )
    ax.set_title(
        f"Validation {metric}: steered minus unsteered "
        f"({base_val[metric]:.3f})"
    )
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
allowed = sweep[sweep.accuracy >= base_val["accuracy"] - MAX_ACCURACY_DROP]
best = allowed.sort_values(
    ["consistency", "K", "alpha"], ascending=[False, True, True]
).iloc[0]
K_BEST, ALPHA_BEST = int(best.K), float(best.alpha)
print(
    f"unsteered validation: consistency {base_val['consistency']:.3f}, "
    f"accuracy {base_val['accuracy']:.3f}"
)
print(
    f"chosen on validation: K = {K_BEST}, alpha = {ALPHA_BEST:g} -> "
    f"consistency {best.consistency:.3f}, accuracy {best.accuracy:.3f}"
)

# %% [markdown]
# At the chosen setting, the other choices the paper leaves open, still on validation: the probe
# direction instead of mass-mean, and the last prompt token instead of every position.

# %%
# NBVAL_CHECK_OUTPUT
variants = {
    "mass-mean, all positions": evaluate(
        splits["validation"],
        directions["mass_mean"].shift(ranking[:K_BEST], ALPHA_BEST),
        keep=("validation", "steering"),
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
for name, s in variants.items():
    print(
        f"{name:>26}: consistency {s['consistency']:.3f}, "
        f"accuracy {s['accuracy']:.3f}"
    )

# %% [markdown]
# ## 7. Held-out results, with controls
#
# Two controls at the chosen K and $\alpha$: **random heads** (K heads drawn outside the ranking's
# top K, each with its own mass-mean direction and $\sigma$) and **random directions** (the chosen
# heads, random unit directions, $\sigma$ measured along them), each averaged over
# `N_CONTROL_SEEDS` seeds. An effect that the controls reproduce is not about consistency heads.

# %%
chosen_shifts = directions["mass_mean"].shift(ranking[:K_BEST], ALPHA_BEST)
all_mass_mean = steering.fit_directions(
    z_train, labels, heads=None, method="mass_mean", seed=SEED
)
rows = []
with timed("held-out evaluation"):
    for split_name in ("test_subjects", "test_relations"):
        qs = splits[split_name]
        rows.append(
            dict(
                split=split_name,
                model="unsteered",
                **evaluate(qs, keep=(split_name, "unsteered")),
            )
        )
        rows.append(
            dict(
                split=split_name,
                model="steered",
                **evaluate(
                    qs, chosen_shifts, keep=(split_name, "steering")
                ),
            )
        )
        for seed in range(N_CONTROL_SEEDS):
            heads_r = steering.random_heads(
                model.cfg.n_layers,
                model.cfg.n_heads,
                K_BEST,
                exclude=ranking[:K_BEST],
                seed=seed,
            )
            rows.append(
                dict(
                    split=split_name,
                    model="random heads",
                    seed=seed,
                    **evaluate(
                        qs, all_mass_mean.shift(heads_r, ALPHA_BEST)
                    ),
                )
            )
            dirs_r = steering.random_directions(
                z_train, heads=ranking[:K_BEST], seed=seed
            )
            rows.append(
                dict(
                    split=split_name,
                    model="random directions",
                    seed=seed,
                    **evaluate(
                        qs, dirs_r.shift(ranking[:K_BEST], ALPHA_BEST)
                    ),
                )
            )
held_out = pd.DataFrame(rows)
headline = (
    held_out.groupby(["split", "model"], sort=False)[
        ["consistency", "accuracy"]
    ]
    .mean()
    .unstack("split")
    .swaplevel(axis=1)
    .sort_index(axis=1, level=0, sort_remaining=False)
)

# %%
# NBVAL_CHECK_OUTPUT
print(
    f"K = {K_BEST}, alpha = {ALPHA_BEST:g}, {POSITION} positions; "
    f"controls averaged over {N_CONTROL_SEEDS} seeds"
)
print(headline.round(3).to_string())

# %% [markdown]
# **What this shows: on SmolLM2-135M the effect does not survive held-out data.** On validation the
# chosen setting gained about 0.07 in consistency at unchanged accuracy. On both test sets it
# *loses* consistency, and on held-out relations it also loses a lot of accuracy; random heads at the
# same strength do no worse (better, on held-out subjects). The validation gain is the best of 16
# cells measured on 38 queries, and the best of many noisy numbers is biased upwards (the winner's
# curse): that is exactly why the choice is made on validation and reported on test. The probe
# direction gains nothing even on validation, and its direction is far from the mass-mean one
# (median cosine about 0.2 in section 4), which fits Chapter 1's finding that the probe signal at
# these heads is mostly about which relation and template a prompt uses, not about agreement.
#
# So we **do not reproduce** the paper's claim on this model. It was shown on 7B-13B models with
# their own data; a 135M model may simply not have heads that carry a transferable "agree with the
# other phrasings" signal. Readers with a GPU can rerun the chapter on a larger model
# (`MODEL_NAME`); the exercises below try other choices on this one.

# %% [markdown]
# ## 8. Side effects
#
# Steering is applied to every prompt, not only to questions about paraphrased facts. Three
# checks, all with the steering *baked* (Hugging Face `generate` does not run TransformerLens
# hooks, one more reason to have the bias form):
#
# - **known facts**: on the Chapter 3 facts set, does the true object still beat the counterfactual
#   one, on the rewrite prompts and the neighbourhood prompts (the unsteered model: 1.0 by
#   construction of the set)?
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

# %%
# NBVAL_CHECK_OUTPUT
print(
    f"{len(facts)} facts, {len(texts)} reference sentences, "
    f"{len(questions)} open-ended questions"
)
# perplexity to one decimal: its third decimal moves with the CPU
digits = {c: 3 for c in side.columns if c != "answers"} | {"perplexity": 1}
print(side.drop(columns="answers").round(digits).to_string())

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
# object, perplexity on the reference sentences rises, and the free-form answers agree *less* with
# each other (they become more varied, as the example shows), the opposite of the goal.
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
# of every layer, same data, same steps, same selection rule.


# %%
def validation_metrics(m) -> dict[str, float]:
    row = fair.evaluate_state(m, {"v": splits["validation"]})
    return {
        "consistency": row["v_consistency"],
        "accuracy": row["v_accuracy"],
    }


held_out_splits = {
    k: splits[k] for k in ("test_subjects", "test_relations")
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
fig, ax = plt.subplots(figsize=(7, 3.5))
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
    label="steering (validation consistency)",
)
ax.set(
    xlabel="fine-tuning time (s, optimisation only)",
    ylabel="validation",
    title="SFT baseline",
)
ax.legend()
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
sft_best = sft_result.best("consistency")
sft_gain = sft_best["consistency"] - base_val["consistency"]
steering_gain = best.consistency - base_val["consistency"]
print(
    "SFT: best validation consistency "
    f"{sft_best['consistency']:.3f} (gain {sft_gain:+.3f}, "
    f"accuracy {sft_best['accuracy']:.3f}) at step {sft_best['step']}"
)
print(
    f"steering: validation consistency {best.consistency:.3f} "
    f"(gain {steering_gain:+.3f}, accuracy {best.accuracy:.3f})"
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
print(cost.round(1).to_string())
print(
    f"SFT / steering wall-clock: {sft_seconds / steering_seconds:.1f}x "
    f"on {torch.get_num_threads()} CPU thread(s) "
    "(the paper reports up to 23x)"
)

# %% [markdown]
# Fine-tuning on the same 111 training queries raises validation consistency about three times as
# much as steering did, without losing accuracy, and was still improving at the last step. On this
# machine and model it costs a few times steering's wall-clock (the ratio printed above: 2.4x in
# the stored run, 3.5x in an earlier run on a more loaded machine), not 23 times: steering's own cost
# is dominated by scoring the training prompts, which a 135M model makes as expensive as a few
# dozen optimisation steps. `benchmarks/bench_steering.py` measures the same two costs in one run
# outside the notebook. Section 13 follows the two costs as the training set grows.
#
# The LoRA baseline trains adapters of rank `LORA_R` on the query, value and output projections
# of every layer; only the adapters receive gradients, and they are removed again on exit.

# %%
with timed("lora"):
    lora_result, lora_row = fine_tune(
        "LoRA", lr=LORA_LR, lora=sft.LoraSpec(r=LORA_R, seed=SEED)
    )

# %%
# NBVAL_CHECK_OUTPUT
lora_best = lora_result.best("consistency")
print(
    f"LoRA (r = {LORA_R}): {lora_result.n_trainable:,} trainable "
    f"parameters, {lora_result.seconds_per_step:.1f} s per step "
    f"(full SFT: {sft_result.seconds_per_step:.1f} s)"
)
print(
    "LoRA: best validation consistency "
    f"{lora_best['consistency']:.3f} "
    f"(gain {lora_best['consistency'] - base_val['consistency']:+.3f}, "
    f"accuracy {lora_best['accuracy']:.3f}) at step {lora_best['step']}"
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
held_out_mean = held_out.groupby(["split", "model"], sort=False)[
    ["consistency", "accuracy"]
].mean()
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
            value = held_out_mean.loc[(split, source), metric]
            row[f"{split}_{metric}"] = value
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

# %%
# NBVAL_CHECK_OUTPUT
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
digits = {c: 3 for c in short.values()} | {"ppl": 1}
print(
    fair_table.drop(columns="seconds")
    .rename(columns=short)
    .round(digits)
    .to_string()
)

# %% [markdown]
# The table's consistency is ParaRel's macro average over relations. The confidence intervals
# below are per query instead: each query's pairwise consistency and accuracy under a model state
# minus the unsteered model's on the *same* query, and a bootstrap over queries of the mean
# difference (`editlens.stats.paired_table`, 2,000 resamples, seeded). An interval that contains
# 0 is no evidence of an effect.

# %%
# NBVAL_CHECK_OUTPUT
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
paired["vs unsteered [95% CI]"] = [
    f"{r['diff vs unsteered']:+.2f} [{r['diff low']:+.2f}, "
    f"{r['diff high']:+.2f}]"
    for _, r in paired.iterrows()
]
print(
    paired.pivot_table(
        index=["split", "method"],
        columns="metric",
        values="vs unsteered [95% CI]",
        aggfunc="first",
        sort=False,
    ).to_string()
)

# %% [markdown]
# **Fine-tuning generalises; steering does not.** Both fine-tuned models, chosen on validation and
# tested once, raise consistency on both held-out sets by about 0.2, with intervals far from 0
# (SFT: held-out subjects +0.20 [+0.10, +0.29], held-out relations +0.24 [+0.20, +0.28]; LoRA +0.22
# and +0.20), and accuracy rises with it (held-out relations +0.17 and +0.13). Steering is
# indistinguishable from nothing on held-out subjects (-0.01 [-0.07, +0.06]) and clearly harmful
# on held-out relations (-0.13 consistency, -0.15 accuracy). The side effects also favour
# fine-tuning: SFT keeps more known facts than steering (0.972 and 0.979 against 0.921 and 0.955)
# and *lowers* perplexity on the reference sentences (34.1 against 40.5 unsteered); its free-form
# answers agree less (0.629 against 0.702), which LoRA does not show (0.764). LoRA trains 0.55% of
# the parameters (737,280) at half the seconds per step and reached the highest validation
# consistency (0.872); both fine-tuned models were still improving at their last step. So on the
# same footing the comparison is not close: the baseline the paper beats on cost wins on quality
# everywhere we can measure it.
#
# ## 11. The open variants, with their controls
#
# Three choices the paper leaves open, each at the K and $\alpha$ chosen in section 6 and each with
# its own random-head and random-direction controls (`fair.control_shifts`, `N_VARIANT_SEEDS`
# seeds), on `VARIANT_SPLITS` (the test subjects by default; add `"test_relations"` for the full
# version):
#
# - **per-query centred directions**: each prompt's activation minus its query's mean over the
#   seven templates before the mass-mean difference, so the direction cannot encode *which* query
#   (subject, relation) a prompt is about, only how it deviates from its paraphrases;
# - **probe-ranked heads**: heads ranked by the held-out accuracy of Chapter 1's pair probes
#   instead of attribution patching;
# - **last-token injection**: the shift added at the last prompt token only.

# %%
with timed("variants: probe ranking"):
    probe_ranked, _ = fair.probe_ranking(z_train, train_answers, seed=SEED)
variant_specs = {
    "per-query centred": dict(
        heads=ranking[:K_BEST],
        centre_by=train_answers["query_id"],
        position=POSITION,
    ),
    "probe-ranked heads": dict(
        heads=probe_ranked[:K_BEST], centre_by=None, position=POSITION
    ),
    "last token": dict(
        heads=ranking[:K_BEST], centre_by=None, position="last"
    ),
}
variant_rows = []
with timed("variants: evaluation"):
    for variant, spec in tqdm(variant_specs.items(), desc="variants"):
        shift_sets = fair.control_shifts(
            z_train,
            labels,
            spec["heads"],
            ALPHA_BEST,
            centre_by=spec["centre_by"],
            n_seeds=N_VARIANT_SEEDS,
            seed=SEED,
        )
        for kind, seed, shifts in shift_sets:
            for split in VARIANT_SPLITS:
                s = evaluate(splits[split], shifts, spec["position"])
                variant_rows.append(
                    dict(
                        variant=variant,
                        kind=kind,
                        seed=seed,
                        split=split,
                        **s,
                    )
                )
variants_table = (
    pd.DataFrame(variant_rows)
    .groupby(["variant", "kind", "split"], sort=False)[
        ["consistency", "accuracy"]
    ]
    .mean()
    .unstack("split")
)

# %%
# NBVAL_CHECK_OUTPUT
print(
    "probe-ranked top heads vs attribution top heads: "
    f"{len(set(probe_ranked[:K_BEST]) & set(ranking[:K_BEST]))} "
    f"of {K_BEST} shared"
)
reference = held_out_mean.loc[VARIANT_SPLITS[0]]
print(
    f"unsteered on {VARIANT_SPLITS[0]}: consistency "
    f"{reference.loc['unsteered', 'consistency']:.3f}, accuracy "
    f"{reference.loc['unsteered', 'accuracy']:.3f}; chosen steering: "
    f"{reference.loc['steered', 'consistency']:.3f}, "
    f"{reference.loc['steered', 'accuracy']:.3f}"
)
print(variants_table.round(3).to_string())

# %% [markdown]
# Of the three variants, **per-query centring is the only one that beats its controls**: on the
# held-out subjects it raises consistency from 0.627 to 0.729 and accuracy from 0.679 to 0.755,
# while its random-head and random-direction controls stay at 0.647 and 0.619. Probe-ranked heads
# (only 19 of their top 64 are among attribution patching's) do worse than unsteered (0.593), and
# last-token injection does no better than its controls (0.614). Treat the centred result as a
# lead, not a finding: it is one test split, one control seed, no confidence interval, and K and
# $\alpha$ were chosen for the uncentred directions. The full version of this section
# (`VARIANT_SPLITS = ["test_subjects", "test_relations"]`, `N_VARIANT_SEEDS = 2`) is the first
# check to run (the first exercise to explore below).
#
# We ran it (this chapter with those two parameters, same machine). The centred variant holds on
# **both** test sets: consistency 0.729 on held-out subjects and 0.729 on held-out relations
# (unsteered 0.627 and 0.634), accuracy 0.755 and 0.778 (unsteered 0.679 and 0.716), while its
# controls, now averaged over two seeds, stay at 0.641 and 0.593 (random heads) and 0.621 and 0.612
# (random directions). The other two variants stay at or below their controls on both sets. It is
# still a macro average without a per-query interval, with K and $\alpha$ chosen for the uncentred
# directions, so it remains a lead; but it is the one form of steering on this model that
# transfers to relations it was not fitted on.
#
# ## 12. Why does it not generalise? A diagnosis
#
# Three explanations fit the held-out failure, and each predicts something different:
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
# NBVAL_CHECK_OUTPUT
stability = pd.concat(
    [
        fair.direction_stability(
            z_train,
            labels,
            train_answers["query_id"],
            heads=ranking[:K_BEST],
            centre=centre,
            seed=SEED,
        ).assign(directions="centred" if centre else "mass-mean")
        for centre in (False, True)
    ]
)
chance = stability["chance"].iloc[0]
print(
    f"cosine between directions fitted on two halves of the training "
    f"queries ({K_BEST} chosen heads; chance level {chance:.2f}):"
)
print(
    stability.groupby("directions")["cosine"]
    .describe()[["min", "25%", "50%", "75%", "max"]]
    .round(2)
    .to_string()
)

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
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
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
shift_rows = []
for split in ("validation", *held_out_splits):
    for name in ("steering", "SFT", "LoRA"):
        if (split, name) not in answer_frames:
            continue  # fine-tuned states are tested, not validated, here
        moved = fair.answer_shift(
            answer_frames[(split, "unsteered")],
            answer_frames[(split, name)],
        )
        shift_rows.append(dict(split=split, model=name, **moved.summary))
shift_table = pd.DataFrame(shift_rows).set_index(["split", "model"])
print(
    "changed answers and where they went (fractions of the changed);\n"
    "H: mean entropy (bits) of a query's answers over its templates"
)
print(
    shift_table[
        [
            "n_changed",
            "frac_to_majority",
            "frac_to_frequent",
            "frac_elsewhere",
            "entropy_before",
            "entropy_after",
        ]
    ]
    .set_axis(
        [
            "changed",
            "majority",
            "frequent",
            "elsewhere",
            "H before",
            "H after",
        ],
        axis=1,
    )
    .round(2)
    .to_string()
)

# %%
# NBVAL_CHECK_OUTPUT
per_relation = pd.concat(
    [
        fair.effect_per_relation(
            answer_frames[(split, "unsteered")],
            answer_frames[(split, "steering")],
        ).assign(split=split)
        for split in ("validation", *held_out_splits)
    ]
)
print("steering's effect per relation (after minus before):")
print(
    per_relation.set_index(["split", "relation_id"])[
        ["n_queries", "d_consistency", "d_accuracy"]
    ]
    .round(3)
    .to_string()
)

# %% [markdown]
# What the numbers support:
#
# 1. **Not unstable directions.** The mass-mean directions fitted on two disjoint halves of the
#    training queries agree closely (median cosine 0.74, interquartile range 0.66-0.83, against a
#    chance level of 0.12); the centred ones a little less (median 0.63). The data pin the
#    directions down; the question is what they point at.
# 2. **Not collapse onto one answer, but scatter.** Of the prompts whose answer steering changed,
#    only 14-29% moved to their query's majority answer and at most 23% (held-out relations) to the
#    relation's most frequent answer; most moved *elsewhere* (63-82%). On held-out relations the
#    answer entropy per query rises from 0.73 to 0.98 bits: the answers spread out. Fine-tuning
#    does the opposite: 42-63% of its changes go to the majority, and the entropy falls to
#    0.24-0.34 bits.
# 3. **No relation-specific signal that transfers either.** The validation gain came from four
#    relations (color +0.22, currency +0.23, company_country +0.11, landmark_country +0.12) against a
#    loss on profession (-0.23); on held-out subjects of the *same* relations the signs do not hold
#    (color -0.13, currency -0.01, landmark_country +0.12), and on unseen relations steering loses
#    on language (-0.24) and capital (-0.09). With 5-8 queries per relation these are noisy, which
#    is itself the point: the validation gain was a few relations' luck.
#
# Together with section 11 this suggests one explanation: the uncentred direction is a stable
# feature of the training set, but it mostly encodes *which queries* the model answers
# consistently (a contrast between easy and hard subjects and relations), not *how* a prompt
# agrees with its paraphrases. Adding it moves every prompt toward "an easy query", which
# scatters answers rather than aligning them. Centring per query removes that between-query
# component, and the centred direction is the one variant that helped on held-out subjects.
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
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for ax, y, label in [
    (axes[0], "seconds", "cost (s, one thread)"),
    (axes[1], "val_gain", "validation consistency gain"),
]:
    sns.lineplot(
        data=cost_curve, x="n_train", y=y, hue="method", marker="o", ax=ax
    )
    ax.set(xlabel="training queries", ylabel=label)
axes[0].set_title("Cost as the training set grows")
axes[1].set_title("What the cost buys")
plt.tight_layout()
plt.show()

# %%
# wall-clock ratios vary from run to run: not a checked output
print(
    cost_curve.pivot(index="n_train", columns="method", values="ratio")
    .round(1)
    .to_string()
)
print(
    "(cost / steering's cost at the same size; "
    f"{COST_STEPS} fine-tuning steps)"
)

# %% [markdown]
# The ratio falls as the training set grows: with 25 training queries fine-tuning costs 3.0x
# (SFT) and 3.3x (LoRA) steering's time, with all 111 only 1.5x and 1.4x, because steering's cost
# is scoring its training prompts (linear in the data) while 20 fine-tuning steps cost the same
# whatever the data. A 23x ratio needs the opposite regime: few training prompts and many
# expensive optimisation steps, e.g. a 7B-13B model trained for several epochs with its optimizer
# state, where one step costs far more than a forward pass. That is a statement about the setting,
# not about steering; on this model and these data it does not arise, and where steering is
# cheapest (small training sets) it also has the least data to fit its directions.
#
# ### Exercises to explore (no automatic check)
#
# 1. Run section 11 in its full version (`VARIANT_SPLITS = ["test_subjects", "test_relations"]`,
#    `N_VARIANT_SEEDS = 2`) and check whether any variant's held-out gain leaves its controls'
#    range.
# 2. Combine the variants: per-query centred directions on probe-ranked heads, last token.
# 3. Give LoRA the same wall-clock as full SFT (more steps): how far does it get?
#
# ## Summary
#
# - A steering shift for head $(l, h)$ is $\alpha\,\sigma_{l,h}\,\theta_{l,h}$: a unit direction
#   (mass-mean of agreeing minus deviating prompts, or a probe's weight vector) scaled by the spread
#   of the activations along it.
# - Added to `hook_z` at every position it is exactly an output-projection bias
#   $b_O = \sum_h W_O[h]^\top s_h$ (max difference $4\times 10^{-5}$ here); baked in, the model saves
#   as an ordinary checkpoint and reloads to the same function, and removing it restores the weights
#   bit for bit.
# - Choose K and $\alpha$ on validation, report on held-out subjects and relations, with random-head
#   and random-direction controls: here the validation gain disappears on test, and the controls do
#   as well as the located heads.
# - Side effects are measurable (known facts, perplexity, free-form answers) and here all worsen.
# - Supervised fine-tuning on the same data gains more at a few times the cost (2.4x here), and on
#   the same footing (chosen on validation, tested once) full SFT and LoRA raise held-out
#   consistency by about 0.2 on both test sets with intervals far from 0, where steering gains
#   nothing on held-out subjects and loses on held-out relations.
# - Per-query centred directions are the one variant that beat their controls, and in the full
#   version of section 11 on both test sets (consistency 0.729 on each, against 0.627 and 0.634
#   unsteered and at most 0.641 for the controls): a lead that needs per-query intervals and its
#   own choice of K and $\alpha$.
# - The diagnosis: the directions are stable (median cosine 0.74 between halves), steering scatters
#   answers instead of aligning them (entropy up on unseen relations), and the per-relation gains
#   on validation do not transfer. The uncentred direction seems to encode which queries are easy,
#   not agreement.
# - The cost ratio falls from about 3x to 1.5x as the training set grows from 25 to 111 queries;
#   a 23x ratio needs few training prompts and expensive optimisation steps, which this setting is
#   not.
#
# **Next:** Chapter 3 turns from making a model consistent about what it knows to changing what it
# knows.
