"""slime_entropy: high-entropy ('forking') token filtering for RLVR, as a drop-in loss for the slime trainer.

In a slime checkout, with slime's files unchanged (registers our flags and selects the loss; see
``slime_entropy.slime``)::

    python -m slime_entropy.slime train.py [slime flags] --high-entropy-token-filter --entropy-percentile 0.2

or, in your own script::

    import slime_entropy
    args = slime.utils.arguments.parse_args(add_custom_arguments=slime_entropy.add_arguments)

and train with ``--loss-type custom_loss --custom-loss-function-path slime_entropy.loss.policy_loss_function
--high-entropy-token-filter --entropy-percentile 0.2``.
"""

from ._version import __version__
from .loss.arguments import add_arguments

__all__ = ["__version__", "add_arguments"]
