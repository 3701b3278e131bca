"""editlens.data: the book's datasets and their loaders.

Used in: Chapter 2 (consistency: paraphrases, ParaRel, open-ended questions), 3 (ROME),
4 (STEAM), 5 (SADR) (CounterFact-style facts).

- :func:`load_facts`: the verified CounterFact-style fact set (``facts.json``), ROME's official
  ``counterfact.json`` or SADR's ``merged_counterfact.json``, as typed records.
- :func:`load_object_descriptions`: reference sentences about every edit target.
- ``python -m editlens.data.verify``: re-checks ``facts.json`` against the embedded model.
- :func:`load_paraphrases`, :func:`load_openended`, :func:`load_pararel`: the consistency data.
"""

from editlens.data.counterfact import (
    FACTS_PATH,
    MODEL_FACTS,
    facts_path,
    OBJECT_DESCRIPTIONS_PATH,
    CounterFactRecord,
    PortabilityPrompt,
    RelationPrompt,
    RequestedRewrite,
    Target,
    check_dataset,
    load_facts,
    load_object_descriptions,
    parse_records,
    round_robin,
    save_facts,
    spread_over_relations,
)
from editlens.data.openended import load_openended
from editlens.data.paraphrases import load_paraphrases
from editlens.data.pararel import load_pararel

__all__ = [
    "FACTS_PATH",
    "MODEL_FACTS",
    "facts_path",
    "OBJECT_DESCRIPTIONS_PATH",
    "CounterFactRecord",
    "PortabilityPrompt",
    "RelationPrompt",
    "RequestedRewrite",
    "Target",
    "check_dataset",
    "load_facts",
    "load_object_descriptions",
    "load_openended",
    "load_paraphrases",
    "load_pararel",
    "parse_records",
    "round_robin",
    "save_facts",
    "spread_over_relations",
]
