"""Sub-commands of ``nnexp``: each parses its arguments and calls library code."""
