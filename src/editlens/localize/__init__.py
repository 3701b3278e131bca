"""Locating the heads that decide consistency (arXiv 2501.11041, first half).

Taught in: Chapter 1. Pipeline::

    answers = consistency.model_answers(model, load_paraphrases("train"))
    pairs = make_pairs(answers)                                   # (p, q, c)
    prompts = unique_prompts(pairs.prompt_p, pairs.prompt_q)
    z = last_token_z(model, prompts)                              # [prompt, layer, head, d_head]
    probe = probe_heads(z, pairs, prompt_index(prompts))         # (a) held-out accuracy per head
    ps = patch_set(pairs)                                         # inconsistent pairs, source -> target
    act = activation_patching(model, ps)                          # (b) one forward per head
    attr = attribution_patching(model, ps)                        # (c) one forward + backward
    compare_maps({"probe": probe.accuracy, "patching": act.effect, "attribution": attr.effect})
    save_heads("heads.json", select_heads(probe.accuracy, 16), ...)
"""

from editlens.localize.activations import gqa_groups, kv_group, last_token_z, prompt_index, unique_prompts, z_hook_name
from editlens.localize.compare import (chance_overlap, compare_maps, load_heads, rank_correlation, save_heads, saved_heads,
                                       select_heads, topk_overlap)
from editlens.localize.pairs import balanced_subsample, class_balance, make_pairs, subject_split
from editlens.localize.patching import (PatchingResult, PatchSet, activation_patching, attribution_patching,
                                        patch_set)
from editlens.localize.probes import FEATURES, ProbeResult, metadata_baseline, pair_features, probe_heads

__all__ = [
    "FEATURES", "PatchSet", "PatchingResult", "ProbeResult", "activation_patching", "attribution_patching",
    "balanced_subsample", "chance_overlap", "class_balance", "compare_maps", "gqa_groups", "kv_group",
    "last_token_z", "load_heads", "make_pairs", "metadata_baseline", "pair_features", "patch_set", "probe_heads", "prompt_index",
    "rank_correlation", "save_heads", "saved_heads", "select_heads", "subject_split", "topk_overlap", "unique_prompts",
    "z_hook_name",
]
