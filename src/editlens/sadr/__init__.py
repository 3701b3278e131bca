"""SADR (Wang et al., ICLR 2025, arXiv 2502.14838): attention drift after an edit, and its regulariser.

Taught in: Chapter 5. One module per job: :mod:`~editlens.sadr.patterns` (attention patterns of plain prompts,
read and overwritten), :mod:`~editlens.sadr.drift` (attention to the edited subject before and after an edit;
distracted prompts), :mod:`~editlens.sadr.restore` (the causal test: unedited patterns put back into the edited
model), :mod:`~editlens.sadr.regulariser` (the loss term added to ROME's v*), :mod:`~editlens.sadr.editor` (the
editor for :func:`editlens.evaluate.evaluate_edits`), :mod:`~editlens.sadr.metrics` (SADR's pooled averages),
:mod:`~editlens.sadr.calibration` (gamma chosen on validation facts to the authors' operating point).
"""

from editlens.sadr.calibration import (
    AUTHORS_PS_COST,
    calibration_table,
    choose_gamma,
    gamma_grid,
    reaches_target,
)
from editlens.sadr.drift import (
    Drift,
    attention_drift,
    attention_row,
    attention_to,
    distracted_prompts,
    subject_attention,
    subject_positions,
)
from editlens.sadr.editor import (
    PrecomputedEdits,
    combined_terms,
    sadr_editor,
    sadr_edits,
    sadr_terms,
    with_steps,
)
from editlens.sadr.metrics import pooled_summary, pooled_table, probe_counts
from editlens.sadr.patterns import (
    PromptBatch,
    answer_probability,
    answer_run,
    prompt_batch,
    record_patterns,
    run_patterns,
)
from editlens.sadr.regulariser import (
    AUTHORS_STEPS,
    AUTHORS_WEIGHT,
    DEFAULT_GAMMA,
    EPS,
    ROME_STEPS,
    WEIGHT_SCALE,
    AttentionDriftTerm,
    drift_loss_per_layer,
    gamma_from_weight,
    pattern_hook,
    row_kl,
    selective_mask,
)
from editlens.sadr.restore import (
    Restoration,
    RestorationRun,
    all_pairs,
    fraction_recovered,
    random_pairs,
    record_run,
    restoration_experiment,
    restore,
    restore_many,
)

__all__ = [
    "AUTHORS_PS_COST", "calibration_table", "choose_gamma", "gamma_grid", "reaches_target",
    "AUTHORS_STEPS", "AUTHORS_WEIGHT", "DEFAULT_GAMMA", "EPS", "ROME_STEPS", "WEIGHT_SCALE",
    "AttentionDriftTerm", "Drift", "PrecomputedEdits", "PromptBatch", "Restoration", "RestorationRun",
    "all_pairs", "answer_probability", "answer_run", "attention_drift", "attention_row", "attention_to", "combined_terms",
    "distracted_prompts", "drift_loss_per_layer", "fraction_recovered", "gamma_from_weight", "pattern_hook",
    "pooled_summary", "pooled_table", "probe_counts", "prompt_batch", "random_pairs", "record_patterns", "record_run",
    "restoration_experiment", "restore", "restore_many", "row_kl", "run_patterns", "sadr_editor", "sadr_edits", "sadr_terms", "selective_mask",
    "subject_attention", "subject_positions", "with_steps",
]
