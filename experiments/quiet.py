"""Quiet by default: a command shows results, warnings and errors, not library INFO records.

orbax writes several absl INFO lines per checkpoint save and restore; a person running a
command wants its result. ``--verbosity=0`` (absl's flag) brings them back.
"""

from __future__ import annotations

from absl import flags, logging


def quiet_by_default() -> None:
    """Warnings and errors only, unless ``--verbosity`` was given on the command line."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
