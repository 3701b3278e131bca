"""CounterFact-style fact records: schema, typed records, loaders and validation.

Used in: Chapter 3 (ROME), 4 (STEAM), 5 (SADR).

One record is one requested edit ``(subject, relation, target_true -> target_new)`` plus the
probes that evaluate it. The project's own file (``editlens/data/facts.json``) uses ROME's
CounterFact keys and adds four:

- ``relation_prompts``: same subject, another relation, ``{"prompt", "target"}`` (SADR's
  Relation Score; the true answer is never ``target_new``).
- ``portability_prompts``: ``{"prompt", "target_true", "target_new"}`` whose correct answer
  changes with the edit (a second hop through the new object).
- ``aliases``: other names of the subject.
- ``verification``: the margins measured on the embedded model (see
  :mod:`editlens.data.verify`).

:func:`load_facts` also reads ROME's official ``counterfact.json`` and the SADR repository's
``merged_counterfact.json`` and maps both onto the same :class:`CounterFactRecord`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, TypeVar

from editlens.data.requests import BadRequestError, RewriteRequest

T = TypeVar("T")

FACTS_PATH: Path = Path(__file__).with_name("facts.json")
"""The project's verified fact set (verified on SmolLM2-135M-Instruct, the default model)."""
MODEL_FACTS: dict[str, str] = {"gemma3-270m": "facts-gemma3-270m.json"}
"""Other embedded models' own fact sets: the records of facts.json that model knows, with its margins
(``python -m editlens.data.verify --model gemma3-270m --known-only --out ...``)."""


def facts_path(model: str | None = None) -> Path:
    """The fact set verified on ``model`` (an embedded model's name; None: the default model's facts.json).

    Taught in: the "Method or model?" page and Setup ("The second model")."""
    from editlens import embedded

    spec = embedded.lookup(model)
    if spec is None:
        raise ValueError(f"No fact set is verified on {model!r}. Fix: verify one with `python -m editlens.data.verify "
                         f"--model {model} --known-only --out facts.json` and pass its path.")
    if spec is embedded.DEFAULT:
        return FACTS_PATH
    return Path(__file__).with_name(MODEL_FACTS[spec.key])
OBJECT_DESCRIPTIONS_PATH: Path = Path(__file__).with_name("object_descriptions.json")
"""Three reference sentences per object (target_true and target_new of every record)."""

Format = Literal["auto", "editlens", "counterfact", "sadr"]
FORMATS: tuple[str, ...] = ("auto", "editlens", "counterfact", "sadr")

# Minimum number of probes per record in the project's own file (checked by check_dataset).
MINIMUMS: dict[str, int] = {
    "paraphrase_prompts": 2,
    "neighborhood_prompts": 5,
    "attribute_prompts": 5,
    "generation_prompts": 3,
    "relation_prompts": 1,
    "portability_prompts": 2,
}
MIN_RECORDS = 200
MIN_RELATIONS = 10


# --------------------------------------------------------------------------------------------
# Typed records
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RelationPrompt:
    """Same subject, another relation (SADR's Relation Score): ``target`` must still beat target_new."""

    prompt: str
    target: str


@dataclass(frozen=True)
class PortabilityPrompt:
    """A prompt whose answer changes with the edit: ``target_true`` before, ``target_new`` after.

    ``target_true`` is ``None`` when the source gives only the post-edit answer (SADR's ``p-reasoning``).
    """

    prompt: str
    target_true: str | None
    target_new: str


@dataclass(frozen=True)
class CounterFactRecord:
    """One CounterFact-style record. ``to_dict()`` gives the JSON form of the project's file."""

    case_id: int | None
    requested_rewrite: RewriteRequest
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    attribute_prompts: tuple[str, ...] = ()
    generation_prompts: tuple[str, ...] = ()
    relation_prompts: tuple[RelationPrompt, ...] = ()
    portability_prompts: tuple[PortabilityPrompt, ...] = ()
    aliases: tuple[str, ...] = ()
    verification: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    source: str = "editlens"
    extra: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    # Convenience accessors -------------------------------------------------------------------
    @property
    def subject(self) -> str:
        return self.requested_rewrite.subject

    @property
    def relation_id(self) -> str | None:
        return self.requested_rewrite.relation_id

    @property
    def target_true(self) -> str | None:
        return self.requested_rewrite.target_true

    @property
    def target_new(self) -> str:
        return self.requested_rewrite.target_new

    @property
    def prompt(self) -> str:
        """The rewrite prompt with the subject filled in."""
        return self.requested_rewrite.text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the project's format (``source``/``extra`` only when not native)."""
        d: dict[str, Any] = {
            "case_id": self.case_id,
            "requested_rewrite": _rewrite_json(self.requested_rewrite),
            "paraphrase_prompts": list(self.paraphrase_prompts),
            "neighborhood_prompts": list(self.neighborhood_prompts),
            "attribute_prompts": list(self.attribute_prompts),
            "generation_prompts": list(self.generation_prompts),
            "relation_prompts": [asdict(r) for r in self.relation_prompts],
            "portability_prompts": [asdict(p) for p in self.portability_prompts],
            "aliases": list(self.aliases),
        }
        if self.verification is not None:
            d["verification"] = json.loads(json.dumps(self.verification))
        if self.source != "editlens":
            d["source"] = self.source
        if self.extra:
            d["extra"] = json.loads(json.dumps(self.extra))
        return d


def _rewrite_json(req: RewriteRequest) -> dict[str, Any]:
    """A request in the file's form: targets as ``{"str", "id"}`` (the id is the string when none is known)."""
    out: dict[str, Any] = {"prompt": req.prompt, "subject": req.subject, "relation_id": req.relation_id,
                           "target_new": {"str": req.target_new, "id": req.target_new_id or req.target_new}}
    if req.target_true is not None:
        out["target_true"] = {"str": req.target_true, "id": req.target_true_id or req.target_true}
    return out


# --------------------------------------------------------------------------------------------
# Parsing helpers: every problem names the file, the record index and the field
# --------------------------------------------------------------------------------------------
class _Ctx:
    def __init__(self, fname: str, index: int, raw: Any):
        self.fname, self.index = fname, index
        cid = raw.get("case_id") if isinstance(raw, dict) else None
        self.cid = cid

    def fail(self, fieldname: str, problem: str) -> ValueError:
        who = f"record {self.index}" + (f" (case_id {self.cid})" if self.cid is not None else "")
        return ValueError(f"{self.fname} {who}: {fieldname} {problem}")


def _get(ctx: _Ctx, d: Mapping[str, Any], key: str, fieldname: str, *, required: bool = True, default: Any = None) -> Any:
    if not isinstance(d, Mapping):
        raise ctx.fail(fieldname.rsplit(".", 1)[0] or fieldname, f"must be an object, got {type(d).__name__}")
    if key not in d:
        if required:
            raise ctx.fail(fieldname, "is missing")
        return default
    return d[key]


def _str(ctx: _Ctx, value: Any, fieldname: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ctx.fail(fieldname, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ctx.fail(fieldname, "is empty")
    return value


def _str_list(ctx: _Ctx, value: Any, fieldname: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ctx.fail(fieldname, f"must be a list of strings, got {type(value).__name__}")
    return tuple(_str(ctx, v, f"{fieldname}[{i}]") for i, v in enumerate(value))


def _target(ctx: _Ctx, value: Any, fieldname: str, id_hint: Any = None) -> tuple[str, str]:
    """An object of a fact as ``(surface string, id)``: the id is the Wikidata Q-id, or the string when none is given."""
    if isinstance(value, str):  # SADR style: plain string
        s = _str(ctx, value, fieldname)
        return s, str(id_hint) if id_hint else s
    if not isinstance(value, Mapping):
        raise ctx.fail(fieldname, f"must be an object {{'str', 'id'}}, got {type(value).__name__}")
    s = _str(ctx, _get(ctx, value, "str", f"{fieldname}.str"), f"{fieldname}.str")
    raw_id = value.get("id", s)
    if raw_id is None or raw_id == "":
        raw_id = s
    return s, str(raw_id)


def _check_placeholder(ctx: _Ctx, prompt: str, fieldname: str) -> None:
    n = prompt.count("{}")
    if n == 0:
        raise ctx.fail(fieldname, "has no '{}' — the subject placeholder")
    if n > 1:
        raise ctx.fail(fieldname, f"has {n} '{{}}' placeholders; exactly one (the subject) is allowed")
    stripped = prompt.replace("{}", "")
    if "{" in stripped or "}" in stripped:
        raise ctx.fail(fieldname, "contains a brace other than the '{}' subject placeholder")


def _rewrite(ctx: _Ctx, raw: Mapping[str, Any], case_id: int, *, sadr: bool) -> RewriteRequest:
    rr = _get(ctx, raw, "requested_rewrite", "requested_rewrite")
    if not isinstance(rr, Mapping):
        raise ctx.fail("requested_rewrite", f"must be an object, got {type(rr).__name__}")
    prompt = _str(ctx, _get(ctx, rr, "prompt", "requested_rewrite.prompt"), "requested_rewrite.prompt")
    subject = _str(ctx, _get(ctx, rr, "subject", "requested_rewrite.subject"), "requested_rewrite.subject")
    if sadr and "{}" not in prompt:
        # SADR writes the subject into the prompt; turn its first occurrence into the placeholder.
        if subject not in prompt:
            raise ctx.fail("requested_rewrite.prompt", f"has no '{{}}' and does not contain the subject {subject!r}")
        i = prompt.index(subject)
        prompt = prompt[:i] + "{}" + prompt[i + len(subject):]
    _check_placeholder(ctx, prompt, "requested_rewrite.prompt")
    relation_id = rr.get("relation_id")
    relation_id = _str(ctx, relation_id, "requested_rewrite.relation_id") if relation_id is not None else ("" if sadr else None)
    if relation_id is None:
        raise ctx.fail("requested_rewrite.relation_id", "is missing")
    tn = _target(ctx, _get(ctx, rr, "target_new", "requested_rewrite.target_new"), "requested_rewrite.target_new",
                 rr.get("target_new_id"))
    tt = _target(ctx, _get(ctx, rr, "target_true", "requested_rewrite.target_true"), "requested_rewrite.target_true",
                 rr.get("target_true_id"))
    for name, (t, _) in (("target_new", tn), ("target_true", tt)):
        if t != t.strip():
            raise ctx.fail(f"requested_rewrite.{name}.str", f"{t!r} has leading/trailing whitespace (targets are stored without the leading space)")
    if tn[0] == tt[0]:
        raise ctx.fail("requested_rewrite.target_new.str", f"equals target_true ({tt[0]!r})")
    return RewriteRequest(prompt=prompt, subject=subject, target_new=tn[0], target_true=tt[0], relation_id=relation_id,
                          case_id=case_id, target_new_id=tn[1], target_true_id=tt[1])


def _relation_prompts(ctx: _Ctx, value: Any, fieldname: str) -> tuple[RelationPrompt, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ctx.fail(fieldname, f"must be a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        f = f"{fieldname}[{i}]"
        if not isinstance(item, Mapping):
            raise ctx.fail(f, f"must be an object {{'prompt', 'target'}}, got {type(item).__name__}")
        out.append(RelationPrompt(prompt=_str(ctx, _get(ctx, item, "prompt", f + ".prompt"), f + ".prompt"),
                                  target=_str(ctx, _get(ctx, item, "target", f + ".target"), f + ".target")))
    return tuple(out)


def _portability_prompts(ctx: _Ctx, value: Any, fieldname: str) -> tuple[PortabilityPrompt, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ctx.fail(fieldname, f"must be a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        f = f"{fieldname}[{i}]"
        if not isinstance(item, Mapping):
            raise ctx.fail(f, f"must be an object {{'prompt', 'target_true', 'target_new'}}, got {type(item).__name__}")
        tt = item.get("target_true")
        out.append(PortabilityPrompt(
            prompt=_str(ctx, _get(ctx, item, "prompt", f + ".prompt"), f + ".prompt"),
            target_true=None if tt is None else _str(ctx, tt, f + ".target_true"),
            target_new=_str(ctx, _get(ctx, item, "target_new", f + ".target_new"), f + ".target_new"),
        ))
    return tuple(out)


def _case_id(ctx: _Ctx, raw: Mapping[str, Any], index: int, *, required: bool) -> int:
    if "case_id" not in raw:
        if required:
            raise ctx.fail("case_id", "is missing")
        return index
    cid = raw["case_id"]
    if isinstance(cid, bool) or not isinstance(cid, int):
        raise ctx.fail("case_id", f"must be an integer, got {type(cid).__name__}")
    return cid


def _probes(ctx: _Ctx, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The probe lists and aliases of a record in the project's (and ROME's) form, parsed and checked."""
    return {"paraphrase_prompts": _str_list(ctx, raw.get("paraphrase_prompts"), "paraphrase_prompts"),
            "neighborhood_prompts": _str_list(ctx, raw.get("neighborhood_prompts"), "neighborhood_prompts"),
            "attribute_prompts": _str_list(ctx, raw.get("attribute_prompts"), "attribute_prompts"),
            "generation_prompts": _str_list(ctx, raw.get("generation_prompts"), "generation_prompts"),
            "relation_prompts": _relation_prompts(ctx, raw.get("relation_prompts"), "relation_prompts"),
            "portability_prompts": _portability_prompts(ctx, raw.get("portability_prompts"), "portability_prompts"),
            "aliases": _str_list(ctx, raw.get("aliases"), "aliases")}


def _parse_native(ctx: _Ctx, raw: Mapping[str, Any], index: int, *, source: str) -> CounterFactRecord:
    """The project's format and ROME's official one (which lacks the four extra keys)."""
    cid = _case_id(ctx, raw, index, required=True)
    rr = _rewrite(ctx, raw, cid, sadr=False)
    verification = raw.get("verification")
    if verification is not None and not isinstance(verification, Mapping):
        raise ctx.fail("verification", f"must be an object, got {type(verification).__name__}")
    return CounterFactRecord(
        case_id=cid,
        requested_rewrite=rr,
        **_probes(ctx, raw),
        verification=dict(verification) if verification is not None else None,
        source=source,
    )


def _sadr_section(ctx: _Ctx, raw: Mapping[str, Any], key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    sec = raw.get(key)
    if sec is None:
        return (), ()
    if not isinstance(sec, Mapping):
        raise ctx.fail(key, f"must be an object {{'prompts', 'targets'}}, got {type(sec).__name__}")
    prompts = sec.get("prompts", [])
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = _str_list(ctx, prompts, f"{key}.prompts")
    targets = _str_list(ctx, sec.get("targets", []), f"{key}.targets") if "targets" in sec else ()
    if targets and len(targets) != len(prompts):
        raise ctx.fail(f"{key}.targets", f"has {len(targets)} entries for {len(prompts)} prompts")
    return prompts, targets


_SADR_KNOWN = {"requested_rewrite", "case_id", "rewrite", "p-paraphrase", "p-reasoning", "l-relation",
               "l-neighbor", "generation"}


def _parse_sadr(ctx: _Ctx, raw: Mapping[str, Any], index: int) -> CounterFactRecord:
    """SADR's ``merged_counterfact.json`` (github.com/PinzhengWang322/Reveal_Attention_Drift, data/).

    Observed format: a list of records without ``case_id``; ``requested_rewrite`` has the subject
    written into ``prompt`` (no ``{}``), ``target_new``/``target_true`` as plain strings and optional
    ``relation_id``/``target_new_id``; probes are sections ``{"prompts": [...], "targets": [...]}``:
    ``rewrite``, ``p-paraphrase``, ``p-reasoning`` (portability: post-edit answers only),
    ``p-subject_alias``, ``l-neighbor`` (neighbourhood; targets are the true object), ``l-relation``
    (Relation Score), ``generation``, and ``o-commonsense`` ({prompts, right, wrong}). SADR's
    Distract Neighbourhood Score is built at evaluation time from ``l-neighbor`` with the edit
    prepended, so it needs no field. Sections we do not map go to ``extra`` unchanged.
    """
    cid = _case_id(ctx, raw, index, required=False)
    ctx.cid = cid
    rr = _rewrite(ctx, raw, cid, sadr=True)
    para, _ = _sadr_section(ctx, raw, "p-paraphrase")
    neigh, _ = _sadr_section(ctx, raw, "l-neighbor")
    gen, _ = _sadr_section(ctx, raw, "generation")
    rel_p, rel_t = _sadr_section(ctx, raw, "l-relation")
    if rel_p and not rel_t:
        raise ctx.fail("l-relation.targets", "is missing")
    port_p, port_t = _sadr_section(ctx, raw, "p-reasoning")
    if port_p and not port_t:
        raise ctx.fail("p-reasoning.targets", "is missing")
    extra = {k: v for k, v in raw.items() if k not in _SADR_KNOWN}
    return CounterFactRecord(
        case_id=cid,
        requested_rewrite=rr,
        paraphrase_prompts=para,
        neighborhood_prompts=neigh,
        attribute_prompts=(),
        generation_prompts=tuple(dict.fromkeys(gen)),  # SADR repeats generation prompts
        relation_prompts=tuple(RelationPrompt(p, t) for p, t in zip(rel_p, rel_t)),
        portability_prompts=tuple(PortabilityPrompt(p, None, t) for p, t in zip(port_p, port_t)),
        aliases=(),
        verification=None,
        source="sadr",
        extra=extra or None,
    )


def detect_format(records: Sequence[Any], fname: str = "<data>") -> str:
    """``"editlens"``, ``"counterfact"`` (ROME's official file) or ``"sadr"``, from the first record's keys."""
    if not records:
        raise ValueError(f"{fname}: no records")
    first = records[0]
    if not isinstance(first, Mapping):
        raise ValueError(f"{fname} record 0: must be an object, got {type(first).__name__}")
    keys = set(first)
    if "rewrite" in keys or any(k.startswith(("p-", "l-", "o-")) for k in keys):
        return "sadr"
    if keys & {"verification", "relation_prompts", "portability_prompts", "aliases"}:
        return "editlens"
    if "requested_rewrite" in keys and "case_id" in keys:
        return "counterfact"
    raise ValueError(
        f"{fname} record 0: cannot tell the format from its keys {sorted(keys)}; "
        "expected CounterFact keys (case_id, requested_rewrite, ...) or SADR sections (rewrite, l-neighbor, ...). "
        "Pass format= explicitly."
    )


def parse_records(data: Any, *, fname: str = "<data>", format: Format = "auto") -> list[CounterFactRecord]:
    """Parse already-decoded JSON (a list of records, or ``{"records": [...]}``) into typed records.

    Raises ``ValueError`` naming the file, the record index and the field on the first problem.
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    if isinstance(data, Mapping) and "records" in data:
        data = data["records"]
    if not isinstance(data, list):
        raise ValueError(f"{fname}: top level must be a list of records, got {type(data).__name__}")
    fmt = detect_format(data, fname) if format == "auto" else format
    out: list[CounterFactRecord] = []
    seen: dict[int | None, int] = {}
    for i, raw in enumerate(data):
        ctx = _Ctx(fname, i, raw)
        if not isinstance(raw, Mapping):
            raise ctx.fail("record", f"must be an object, got {type(raw).__name__}")
        if fmt == "sadr":
            rec = _parse_sadr(ctx, raw, i)
        else:
            rec = _parse_native(ctx, raw, i, source="editlens" if fmt == "editlens" else "counterfact")
        if rec.case_id in seen:
            raise ctx.fail("case_id", f"{rec.case_id} duplicates record {seen[rec.case_id]}")
        seen[rec.case_id] = i
        out.append(rec)
    return out


# --------------------------------------------------------------------------------------------
# The public entry points: whatever a caller holds, as the one record and the one request
# --------------------------------------------------------------------------------------------
_REWRITE_KEYS = ("prompt", "subject", "relation_id", "target_new", "target_true")
FactLike = CounterFactRecord | RewriteRequest | Mapping[str, Any]
"""What the package's public functions accept as a fact; :func:`as_case` turns it into the record."""


def as_case(obj: Any) -> CounterFactRecord:
    """Any supported fact as the one typed record, :class:`CounterFactRecord` (Chapters 3-6).

    Accepts a record (returned as it is), a :class:`RewriteRequest` (a record with no probes), a
    CounterFact-schema dict (``{"case_id", "requested_rewrite": {...}, "paraphrase_prompts": [...],
    ...}``), a flat dict with ``prompt``/``subject``/``target_new`` beside the probe lists, or an
    object with ``to_dict()``. Targets may be strings or ``{"str", "id"}``. A dict is normalised here,
    once: the package reads facts through this record's fields and nothing else. A missing or
    malformed field raises :class:`BadRequestError` (the rewrite) or ``ValueError`` (a probe list)
    naming it.
    """
    if isinstance(obj, CounterFactRecord):
        return obj
    if isinstance(obj, RewriteRequest):
        return CounterFactRecord(case_id=obj.case_id, requested_rewrite=obj)
    m = _to_mapping(obj)
    ctx = _Ctx("fact", 0, m)
    cid = m.get("case_id")
    rr = m.get("requested_rewrite")
    if rr is None:
        rr = {k: m[k] for k in _REWRITE_KEYS if k in m}
    verification = m.get("verification")
    extra = m.get("extra")
    return CounterFactRecord(
        case_id=cid,
        requested_rewrite=_loose_rewrite(_to_mapping(rr), cid),
        **_probes(ctx, m),
        verification=dict(verification) if isinstance(verification, Mapping) else None,
        source=str(m.get("source", "editlens")),
        extra=dict(extra) if isinstance(extra, Mapping) else None,
    )


def as_request(obj: Any) -> RewriteRequest:
    """The :class:`RewriteRequest` of any fact :func:`as_case` accepts (not yet validated; Chapter 3)."""
    if isinstance(obj, RewriteRequest):
        return obj
    return as_case(obj).requested_rewrite


def _loose_rewrite(rr: Mapping[str, Any], case_id: Any) -> RewriteRequest:
    """A caller's rewrite dict as a request; only prompt, subject and target_new are required."""
    missing = [k for k in ("prompt", "subject", "target_new") if rr.get(k) in (None, "")]
    if missing:
        raise BadRequestError(f"Edit request is missing {missing}. Fix: give prompt (with '{{}}' for the subject), "
                              "subject and target_new (e.g. {'str': 'Rome'}).")
    new, new_id = _loose_target(rr["target_new"])
    true, true_id = _loose_target(rr.get("target_true"))
    relation_id = rr.get("relation_id")
    return RewriteRequest(prompt=str(rr["prompt"]), subject=str(rr["subject"]), target_new=new or "",
                          target_true=true, relation_id=None if relation_id is None else str(relation_id),
                          case_id=case_id, target_new_id=new_id, target_true_id=true_id)


def _loose_target(t: Any) -> tuple[str | None, str | None]:
    """``(string, id)`` of a target given as a string, a number, ``{"str", "id"}`` or None."""
    if t is None:
        return None, None
    if isinstance(t, Mapping):
        s, tid = t.get("str"), t.get("id")
        return (None if s is None else str(s)), (None if tid in (None, "") else str(tid))
    return str(t), None


def _to_mapping(obj: Any) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        return obj
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        out = to_dict()
        if isinstance(out, Mapping):
            return out
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise BadRequestError(f"Cannot read a fact from a {type(obj).__name__}. Fix: pass a CounterFactRecord "
                          "(editlens.data.load_facts), a RewriteRequest, a CounterFact dict "
                          "({'requested_rewrite': {...}}) or a flat dict with prompt/subject/target_new.")


def load_facts(
    path: str | os.PathLike | None = None,
    *,
    format: Format = "auto",
    limit: int | None = None,
) -> list[CounterFactRecord]:
    """Load CounterFact-style records as typed, frozen :class:`CounterFactRecord` objects.

    Used in: Chapter 3 (ROME), 4 (STEAM), 5 (SADR).

    - ``path=None``: the project's verified set ``editlens/data/facts.json``.
    - ``format``: ``"editlens"`` (this project), ``"counterfact"`` (ROME's ``counterfact.json``:
      relation/portability prompts, aliases and verification come back empty), ``"sadr"``
      (``merged_counterfact.json`` of github.com/PinzhengWang322/Reveal_Attention_Drift; see
      :func:`_parse_sadr` for the mapping), or ``"auto"`` to detect from the keys.
    - ``limit``: keep the first ``limit`` records (the whole file is still validated).

    The whole file is validated: a malformed record raises ``ValueError`` naming the file, the
    record index, its case_id and the field; there is no partial load.
    """
    p = Path(path) if path is not None else FACTS_PATH
    fname = p.name
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such file (load_facts(path=None) reads the project's facts.json)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{fname}: not valid JSON ({err})") from err
    records = parse_records(data, fname=fname, format=format)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        records = records[:limit]
    return records


def load_object_descriptions(path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Reference sentences per object string (``{"Paris": [three sentences], ...}``).

    Used in: Chapter 3 (ROME's consistency score), 4 (STEAM): an edited model's generations about
    the subject are compared with the sentences of target_new.
    """
    p = Path(path) if path is not None else OBJECT_DESCRIPTIONS_PATH
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{p.name}: top level must be an object mapping object strings to sentence lists")
    for k, v in data.items():
        if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
            raise ValueError(f"{p.name}: entry {k!r} must be a list of non-empty strings")
    return data


def save_facts(records: Iterable[CounterFactRecord], path: str | os.PathLike) -> None:
    """Write records as a JSON list in the project's format (UTF-8, indented, stable key order)."""
    Path(path).write_text(json.dumps([r.to_dict() for r in records], ensure_ascii=False, indent=1) + "\n",
                          encoding="utf-8")


def check_dataset(records: Sequence[CounterFactRecord], *, fname: str = "facts.json") -> list[str]:
    """Dataset-level rules for the project's own file; returns a list of problems (empty = fine).

    Per record: the minimum probe counts in ``MINIMUMS``; the subject (or an alias) in every
    paraphrase and generation prompt; neighbourhood and attribute prompts never mention the
    subject; relation prompts mention the subject and their target is not target_new;
    portability prompts have distinct true/new answers; ``verification`` present. Whole set:
    at least ``MIN_RECORDS`` records over ``MIN_RELATIONS`` relations, unique case_ids, unique
    (subject, relation) pairs.
    """
    problems: list[str] = []
    ids: set[int | None] = set()
    pairs: set[tuple[str, str | None]] = set()
    for i, r in enumerate(records):
        who = f"{fname} record {i} (case_id {r.case_id})"
        if r.case_id in ids:
            problems.append(f"{who}: duplicate case_id")
        ids.add(r.case_id)
        key = (r.subject, r.relation_id)
        if key in pairs:
            problems.append(f"{who}: duplicate (subject, relation) {key}")
        pairs.add(key)
        for fld, n in MINIMUMS.items():
            have = len(getattr(r, fld))
            if have < n:
                problems.append(f"{who}: {fld} has {have} entries, needs >= {n}")
        names = [r.subject, *r.aliases]
        low = [n.lower() for n in names]
        for fld in ("paraphrase_prompts", "generation_prompts"):
            for j, p in enumerate(getattr(r, fld)):
                if not any(n in p.lower() for n in low):
                    problems.append(f"{who}: {fld}[{j}] does not mention the subject {r.subject!r}")
        for fld in ("neighborhood_prompts", "attribute_prompts"):
            for j, p in enumerate(getattr(r, fld)):
                if r.subject.lower() in p.lower():
                    problems.append(f"{who}: {fld}[{j}] mentions the subject {r.subject!r}")
        for j, rp in enumerate(r.relation_prompts):
            if r.subject.lower() not in rp.prompt.lower():
                problems.append(f"{who}: relation_prompts[{j}] does not mention the subject")
            if rp.target == r.target_new:
                problems.append(f"{who}: relation_prompts[{j}] target equals target_new")
        for j, pp in enumerate(r.portability_prompts):
            if pp.target_true is None or pp.target_true == pp.target_new:
                problems.append(f"{who}: portability_prompts[{j}] needs distinct target_true and target_new")
        for t in (r.target_new, r.target_true):
            if t is None:
                problems.append(f"{who}: target_true is missing")
            elif t != t.strip():
                problems.append(f"{who}: target {t!r} has surrounding whitespace")
        if r.verification is None:
            problems.append(f"{who}: verification is missing")
    if len(records) < MIN_RECORDS:
        problems.append(f"{fname}: {len(records)} records, needs >= {MIN_RECORDS}")
    rels = {r.relation_id for r in records}
    if len(rels) < MIN_RELATIONS:
        problems.append(f"{fname}: {len(rels)} relations, needs >= {MIN_RELATIONS}")
    return problems


def round_robin(items: Sequence[T], n: int, key: Callable[[T], str]) -> list[T]:
    """Up to ``n`` items taken round-robin over their groups (``key``, groups sorted by name), each group in
    the order given. Deterministic. Used to spread samples over relations (Chapters 3-6, STEAM's anchors)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out: list[T] = []
    depth = 0
    while len(out) < min(n, len(items)):
        for name in sorted(groups):
            if depth < len(groups[name]) and len(out) < n:
                out.append(groups[name][depth])
        depth += 1
    return out


def spread_over_relations(records: Sequence[CounterFactRecord], n: int) -> list[CounterFactRecord]:
    """``n`` records taken round-robin over relations (sorted by id), each relation in file order.

    The first ``n`` records of a file are often a few relations only (``facts.json`` starts with
    continents and currencies); this gives an evaluation sample that covers every relation.
    Deterministic. Used in: Chapters 3-6 (``python -m editlens edit --spread``).
    """
    return round_robin(records, n, key=lambda r: r.relation_id or "")
