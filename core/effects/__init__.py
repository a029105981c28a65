"""What a feature does to the model's output: exact ablation effects and steering.

Rooms:

* :mod:`core.effects.ablation`: :func:`compute_effects`, exact per-token loss and logit
  effects of a feature on every token shown on its page (memoised), and its memo keys.
* :mod:`core.effects.passes`: the clean and ablated forward passes behind it.
* :mod:`core.effects.payload`: per-position results turned into the stored JSON effects.
* :mod:`core.effects.steering`: :func:`steer`, a continuation with the feature pushed or
  clamped, beside the plain one.
* :mod:`core.effects.common`: :class:`EffectsError` and the read/write hooks of a feature.
"""

from core.effects.ablation import compute_effects, default_prefix, effects_key
from core.effects.common import AblationSite, EffectsError, ablation_site
from core.effects.payload import EFFECTS_VERSION, LEGEND, per_token_text
from core.effects.steering import MAX_NEW_TOKENS, steer

__all__ = [
    "EFFECTS_VERSION",
    "LEGEND",
    "MAX_NEW_TOKENS",
    "AblationSite",
    "EffectsError",
    "ablation_site",
    "compute_effects",
    "default_prefix",
    "effects_key",
    "per_token_text",
    "steer",
]
