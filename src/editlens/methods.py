"""The book's editing methods by name: the one registry that ``editlens.compare``, ``editlens.sequential``, the command
line (``edit`` and ``compare``) and the chapters read.

Taught in: Chapters 3-5 (the editors: ROME, STEAM, ROME+SADR) and Chapter 6 (STEAM+SADR, both terms in one v*
optimisation, and all four compared); MEMIT, ROME spread over several layers, on the page ``book/memit.md``. Each
:class:`Method` has its name, its label in tables and figures, the parts it adds to ROME's v* (:data:`PARTS`:
``steam``, ``sadr``), a builder ``(hparams, stats, *, bank, steam_lambda, steam_layers, sadr_gamma, batch) ->
Editor`` and the checks of its parts' options (:data:`OPTIONS`: a clear ``ValueError`` that names the problem and
the fix).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from editlens.rome.editor import Editor
    from editlens.rome.hparams import ROMEHyperParams
    from editlens.rome.key_stats import KeyStats
    from editlens.steam.anchors import AnchorBank

PARTS = ("steam", "sadr")
"""What a method may add to ROME's v*: STEAM's alignment term (Chapter 4), SADR's attention-drift term (Chapter 5)."""

ANCHOR_SOURCES = ("reference", "all")
"""STEAM's anchor pools (:class:`~editlens.steam.AnchorBank`'s ``sources``): reference triples, or every prompt."""
ALIGNMENTS = ("centred", "raw")
"""How STEAM's alignment compares states (:class:`~editlens.steam.AnchorBank`'s ``centred``)."""
NO_BANK = "STEAM needs an AnchorBank. Fix: pass bank=AnchorBank(model, facts) (editlens.steam)."


class UnknownMethodError(ValueError):
    """A method name that is not in :data:`NAMES` (the message carries ``Fix: ...``)."""


class OptionError(ValueError):
    """An option value a method cannot use: ``problem`` and ``fix`` (the message is ``problem. Fix: fix.``)."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}. Fix: {fix}.")


def _non_negative(value: Any) -> bool:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(x) and x >= 0


def _at_least_one(value: Any) -> bool:
    return int(value) >= 1


def _layers(value: Any) -> bool:
    return all(int(layer) >= 0 for layer in value)


@dataclass(frozen=True)
class Option:
    """One option of a part: its keyword in the book's functions (the builders; ``n_anchors``: STEAM's
    :class:`~editlens.steam.AnchorBank`), its command-line flag, and what a valid value is. ``problem`` and ``fix``
    are templates: ``{name}`` is the keyword or the flag, ``{value}`` the value, ``{set}`` how to pass one."""

    keyword: str
    flag: str
    part: str
    valid: Callable[[Any], bool]
    problem: str
    fix: str

    def check(self, value: Any, *, command_line: bool = False, shown: Any = None) -> None:
        """Nothing when ``value`` is None or valid; else :class:`OptionError`, naming the option by its keyword or,
        with ``command_line``, by its flag. ``shown``: the value as it was written (e.g. the text of a layer list)."""
        if value is None or self.valid(value):
            return
        name, how = (self.flag, f"{self.flag} ") if command_line else (self.keyword, f"{self.keyword}=")
        raise OptionError(self.problem.format(name=name, value=value if shown is None else shown),
                          self.fix.format(set=how))


OPTIONS = (
    Option("steam_lambda", "--steam-lambda", "steam", _non_negative, "{name} must be a number >= 0, got {value}",
           "pass e.g. {set}1 (0 reproduces ROME), or leave it out for the default"),
    Option("steam_layers", "--steam-layers", "steam", _layers, "{name} {value!r} has a negative layer",
           "pass layer indices counted from 0, above the edit layer"),
    Option("n_anchors", "--anchors", "steam", _at_least_one, "{name} must be at least 1, got {value}",
           "pass {set}N with N >= 1 (reference facts per object), or leave it out for 8"),
    Option("anchor_sources", "--steam-anchors", "steam", lambda v: v in ANCHOR_SOURCES,
           "{name} must be one of " + ", ".join(ANCHOR_SOURCES) + ", got {value!r}",
           "pass {set}reference (reference triples, never a probe the edit is judged on: the paper's design) or "
           "{set}all (every prompt whose known answer is the object)"),
    Option("steam_align", "--steam-align", "steam", lambda v: v in ALIGNMENTS,
           "{name} must be one of " + ", ".join(ALIGNMENTS) + ", got {value!r}",
           "pass {set}centred (states centred on their relation's mean, the paper's design) or {set}raw"),
    Option("anchor_data", "--anchor-data", "steam", lambda v: bool(str(v).strip()), "{name} is empty",
           "pass {set}PATH, a facts file whose prompts join the anchor pool, or leave it out for the book's facts"),
    Option("sadr_gamma", "--sadr-gamma", "sadr", _non_negative, "{name} must be a number >= 0, got {value}",
           "pass e.g. {set}0.01 (the authors' ROME setting; 0 reproduces ROME), or leave it out for the default"),
)
"""The options of the parts, in the order they are checked."""


def options_of(part: str) -> tuple[Option, ...]:
    """The options of ``part`` (one of :data:`PARTS`)."""
    return tuple(o for o in OPTIONS if o.part == part)


class Builder(Protocol):
    """How a method makes its :data:`~editlens.rome.editor.Editor` (``sadr_gamma=None``: SADR's default)."""

    def __call__(self, hparams: ROMEHyperParams, stats: KeyStats | None, *, bank: AnchorBank | None,
                 steam_lambda: float, steam_layers: Sequence[int] | None, sadr_gamma: float | None,
                 batch: int) -> Editor: ...


@dataclass(frozen=True)
class Method:
    """One editing method: its ``name``, its ``label`` in tables and figures, the ``parts`` it adds to ROME's v*, its
    ``builder`` and where the book teaches it (``Chapter N``, or ``page book/NAME.md``)."""

    name: str
    label: str
    parts: tuple[str, ...]
    builder: Builder
    taught_in: str

    def uses(self, part: str) -> bool:
        """Whether the method adds ``part`` (``steam`` or ``sadr``) to ROME's v*."""
        return part in self.parts

    @property
    def options(self) -> tuple[Option, ...]:
        """The options of the method's parts."""
        return tuple(o for o in OPTIONS if self.uses(o.part))

    def check(self, *, bank: AnchorBank | None = None, **values: Any) -> None:
        """The checks of the method's options (``values`` by keyword; those of parts it does not use are not read):
        :class:`OptionError`, or a ``ValueError`` when a STEAM method has no ``bank``."""
        for option in self.options:
            option.check(values.get(option.keyword))
        if self.uses("steam") and bank is None:
            raise ValueError(NO_BANK)

    def editor(self, hparams: ROMEHyperParams, stats: KeyStats | None, *, bank: AnchorBank | None = None,
               steam_lambda: float = 1.0, steam_layers: Sequence[int] | None = None, sadr_gamma: float | None = None,
               batch: int = 1) -> Editor:
        """The method's editor, its options checked first."""
        self.check(bank=bank, steam_lambda=steam_lambda, steam_layers=steam_layers, sadr_gamma=sadr_gamma)
        return self.builder(hparams, stats, bank=bank, steam_lambda=steam_lambda, steam_layers=steam_layers,
                            sadr_gamma=sadr_gamma, batch=batch)


def _gamma(sadr_gamma: float | None) -> float:
    from editlens.sadr import DEFAULT_GAMMA

    return DEFAULT_GAMMA if sadr_gamma is None else sadr_gamma


def _rome(hparams: ROMEHyperParams, stats: KeyStats | None, *, bank: AnchorBank | None,
          steam_lambda: float, steam_layers: Sequence[int] | None,
          sadr_gamma: float | None, batch: int) -> Editor:
    from editlens.rome.editor import rome_editor

    return rome_editor(hparams, stats, batch=batch)


def _steam(hparams: ROMEHyperParams, stats: KeyStats | None, *, bank: AnchorBank | None,
           steam_lambda: float, steam_layers: Sequence[int] | None,
           sadr_gamma: float | None, batch: int) -> Editor:
    from editlens.steam import steam_editor

    assert bank is not None  # Method.check raised NO_BANK
    return steam_editor(hparams, stats, bank, steam_lambda, steam_layers, batch=batch)


def _sadr(hparams: ROMEHyperParams, stats: KeyStats | None, *, bank: AnchorBank | None,
          steam_lambda: float, steam_layers: Sequence[int] | None,
          sadr_gamma: float | None, batch: int) -> Editor:
    from editlens.sadr import sadr_editor

    return sadr_editor(hparams, stats, _gamma(sadr_gamma), batch=batch)


def _steam_sadr(hparams: ROMEHyperParams, stats: KeyStats | None, *, bank: AnchorBank | None,
                steam_lambda: float, steam_layers: Sequence[int] | None,
                sadr_gamma: float | None, batch: int) -> Editor:
    from editlens.sadr import sadr_editor
    from editlens.steam import steam_terms

    assert bank is not None  # Method.check raised NO_BANK
    also = steam_terms(hparams, bank, steam_lambda, steam_layers)  # both terms in one v* optimisation
    return sadr_editor(hparams, stats, _gamma(sadr_gamma), also=also, batch=batch)


def _memit(hparams: ROMEHyperParams, stats: KeyStats | None, *, bank: AnchorBank | None,
           steam_lambda: float, steam_layers: Sequence[int] | None,
           sadr_gamma: float | None, batch: int) -> Editor:
    from editlens.memit import memit_editor

    return memit_editor(hparams)  # its own key statistics, one per layer; v* one record at a time


REGISTRY: Mapping[str, Method] = MappingProxyType({m.name: m for m in (
    Method("rome", "ROME", (), _rome, "Chapter 3"),
    Method("steam", "STEAM", ("steam",), _steam, "Chapter 4"),
    Method("sadr", "ROME+SADR", ("sadr",), _sadr, "Chapter 5"),
    Method("steam+sadr", "STEAM+SADR", ("steam", "sadr"), _steam_sadr, "Chapter 6"),
    Method("memit", "MEMIT", (), _memit, "page book/memit.md"),
)})
"""Every method by name."""

NAMES = tuple(REGISTRY)
"""Method names, in the book's order (``sadr`` is ROME+SADR)."""

LABELS = {name: m.label for name, m in REGISTRY.items()}
"""How tables and figures name each method."""


def get(name: str) -> Method:
    """The :class:`Method` called ``name`` (case and surrounding spaces ignored), or :class:`UnknownMethodError`."""
    method = REGISTRY.get(str(name).strip().lower())
    if method is None:
        raise UnknownMethodError(f"unknown method {name!r}; the methods are {', '.join(NAMES)}. Fix: pass one of them "
                                 "(sadr is ROME+SADR; steam+sadr puts both terms in one v* optimisation).")
    return method


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``"rome,steam,sadr,steam+sadr"`` (or a list) -> the method names, in order, without repeats."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [p.strip().lower() for p in parts if p.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown or not names:
        what = f"unknown method(s) {', '.join(map(repr, unknown))}" if unknown else "no method named"
        raise UnknownMethodError(f"{what}; the methods are {', '.join(NAMES)}. Fix: pass a comma-separated list of "
                                 f"them, e.g. --methods {','.join(NAMES)}")
    return list(dict.fromkeys(names))


def uses(methods: Iterable[str], part: str) -> bool:
    """Whether any of ``methods`` adds ``part`` (``steam+sadr`` adds ``steam`` and ``sadr``)."""
    return any(get(m).uses(part) for m in methods)


def build_editors(hparams: ROMEHyperParams, stats: KeyStats | None, methods: Sequence[str], *,
                  bank: AnchorBank | None = None, steam_lambda: float = 1.0, steam_layers: Sequence[int] | None = None,
                  sadr_gamma: float | None = None, batch: int = 1) -> dict[str, Editor]:
    """``{method: editor}`` for :func:`editlens.evaluate.evaluate_edits`, from the chapters' editor functions (every
    method's options are checked before any editor is made). ``bank``: STEAM's :class:`~editlens.steam.AnchorBank`
    (needed by ``steam`` and ``steam+sadr``). ``batch``: each method optimises the v* of that many records together
    (:func:`editlens.rome.editor.rome_editor`; the same edits up to float noise, Chapter 3's "making it fast")."""
    chosen = [get(m) for m in parse_methods(methods)]
    for method in chosen:
        method.check(bank=bank, steam_lambda=steam_lambda, steam_layers=steam_layers, sadr_gamma=sadr_gamma)
    return {method.name: method.editor(hparams, stats, bank=bank, steam_lambda=steam_lambda, steam_layers=steam_layers,
                                       sadr_gamma=sadr_gamma, batch=batch) for method in chosen}
