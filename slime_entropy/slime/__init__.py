"""Running slime's own scripts with slime_entropy: ``python -m slime_entropy.slime train.py [flags]``.

``__main__`` is the command line; ``arguments`` wraps slime's ``parse_args`` (flag registration, typo refusal, loss
selection). Importing this package imports neither slime nor torch.
"""
