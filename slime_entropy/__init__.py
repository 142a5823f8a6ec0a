"""slime_entropy: high-entropy ('forking') token filtering for RLVR, as a drop-in loss for the slime trainer.

    import slime_entropy
    args = slime.utils.arguments.parse_args(add_custom_arguments=slime_entropy.add_arguments)

and train with ``--loss-type custom_loss --custom-loss-function-path slime_entropy.loss.policy_loss_function
--high-entropy-token-filter --entropy-percentile 0.2``.
"""

from ._version import __version__
from .arguments import add_arguments

__all__ = ["__version__", "add_arguments"]
