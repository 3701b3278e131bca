"""Consistency steering (ITI-style head steering, arXiv 2501.11041).

Taught in: Chapter 2.

- :mod:`editlens.steering.directions`: prompt-level labels, per-head directions and strengths.
- :mod:`editlens.steering.inject`: add the shifts to ``hook_z`` with hooks (nothing in the weights changes).
- :mod:`editlens.steering.bake`: fold the shifts into an output-projection bias, undoably, and save a checkpoint.
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
from editlens.steering.inject import steered, steering_hooks, validate_shifts

__all__ = [
    "BakedSteering", "Directions", "bake_bias", "baked", "bias_from_shifts", "collect_training_activations",
    "fit_directions", "labels_from_answers", "random_directions", "random_heads", "save_steered", "steered",
    "steering_hooks", "validate_shifts",
]
