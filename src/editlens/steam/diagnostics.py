"""Where does an edited fact live? Layer-wise cosines to anchors, the logit lens, a 2-D latent map.

Taught in: Chapter 4 (STEAM). The paper's diagnostics, on the model as it is (edited or not):

- :func:`cosine_profile`: per layer, cosine between a run's residual stream at the last prompt token and
  (a) the anchors of the new object, (b) "organic" states (the unedited model on prompts it already answers
  with that object; by default the anchors' own prompts), (c) a control: other objects' anchors.
- :func:`first_readable_layer`: the first layer at which the logit lens ranks the object in the top k
  (:func:`editlens.lens.logit_lens_table`); a ROME "shortcut" makes it readable right after the edit layer.
- :func:`pca_projection`: 2-D PCA of states of several groups at one layer, a tidy DataFrame for seaborn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from editlens.lens import logit_lens_table
from editlens.scoring import (
    encode_answer,
    encode_prompt,
    model_device,
    with_leading_space,
)
from editlens.steam.alignment import aligned_cosine
from editlens.steam.anchors import AnchorSet, SharedComponents
from editlens.steam.states import last_token_states

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def _cos_by_layer(states: Float[Tensor, "prompt layer d_model"], ref: Float[Tensor, "layer d_model"],
                  mu: Float[Tensor, "layer d_model"] | None = None) -> Float[Tensor, "prompt layer"]:
    return aligned_cosine(states.transpose(0, 1), ref, mu).transpose(0, 1)


def cosine_profile(model: TransformerBridge, prompts: Sequence[str], anchors: AnchorSet, *,
                   organic: Float[Tensor, "prompt layer d_model"] | None = None,
                   controls: Sequence[AnchorSet] = (), label: str = "run",
                   states: Float[Tensor, "prompt layer d_model"] | None = None,
                   centre: SharedComponents | None = None, relation: str = "") -> pd.DataFrame:
    """Tidy rows ``(label, layer, reference, prompt, cosine)``: the model's last-token state on ``prompts`` (as the
    model is now, e.g. inside :func:`editlens.rome.applied_edit`) against, per layer,

    - ``"anchors"``: the new object's anchors phi^l;
    - ``"organic"``: the mean of ``organic`` states (unedited states on prompts the model already answers with the
      object, computed before the edit; default: the anchor prompts' own states ``anchors.states``);
    - ``"control"``: the mean over ``controls`` (other objects' anchors) of the cosine to each.

    Layers are the anchors' layers. ``states``: the prompts' :func:`last_token_states` at EVERY layer, when the
    caller has them already (one forward pass for this and :func:`first_readable_layer`). ``centre``: the
    :class:`~editlens.steam.anchors.SharedComponents` to centre with, as the centred alignment term measures
    (:func:`~editlens.steam.alignment.aligned_cosine`): the states on ``relation``'s mean, the anchors and
    controls prompt by prompt on their own relations' means, the organic states on ``relation``'s mean."""
    states = last_token_states(model, prompts, anchors.layers) if states is None else states[:, anchors.layers]
    organic_states = anchors.states if organic is None else organic
    layers = anchors.layers
    if centre is None:
        mu, ref = None, (lambda a: a.at(layers))
    else:
        mu, ref = centre.of(relation, layers), (lambda a: centre.centred_anchor(a, layers))
    organic_mean = organic_states.mean(0) if mu is None else organic_states.mean(0) - mu
    refs: dict[str, Tensor] = {"anchors": _cos_by_layer(states, ref(anchors), mu),
                               "organic": _cos_by_layer(states, organic_mean, mu)}
    if controls:
        refs["control"] = torch.stack([_cos_by_layer(states, ref(c), mu) for c in controls]).mean(0)
    rows = []
    for reference, cos in refs.items():
        for i, p in enumerate(prompts):
            for j, layer in enumerate(anchors.layers):
                rows.append({"label": label, "layer": layer, "reference": reference, "prompt": p,
                             "cosine": float(cos[i, j])})
    return pd.DataFrame(rows)


@torch.no_grad()
def logit_lens_ranks(model: TransformerBridge, prompt: str, answer: str, top_k: int = 10) -> pd.DataFrame:
    """:func:`editlens.lens.logit_lens_table` of ``prompt`` for the first token of ``" " + answer``."""
    tokens = torch.tensor([encode_prompt(model, prompt)], device=model_device(model))
    names = {"blocks.0.hook_resid_pre", *(f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers))}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return logit_lens_table(model, cache, with_leading_space(answer), position=-1, top_k=min(top_k, 5))


def first_readable_layer(model: TransformerBridge, prompt: str, answer: str, top_k: int = 10, *,
                         states: Float[Tensor, "layer d_model"] | None = None) -> int | None:
    """The first block (0-based) after which the logit lens ranks ``answer``'s first token among the top ``top_k``
    at the last prompt token; None if it never does. ``states``: the prompt's last-token residual stream after every
    block (a row of :func:`~editlens.steam.states.last_token_states`), when the caller has it already."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}. Fix: pass e.g. top_k=10.")
    if states is not None:
        if states.shape[0] != model.cfg.n_layers:
            raise ValueError(f"states has {states.shape[0]} layers, the model {model.cfg.n_layers}. Fix: pass the "
                             "prompt's last_token_states at every layer (layers=None).")
        answer_id = encode_answer(model, answer)[0]
        with torch.no_grad():
            logits = model.unembed(model.ln_final(states[:, None].to(model_device(model))))[:, 0].float()
        ranks = (logits > logits[:, answer_id:answer_id + 1]).sum(-1)  # log-softmax keeps the order
        hits = (ranks < top_k).nonzero()
        return None if hits.numel() == 0 else int(hits[0, 0])
    table = logit_lens_ranks(model, prompt, answer, top_k)
    hits = table[(table["layer"] != "embed") & (table["rank_answer"] < top_k)]
    return None if hits.empty else int(hits["layer"].iloc[0])


def pca_projection(groups: Mapping[str, Float[Tensor, "n d_model"]], *, labels: Mapping[str, Sequence[str]] | None = None,
                   fit_on: Sequence[str] | None = None) -> pd.DataFrame:
    """2-D PCA of the vectors of several groups (e.g. ``{"anchors: Berlin": ..., "ROME": ..., "STEAM": ...}``, one
    layer each): tidy rows ``(group, label, pc1, pc2)`` for ``seaborn.scatterplot(x="pc1", y="pc2", hue="group")``.

    The axes are fitted on the groups named in ``fit_on`` (default: all), centred on their mean; the explained
    variance ratios are in ``df.attrs["explained_variance"]``."""
    if not groups:
        raise ValueError("No groups to project. Fix: pass {name: tensor [n, d_model]}.")
    names = list(groups)
    fit = list(fit_on) if fit_on is not None else names
    unknown = [g for g in fit if g not in groups]
    if unknown:
        raise ValueError(f"fit_on names {unknown}, which are not among the groups {names}. Fix: use group names.")
    mats = {g: torch.as_tensor(groups[g]).float().reshape(-1, torch.as_tensor(groups[g]).shape[-1]) for g in names}
    X = torch.cat([mats[g] for g in fit])
    if X.shape[0] < 2:
        raise ValueError("PCA needs at least two vectors to fit on. Fix: pass more prompts or groups.")
    mu = X.mean(0)
    _, S, Vh = torch.linalg.svd(X - mu, full_matrices=False)
    axes = Vh[:2]
    var = (S ** 2) / (S ** 2).sum()
    rows = []
    for g in names:
        proj = (mats[g] - mu) @ axes.T
        labs = list(labels[g]) if labels and g in labels else [str(i) for i in range(proj.shape[0])]
        for lab, (x, y) in zip(labs, proj.tolist()):
            rows.append({"group": g, "label": lab, "pc1": x, "pc2": y})
    df = pd.DataFrame(rows)
    df.attrs["explained_variance"] = [float(v) for v in var[:2]]
    return df
