"""Reading a GENOME argument of the command line, including `STUDY#N`, which needs a storage.

`nas.spaces.parse_genome` reads every form that needs no storage (presets, short forms, JSON
files, inline JSON); this module adds trial N of a study and so sits above `nas.study`, which
keeps the genome layer free of Optuna.
"""

from __future__ import annotations

from nas.spaces import TRIAL_REF, Genome, Space, load_space
from nas.spaces import parse_genome as parse_stored_free


def parse_genome(text: str, space: Space | None = None, storage: str | None = None) -> Genome:
    """A GENOME argument: `STUDY#N` (trial N of study STUDY in `storage`, default the one
    `nas search` uses), or any form `nas.spaces.parse_genome` reads. The genome must lie inside
    its space (`space`, else the one it names)."""
    if m := TRIAL_REF.fullmatch(text.strip()):
        from nas.study import trial_genome_by_number

        genome = trial_genome_by_number(m["study"], int(m["number"]), storage)
        return (space or load_space(genome.space)).check(genome, text.strip())
    return parse_stored_free(text, space)
