"""lot_rl: Learning from Teaching (LoT) regularization for deep RL on Atari and for supervised training.

The names a user needs:

- :func:`kl`, :func:`teachability_kl`, :func:`student_loss`: the LoT terms as pure functions;
- :class:`Students`: the students, their optimizers and the penalty they produce;
- :class:`LoTUserError`: raised for anything a user got wrong;
- ``lot_rl.sb3.LoTCallback``: LoT for stock Stable-Baselines3 PPO (imported from its module, so that
  ``import lot_rl`` does not import SB3).
"""

from lot_rl.errors import LoTUserError
from lot_rl.regularizer import Students, kl, student_loss, teachability_kl

__version__ = "0.1.0"
__all__ = ["LoTUserError", "Students", "kl", "student_loss", "teachability_kl", "LoTCallback", "__version__"]


def __getattr__(name):
    if name == "LoTCallback":  # lazy: SB3 is heavy to import
        from lot_rl.sb3 import LoTCallback
        return LoTCallback
    raise AttributeError(f"module 'lot_rl' has no attribute {name!r}")
