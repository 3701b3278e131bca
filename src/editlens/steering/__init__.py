"""Consistency steering (ITI-style head steering, arXiv 2501.11041).

Taught in: Chapter 2.

- :mod:`editlens.steering.directions`: prompt-level labels, per-head directions and strengths.
- :mod:`editlens.steering.inject`: add the shifts to ``hook_z`` with hooks (nothing in the weights changes).
- :mod:`editlens.steering.bake`: fold the shifts into an output-projection bias, undoably, and save a checkpoint.
- :mod:`editlens.steering.fair`: steering, SFT and LoRA evaluated alike; variants, controls, diagnosis, cost.
"""

from editlens.steering.bake import BakedSteering, bake_bias, baked, bias_from_shifts, save_steered
from editlens.steering.directions import (
    Directions,
    collect_training_activations,
    fit_directions,
    labels_from_answers,
    random_directions,
    random_heads,
)
from editlens.steering.fair import (AnswerShift, ControlledRun, SideEffectData, answer_shift, choose_setting,
                                   control_shifts, controlled_evaluation, cost_by_train_size, direction_stability, effect_per_relation, evaluate_state, k_shares,
                                   per_query_scores, probe_ranking, steered_vs_controls, sweep_settings)
from editlens.steering.inject import steered, steering_hooks, validate_shifts

__all__ = [
    "AnswerShift", "BakedSteering", "ControlledRun", "controlled_evaluation", "Directions", "SideEffectData", "answer_shift", "bake_bias", "baked",
    "bias_from_shifts", "choose_setting", "collect_training_activations", "control_shifts", "cost_by_train_size",
    "direction_stability", "effect_per_relation", "evaluate_state", "fit_directions", "k_shares", "labels_from_answers",
    "per_query_scores", "probe_ranking", "random_directions", "random_heads", "save_steered", "steered",
    "steered_vs_controls", "steering_hooks", "sweep_settings", "validate_shifts",
]
