"""editlens.data: the book's datasets and their loaders.

Used in: Chapter 2 (consistency: paraphrases, ParaRel, open-ended questions), 3 (ROME),
4 (STEAM), 5 (SADR) (CounterFact-style facts).

- :func:`load_facts`: the verified CounterFact-style fact set (``facts.json``), ROME's official
  ``counterfact.json`` or SADR's ``merged_counterfact.json``, as typed records
  (:class:`CounterFactRecord`, whose ``requested_rewrite`` is the one request type,
  :class:`RewriteRequest`); :func:`as_case` and :func:`as_request` turn whatever a caller holds
  into them, once, at the package's entry points.
- :func:`load_object_descriptions`: reference sentences about every edit target.
- ``python -m editlens.data.verify``: re-checks ``facts.json`` against the embedded model.
- :func:`load_paraphrases`, :func:`load_openended`, :func:`load_pararel`: the consistency data.
"""

from editlens.data.counterfact import (
    FACTS_PATH,
    MODEL_FACTS,
    OBJECT_DESCRIPTIONS_PATH,
    CounterFactRecord,
    FactLike,
    PortabilityPrompt,
    RelationPrompt,
    as_case,
    as_request,
    check_dataset,
    facts_path,
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
from editlens.data.requests import (
    BadRequestError,
    RewriteRequest,
    relation_name,
    validate_request,
)

__all__ = [
    "FACTS_PATH",
    "MODEL_FACTS",
    "facts_path",
    "OBJECT_DESCRIPTIONS_PATH",
    "CounterFactRecord",
    "FactLike",
    "PortabilityPrompt",
    "RelationPrompt",
    "RewriteRequest",
    "BadRequestError",
    "validate_request",
    "relation_name",
    "as_case",
    "as_request",
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
