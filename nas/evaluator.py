"""Evaluating genomes as trials of one study. A genome is evaluated through an `Objective`
(`Callable[[Genome, optuna.Trial | None], float]`): `nas.objective.TrainingObjective` trains it,
tests and benchmarks pass a cheap stand-in. `Evaluator` turns each evaluation into one trial: it
records the genome, reuses the result when the genome was already evaluated in the study, keeps a
heartbeat while it runs, and marks the trial failed or pruned when it ends badly. For a sampler's
proposals it also keeps workers apart: a genome held anywhere in the study, running in another
process included, makes the trial a duplicate that does not count (`holder`).

Several processes, on one machine or many, may share a study: a genome is trained by at most one
live trial at a time (`Evaluator` waits for an earlier trial of the same genome in any process and
reuses its result).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from nas.liveness import HEARTBEAT_ATTR, beat, fail_stale_trials, heartbeat
from nas.spaces import Genome
from nas.storage import heartbeat_seconds, optuna_heartbeat, trial_id
from nas.study import DUPLICATE_ATTR, INTERRUPTED, RESULT_ATTRS, Objective, genome_attrs, trial_genome


class EvaluationFailed(Exception):
    """An objective could not score a genome (e.g. training diverged); the trial is marked FAIL."""


class DeadlineReached(EvaluationFailed):
    """The search's time limit passed during the trial, which stopped at an epoch boundary. The
    trial is marked FAIL with this reason but not counted as done: a rerun trains it again."""


@dataclass
class Outcome:
    """One evaluation: the trial's state and value (None unless complete or pruned)."""

    number: int
    state: TrialState
    value: float | None
    genome: Genome
    reused_from: int | None = None
    seconds: float | None = None  # wall time of the evaluation (None when reused)
    duplicate_of: int | None = None  # the trial that held the genome (see Evaluator.evaluate)

    @property
    def ok(self) -> bool:
        return self.state == TrialState.COMPLETE and self.value is not None


@dataclass
class Evaluator:
    """Evaluates genomes as trials of one study, never training a genome twice.

    `evaluate` is thread-safe: concurrent evaluations of one genome wait for the first, in this
    process (threads) and in others sharing the study (see `_first_of`)."""

    study: optuna.Study
    objective: Objective
    searcher: str
    recipe: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _inflight: dict[str, threading.Event] = field(default_factory=dict, init=False, repr=False)
    _running: dict[int, optuna.Trial] = field(default_factory=dict, init=False, repr=False)
    _keys: dict[int, str] = field(default_factory=dict, init=False, repr=False)
    _text_keys: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _undeclared: dict[int, float] = field(default_factory=dict, init=False, repr=False)

    def ask(self) -> optuna.Trial:
        """A new trial of this searcher (a WAITING retry first, if one is queued). It carries a
        heartbeat from the start, so it is failed and retried if this process dies before or
        during its evaluation, and `interrupt_running` marks it after Ctrl-C."""
        with warnings.catch_warnings():
            # nas's searchers ask and tell (no Study.optimize loop) and beat the heartbeat
            # themselves; Optuna warns about that combination on every ask.
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = self.study.ask()
        beat(trial.storage, trial_id(trial))
        trial.set_user_attr("searcher", self.searcher)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process ran it
        with self._lock:
            self._running[trial.number] = trial
        return trial

    def _key(self, t: FrozenTrial) -> str:
        """The genome key of a trial ("" if none); cached for finished trials, which never change."""
        if t.number in self._keys:
            return self._keys[t.number]
        g = trial_genome(t)
        key = g.key() if g is not None else ""
        if t.state.is_finished():
            self._keys[t.number] = key
        return key

    def finished(self, genome: Genome) -> FrozenTrial | None:
        """The earliest complete or pruned trial of this genome in the study."""
        key = genome.key()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if self._key(t) == key:
                return t
        return None

    def _first_of(self, trial: optuna.Trial, key: str) -> FrozenTrial | None:
        """A live trial that comes before `trial` for this genome, in any process: a lower-numbered
        RUNNING trial that recorded the same genome, or one that has not recorded its genome yet
        (it may be about to; waited for at most twice the heartbeat, in case it is no nas trial).

        Why this is enough: trial numbers are handed out in creation order and a new trial is
        only created when no retry is WAITING, so every trial numbered below `trial` is already
        RUNNING or finished when `trial` looks. The lowest-numbered live trial of a genome trains
        it; every later one waits for it and reuses its result (or takes over if it fails)."""
        now = time.monotonic()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number >= trial.number:
                continue
            text = t.user_attrs.get("genome")
            if not isinstance(text, str):
                if now - self._undeclared.setdefault(t.number, now) < 2 * heartbeat_seconds():
                    return t
                continue
            if text not in self._text_keys:
                self._text_keys[text] = Genome.from_json(text).key()
            if self._text_keys[text] == key:
                return t
        return None

    def holder(self, trial: optuna.Trial, genome: Genome) -> FrozenTrial | None:
        """The trial that holds `genome` before `trial`, in any process: the earliest complete or
        pruned one, else a live running (or a waiting) one with a lower number. `trial` must carry
        the genome already: of two trials that propose one genome at once, the lower number holds
        it, so while a live lower-numbered trial has not recorded its genome yet, this waits."""
        key, grace = genome.key(), 2 * heartbeat_seconds()
        optuna_beats = optuna_heartbeat(trial.storage)
        give_up = time.monotonic() + grace  # a trial that never records a genome is not a nas trial
        while True:
            now, choosing, earlier = time.time(), False, None
            for t in self.study.get_trials(deepcopy=False):
                if t.number == trial.number:
                    continue
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                    if self._key(t) == key:
                        return t  # trials come in number order: the earliest
                elif t.state in (TrialState.RUNNING, TrialState.WAITING) and t.number < trial.number:
                    # Where Optuna keeps the heartbeat it also fails dead trials (fail_stale_trials):
                    # a RUNNING trial there is alive. Elsewhere nas's own beat says so.
                    last_beat = t.system_attrs.get(HEARTBEAT_ATTR)
                    alive = optuna_beats or (isinstance(last_beat, (int, float)) and now - last_beat <= grace)
                    if t.state == TrialState.RUNNING and not alive:
                        continue  # dead (its retry will find this trial's result), or not a nas trial
                    if "genome" in t.user_attrs:
                        if earlier is None and self._key(t) == key:
                            earlier = t
                    elif t.state == TrialState.RUNNING:
                        choosing = True  # a live worker's trial, its genome not proposed yet
            if earlier is not None or not choosing or time.monotonic() > give_up:
                return earlier
            time.sleep(0.05)

    def evaluate(
        self,
        genome: Genome,
        *,
        role: str,
        step: int | None = None,
        trial: optuna.Trial | None = None,
        distinct: bool = False,
    ) -> Outcome:
        """Evaluate `genome` in `trial` (else a new trial), recording the design.md trial attrs.

        A genome the study already evaluated is not trained again: its result is reused. With
        `distinct` (a sampler's proposals), a genome the study holds in any way (see `holder`)
        makes the trial a duplicate instead: it is marked `duplicate_of`, which keeps it out of
        --trials, and takes the holder's result (so the sampler learns the value of its
        proposal), or fails if the holder is still running."""
        trial = trial or self.ask()
        try:
            return self._evaluate(genome, role, step, trial, distinct)
        except UpdateFinishedTrialError:
            # Another process took this trial for dead (its heartbeat came too late: an overloaded
            # machine, a network hiccup) and failed it, and a retry of it is queued: this process
            # drops it and goes on instead of ending the search.
            with self._lock:
                self._running.pop(trial.number, None)
            return Outcome(trial.number, TrialState.FAIL, None, genome)

    def _evaluate(self, genome: Genome, role: str, step: int | None, trial: optuna.Trial, distinct: bool) -> Outcome:
        attrs = {
            **genome_attrs(genome),
            "recipe": self.recipe,
            "searcher": self.searcher,
            "role": role,
            "step": trial.number if step is None else step,
        }
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if distinct and (held := self.holder(trial, genome)) is not None:
            return self._duplicate(trial, genome, held)
        key = genome.key()
        poll = min(1.0, heartbeat_seconds() / 2)
        # The heartbeat covers the wait for another trial of the genome too: a waiting trial is alive.
        with heartbeat(trial.storage, trial_id(trial)):
            while True:
                with self._lock:
                    source = self.finished(genome)
                    wait = self._inflight.get(key) if source is None else None
                    first = self._first_of(trial, key) if source is None and wait is None else None
                    if source is None and wait is None and first is None:
                        self._inflight[key] = threading.Event()
                        self._running[trial.number] = trial
                        break
                if source is not None:
                    try:
                        return (
                            self._duplicate(trial, genome, source) if distinct else self._reuse(trial, genome, source)
                        )
                    finally:
                        with self._lock:
                            self._running.pop(trial.number, None)
                if wait is not None:
                    wait.wait()
                else:  # another process's trial: poll, and fail it if its process died
                    time.sleep(poll)
                    fail_stale_trials(self.study)
            try:
                t0 = time.perf_counter()
                out = self._run(trial, genome)
                out.seconds = time.perf_counter() - t0
                return out
            finally:
                with self._lock:
                    self._running.pop(trial.number, None)
                    self._inflight.pop(key).set()

    def _reuse(self, trial: optuna.Trial, genome: Genome, source: FrozenTrial) -> Outcome:
        trial.set_user_attr("reused_from", source.number)
        for k in RESULT_ATTRS:
            if k in source.user_attrs:
                trial.set_user_attr(k, source.user_attrs[k])
        for step, value in sorted(source.intermediate_values.items()):
            trial.report(value, step)
        value = source.value if source.state == TrialState.COMPLETE else None
        frozen = self.study.tell(trial, value, state=source.state, skip_if_finished=True)
        return Outcome(trial.number, frozen.state, frozen.value, genome, source.number)

    def _duplicate(self, trial: optuna.Trial, genome: Genome, held: FrozenTrial) -> Outcome:
        trial.set_user_attr(DUPLICATE_ATTR, held.number)
        if held.state in (TrialState.COMPLETE, TrialState.PRUNED):
            out = self._reuse(trial, genome, held)
        else:
            self.fail(trial, f"duplicate of trial #{held.number}, which was still running")
            out = Outcome(trial.number, TrialState.FAIL, None, genome)
        with self._lock:
            self._running.pop(trial.number, None)
        return replace(out, duplicate_of=held.number)

    def _run(self, trial: optuna.Trial, genome: Genome) -> Outcome:
        try:
            value = float(self.objective(genome, trial))
        except optuna.TrialPruned:
            frozen = self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            return Outcome(trial.number, frozen.state, frozen.value, genome)
        except DeadlineReached as e:
            self.fail(trial, str(e), retryable=True)
            return Outcome(trial.number, TrialState.FAIL, None, genome)
        except EvaluationFailed as e:
            self.fail(trial, str(e) or "evaluation failed")
            return Outcome(trial.number, TrialState.FAIL, None, genome)
        except KeyboardInterrupt:
            self.fail(trial, INTERRUPTED)
            raise
        except UpdateFinishedTrialError:
            raise  # failed by another process meanwhile: see evaluate
        except BaseException as e:
            # Not the genome's fault (missing data, a bug, a full disk): the search stops, and the
            # trial must not count as done, so a rerun after the fix evaluates it again.
            self.fail(trial, f"{type(e).__name__}: {e}", retryable=True)
            raise
        if not math.isfinite(value):
            self.fail(trial, f"objective returned {value}")
            return Outcome(trial.number, TrialState.FAIL, None, genome)
        frozen = self.study.tell(trial, value, skip_if_finished=True)
        return Outcome(trial.number, frozen.state, frozen.value, genome)

    def fail(self, trial: optuna.Trial, reason: str, retryable: bool = False) -> None:
        """End a trial as FAIL with user attr `failure` = reason (if it has not ended already);
        a `retryable` failure does not count toward --trials."""
        with self._lock:
            self._running.pop(trial.number, None)
        try:
            trial.set_user_attr("failure", reason)
            if retryable:
                trial.set_user_attr("retryable", True)
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        except (UpdateFinishedTrialError, RuntimeError):
            pass  # already ended, e.g. by interrupt_running from the main thread

    def interrupt_running(self) -> list[int]:
        """Mark this process's running trials FAIL with failure "interrupted" (after Ctrl-C,
        from the main thread while workers may still be running them)."""
        with self._lock:
            running = list(self._running.values())
        for trial in running:
            self.fail(trial, INTERRUPTED)
        return [t.number for t in running]
