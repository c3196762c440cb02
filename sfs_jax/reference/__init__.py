"""The boundary to the authors' code: their checkpoint names, their batches, their numbers.

The rest of the project never learns the authors' names or layouts; this package maps
them to ours (``weights``: state_dict names and shapes <-> our modules, the model config
read from a checkpoint; ``batch``: their collated batch <-> our batch dict), and
``parity`` compares our forward with their stored outputs (``../shared/reference``).
"""
