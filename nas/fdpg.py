"""fdpg, the finite-difference projected-gradient walk, as an Optuna sampler.

The walk (the reference study's method, see docs/brief.md): at a centre genome c, probe each
integer coordinate q_i by a forward step (one grid step; about 12% for widths, since +1 channel
is noise) and project the probe back onto the band. In normalised coordinates u = log(q) the
probes' displacements D and accuracy differences dA give grad Acc by least squares (D g = dA);
grad N comes from the exact counter. The step is eta along P(g) = g - (<g, n> / <n, n>) n with
n = grad N, rounded to the grid and projected onto the band. A step that does not beat its
centre is taken back and eta halved. The walk ends when `patience` steps in a row found nothing
better, when no step leaves the centre, or when the gradient vanishes.

`FdpgSampler` keeps no state of its own: like Optuna's samplers it derives it from the study.
The walk is deterministic given the scores, so replaying it over the study's finished fdpg
trials (keyed by step, role and genome) gives the centre, step size and direction, and the
evaluations it needs next; trials running in any worker hold theirs. A resumed search, and
several workers on one study (threads or processes), therefore continue the one walk.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.budget import param_gradient, project
from nas.errors import NasError
from nas.spaces import Genome, Space
from nas.study import PROPOSAL_ATTR, NothingToPropose, SamplerNeeds, counts_as_done, trial_genome
from nas.text import plural

SEARCHER = "fdpg"
ETA = 0.5  # step length in log-coordinates (0.5 ~ a 65% change of one gene)
REL_STEP = 0.12  # width probes: this fraction of the width, at least one grid step
PATIENCE = 3
NOT_NEEDED = "not needed: other workers hold every evaluation the fdpg walk needs now"


# ---------------------------------------------------------------- log coordinates and moves


def log_offsets(space: Space) -> np.ndarray:
    """Per coordinate, what to add before taking the log (1 for genes that may be 0)."""
    return np.array([1.0 if space.genes[n].minimum == 0 else 0.0 for n, _ in space.coords])


def to_log(space: Space, genome: Genome) -> np.ndarray:
    """Normalised coordinates u = log(q): equal steps are equal relative changes of any gene."""
    return np.log(np.array(space.vector(genome), dtype=float) + log_offsets(space))


def from_log(space: Space, u: np.ndarray, options: dict[str, Any]) -> Genome:
    return space.from_vector(list(np.exp(u) - log_offsets(space)), options)


def midpoint(space: Space) -> Genome:
    """The centre of every gene's range (geometric for log-scale genes)."""
    values = []
    for name, _ in space.coords:
        g = space.genes[name]
        values.append(math.sqrt(g.minimum * g.maximum) if g.log else (g.minimum + g.maximum) / 2)
    return space.from_vector(values)


def tangent(g: np.ndarray, n: np.ndarray) -> np.ndarray:
    """P(g) = g - (<g, n> / <n, n>) n: the part of g along the surface N = const."""
    nn = float(n @ n)
    return g - (float(g @ n) / nn) * n if nn > 0 else g


def log_param_gradient(space: Space, genome: Genome) -> np.ndarray:
    """dN/du_i = dN/dq_i * dq_i/du_i, with u = log(q + offset)."""
    q = np.array(space.vector(genome), dtype=float) + log_offsets(space)
    return np.array(param_gradient(space, genome)) * q


def estimate_gradient(displacements: np.ndarray, differences: np.ndarray) -> np.ndarray:
    """grad Acc in u from probes: least squares D g = dA. Projected probes all lie near the
    surface N = const, so D is nearly rank-deficient along grad N; singular values below 5% of
    the largest are cut instead of amplifying noise (that direction is projected out anyway)."""
    g, *_ = np.linalg.lstsq(displacements, differences, rcond=0.05)
    return g


def probe_genomes(space: Space, centre: Genome, budget: int, tol: float, rel_step: float = REL_STEP) -> list[Genome]:
    """One projected probe per coordinate, distinct from the centre and from each other. Widths
    step up by `rel_step`; depth, expansion and kernel step one grid point down where they can
    (the projection then widens the model: that is the trade-off the budget forces), else up."""
    v = space.vector(centre)
    out: list[Genome] = []
    for i, (name, _) in enumerate(space.coords):
        gene = space.genes[name]
        width = gene.role == "width" and gene.choices is None
        h = max(1, round(rel_step * v[i] / gene.step)) if width else 1
        for steps in (h, 2 * h, 4 * h):  # a small step can round back onto the centre
            first, second = (steps, -steps) if width else (-steps, steps)
            moved = gene.shift(v[i], first)
            if moved is None:
                moved = gene.shift(v[i], second)
            if moved is None:
                break
            w = list(v)
            w[i] = moved
            try:
                p = project(space.from_vector(w, centre.options), space, budget, tol)
            except NasError:
                break
            if p != centre and p not in out:
                out.append(p)
                break
    return out


def gradient_step(
    space: Space,
    centre: Genome,
    direction: np.ndarray,
    eta: float,
    budget: int,
    tol: float,
    seen: set[Genome] | frozenset[Genome] = frozenset(),
) -> tuple[Genome, float] | None:
    """The point centre + eta * direction (in u), rounded and projected, and the eta used.
    While rounding lands on the centre, eta doubles (at most 3 times); when it lands on a genome
    already evaluated (`seen`), shorter steps are tried. None when no new point is found."""
    u = to_log(space, centre)

    def at(scale: float) -> Genome | None:
        try:
            return project(from_log(space, u + eta * scale * direction, centre.options), space, budget, tol)
        except NasError:
            return None

    for scale in (1, 2, 4, 8):
        x = at(scale)
        if x is None or x == centre:
            continue
        if x not in seen:
            return x, eta * scale
        for shorter in (scale / 2, scale / 4, scale / 8):
            y = at(shorter)
            if y is not None and y != centre and y not in seen:
                return y, eta * shorter
        return None
    return None


# ---------------------------------------------------------------- the walk


@dataclass(frozen=True)
class Item:
    """One evaluation the walk needs: a genome as the centre of `step` or a neighbour probed there."""

    genome: Genome
    role: str  # "centre" or "neighbour"
    step: int

    @property
    def key(self) -> tuple[int, str, str]:
        return self.step, self.role, self.genome.key()

    def record(self) -> dict[str, Any]:
        """The trial's PROPOSAL_ATTR."""
        return {"genome": self.genome.to_json(), "role": self.role, "step": self.step}


def _proposal_key(t: FrozenTrial) -> tuple[int, str, str] | None:
    p = t.system_attrs.get(PROPOSAL_ATTR)
    return None if p is None else (p["step"], p["role"], Genome.from_json(p["genome"]).key())


def _ok(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and t.value is not None


@dataclass
class WalkState:
    """Where the walk stands in a study."""

    todo: list[Item]  # evaluations it needs next that no running or queued trial holds
    stopped: str | None  # why the walk ended, once it has
    queued: bool  # the study has a waiting trial (e.g. a retry of a trial whose process died)


class FdpgSampler(optuna.samplers.BaseSampler):
    """fdpg as an Optuna sampler (module docstring), starting its walk at the best of `start` and
    the genomes `also` (a sweep's transfer genomes: winners of other budgets projected here),
    which it evaluates itself as step 0.

    Like Optuna's GridSampler, `before_trial` picks what the trial evaluates and records it in the
    trial's system attr PROPOSAL_ATTR (genome, role, step); `sample_independent` then returns that
    genome's genes, so the trial's params are the genes as with any sampler. Trials that already
    say what they evaluate (a retry of a failed trial, a queued one) are left as they are.
    `state` tells the search loop whether the walk has more to propose, must wait for running
    trials, or has ended (and why). The walk's evaluations may revisit genomes the study holds
    (e.g. a probe that is an earlier centre): such a trial reuses the result and counts.
    `storage`: the study's storage, where a trial's proposal is recorded for every worker."""

    # complete trainings for the differences; start and transfer are its own step 0; revisits count
    needs = SamplerNeeds(prunable=False, proposes_start=True, distinct=False, paced=True)

    def __init__(
        self,
        space: Space,
        start: Genome,
        budget: int,
        tol: float,
        *,
        also: list[Genome] | tuple[Genome, ...] = (),
        storage: optuna.storages.BaseStorage | None = None,
        eta: float = ETA,
        rel_step: float = REL_STEP,
        patience: int = PATIENCE,
    ):
        self.space, self.start, self.budget, self.tol = space, start, budget, tol
        self.also = [g for g in dict.fromkeys(also) if g.key() != start.key()]
        self.storage = storage
        self.eta, self.rel_step, self.patience = eta, rel_step, patience
        self._lock = threading.Lock()
        self._memo: tuple[tuple[int, ...], tuple[list[Item], str | None]] | None = None

    # ------------------------------------------------ state from the study

    def state(self, study: optuna.Study) -> WalkState:
        done: dict[tuple[int, str, str], FrozenTrial] = {}
        held: set[tuple[int, str, str]] = set()
        queued = False
        for t in study.get_trials(deepcopy=False):
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                queued |= t.state == TrialState.WAITING
                if (key := _proposal_key(t)) is not None:
                    held.add(key)
            elif t.user_attrs.get("searcher") == SEARCHER and counts_as_done(t):
                g = trial_genome(t)
                if g is not None:
                    done.setdefault((t.user_attrs.get("step"), t.user_attrs.get("role"), g.key()), t)
        missing, stopped = self._replay(done)
        return WalkState([i for i in missing if i.key not in held], stopped, queued)

    def _replay(self, done: dict[tuple[int, str, str], FrozenTrial]) -> tuple[list[Item], str | None]:
        """Walk the path as far as `done` has the scores: the evaluations needed next, or why the
        walk ended. Remembered while the finished trials stay the same (workers poll it)."""
        memo_key = tuple(sorted(t.number for t in done.values()))
        with self._lock:
            if self._memo is not None and self._memo[0] == memo_key:
                return self._memo[1]
        walk = self._walk()
        try:
            request = next(walk)
            while True:
                results = [done.get(item.key) for item in request]
                missing = [item for item, r in zip(request, results) if r is None]
                if missing:
                    result: tuple[list[Item], str | None] = (missing, None)
                    break
                request = walk.send(results)
        except StopIteration as end:
            result = ([], end.value)
        with self._lock:
            self._memo = (memo_key, result)
        return result

    def _walk(self) -> Generator[list[Item], list[FrozenTrial], str]:
        """The walk as a coroutine: yields the evaluations it needs, receives their trials (in
        the same order), returns why it ended."""
        space, budget, tol = self.space, self.budget, self.tol
        eta, step = self.eta, 0
        starts = [Item(self.start, "centre", step), *(Item(g, "transfer", step) for g in self.also)]
        seen = {i.genome for i in starts}
        results = yield starts
        scored = [(i.genome, t.value) for i, t in zip(starts, results) if _ok(t)]
        if not scored:
            first = results[0]
            raise NasError(
                f"fdpg: the start genome {self.start} could not be evaluated (trial #{first.number}: "
                f"{first.state.name.lower()}); pick another with --start"
            )
        centre, value = max(scored, key=lambda c: c[1])  # the start wins ties
        best = value
        since_best = 0
        direction: np.ndarray | None = None
        probed: list[tuple[Genome, float]] = []
        while True:
            if direction is None:  # a new centre: probe every coordinate
                probes = probe_genomes(space, centre, budget, tol, self.rel_step)
                seen.update(probes)
                results = yield [Item(p, "neighbour", step) for p in probes]
                probed = [(p, t.value) for p, t in zip(probes, results) if _ok(t)]
                if not probed:
                    return "no neighbour of the centre could be evaluated"
                u0 = to_log(space, centre)
                disp = np.array([to_log(space, p) - u0 for p, _ in probed])
                diff = np.array([v - value for _, v in probed])
                p = tangent(estimate_gradient(disp, diff), log_param_gradient(space, centre))
                if not np.linalg.norm(p) > 0:
                    return "the projected gradient vanished"
                direction = p / np.linalg.norm(p)
            found = gradient_step(space, centre, direction, eta, budget, tol, seen)
            if found is None:
                return "no new step from the centre (converged on the grid)"
            x, eta = found
            seen.add(x)
            step += 1
            (out,) = yield [Item(x, "centre", step)]
            # The next centre is the best genome evaluated around this one, the step first.
            cands = [(x, out.value)] if _ok(out) else []
            top = max(cands + probed, key=lambda c: c[1], default=None)
            if top is not None and top[1] > value:
                centre, value, direction = top[0], top[1], None
            else:
                eta /= 2  # take the step back and try a shorter one along the same direction
            probed = []
            if value > best:
                best, since_best = value, 0
            else:
                since_best += 1
            if since_best >= self.patience:
                return f"no improvement in {plural(self.patience, 'step')}"

    # ------------------------------------------------ the sampler interface

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if PROPOSAL_ATTR in trial.system_attrs or "fixed_params" in trial.system_attrs or trial.params:
            return  # a retry or a queued trial: it says what it evaluates
        todo = self.state(study).todo
        if todo:
            st = self.storage or optuna.storages.get_storage(None)
            trial_id = st.get_trial_id_from_study_id_trial_number(
                st.get_study_id_from_name(study.study_name), trial.number
            )
            st.set_trial_system_attr(trial_id, PROPOSAL_ATTR, todo[0].record())

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any
    ) -> Any:
        proposal = trial.system_attrs.get(PROPOSAL_ATTR)
        if proposal is None:
            raise NothingToPropose(NOT_NEEDED)
        genome = Genome.from_json(proposal["genome"])
        return dict(zip(map(self.space.coord_name, self.space.coords), self.space.vector(genome)))[param_name]
