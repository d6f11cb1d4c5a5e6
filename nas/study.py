"""Optuna studies of a search: storage, naming, trial records, liveness and de-duplication.

What a study and its trials contain is the contract in docs/design.md ("Study and trial
records"); this module is the only writer of it. A genome is evaluated through an `Objective`
(`Callable[[Genome, optuna.Trial | None], float]`): `nas.objective.TrainingObjective` trains it,
tests and benchmarks pass a cheap stand-in. `Evaluator` turns each evaluation into one trial: it records
the genome, reuses the result when the genome was already evaluated in the study, keeps a
heartbeat while it runs, and marks the trial failed or pruned when it ends badly. For a
sampler's proposals it also keeps workers apart: a genome held anywhere in the study, running
in another process included, makes the trial a duplicate that does not count (`holder`).

Liveness: a running trial sends a heartbeat every `NAS_HEARTBEAT_SECONDS` (default 30); one
silent for twice that belongs to a dead process, and `fail_stale_trials` marks it FAIL and
queues a retry with the same parameters. On RDB storages (SQLite, PostgreSQL, MySQL) this is
Optuna's own heartbeat (`RDBStorage(heartbeat_interval=..., grace_period=...)`, timed by the
database's clock, so workers on machines whose clocks differ agree) and its
`RetryHeartbeatStaleTrialCallback`. Journal files have no heartbeat in Optuna: there nas keeps
its own (a system attr with the writer's wall-clock time, and the same retry records).

Several processes, on one machine or many, may share a study: a genome is trained by at most
one live trial at a time (`Evaluator` waits for an earlier trial of the same genome in any
process and reuses its result).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from nas.counting import count_flops, count_params
from nas.errors import NasError
from nas.finalists import seconds_spent
from nas.spaces import Genome, Space

if TYPE_CHECKING:
    from nas.training import Recipe

DEFAULT_STORAGE = "sqlite:///studies/nas.db"
JOURNAL_SUFFIXES = (".log", ".jsonl")
HEARTBEAT_ENV = "NAS_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_S = 30.0
HEARTBEAT_ATTR = "nas:heartbeat"
MAX_RETRY = 2
INTERRUPTED = "interrupted"
DIED = "process died during the trial (heartbeat lost)"
SCORES = ("val", "asymptote")
# Attrs that describe what a trial evaluates; a retry inherits them, results are not inherited.
IDENTITY_ATTRS = ("genome", "genome_str", "params", "flops", "recipe", "searcher", "role", "step")
RESULT_ATTRS = ("curve", "val_acc", "asymptote", "asymptote_std", "wall_time_s", "device")
# On a sampler's proposal of a genome the study already held: the holder's trial number.
DUPLICATE_ATTR = "duplicate_of"
# System attr of a trial whose sampler chose the genome itself (fdpg's walk): {genome, role, step}.
PROPOSAL_ATTR = "nas:proposal"

Objective = Callable[[Genome, "optuna.Trial | None"], float]


class NothingToPropose(Exception):
    """Raised by a sampler that chooses genomes itself when a trial asks for genes but every
    evaluation it needs is held by another trial (workers in other processes claimed them at
    the same moment): give the trial back."""


@dataclass(frozen=True)
class SamplerNeeds:
    """What a searcher needs from the search loop (`nas.trials`) and the search; a sampler
    declares it as its `needs` attribute, Optuna's samplers take the defaults.

    prunable:       its trials may be stopped early by a pruner (a walk that differences scores
                    needs complete trainings: no)
    proposes_start: it evaluates the start and transfer genomes itself, as its own proposals,
                    so the search does not queue them as trials
    distinct:       a proposal of a genome the study already holds is a duplicate to skip (a walk
                    may revisit a genome on purpose: the result is reused and counts)
    paced:          it has a `state(study)` saying whether it has evaluations to hand out now,
                    must wait for trials running elsewhere, or has ended (and why)
    """

    prunable: bool = True
    proposes_start: bool = False
    distinct: bool = True
    paced: bool = False


def sampler_needs(sampler: optuna.samplers.BaseSampler) -> SamplerNeeds:
    """What `sampler` needs from the loop: its own `needs`, else an Optuna sampler's."""
    return getattr(sampler, "needs", SamplerNeeds())


class EvaluationFailed(Exception):
    """An objective could not score a genome (e.g. training diverged); the trial is marked FAIL."""


class DeadlineReached(EvaluationFailed):
    """The search's time limit passed during the trial, which stopped at an epoch boundary. The
    trial is marked FAIL with this reason but not counted as done: a rerun trains it again."""


# ---------------------------------------------------------------- storage


def is_journal(storage: str) -> bool:
    return "://" not in storage and storage.endswith(JOURNAL_SUFFIXES)


def storage_url(storage: str | None = None) -> str:
    """The storage as Optuna takes it: the default SQLite file under `studies/`, any Optuna
    storage URL, or a path ending in .log/.jsonl for a journal file shared by several processes.
    Touches no file (see `resolve_storage`)."""
    url = storage or DEFAULT_STORAGE
    if "://" in url:
        return url
    if not is_journal(url):
        raise NasError(
            f"storage '{url}' is neither a storage URL (e.g. sqlite:///studies/nas.db, "
            f"postgresql://...) nor a journal file path ending in {' or '.join(JOURNAL_SUFFIXES)}"
        )
    return str(Path(url).expanduser())


def resolve_storage(storage: str | None = None, create: bool = True) -> str:
    """`storage_url(storage)`, with the file system ready for it: with `create`, the folder of a
    SQLite or journal file is made; without, a SQLite or journal file that does not exist is a
    NasError (Optuna would silently create an empty one)."""
    url = storage_url(storage)
    path = storage_file(url)
    if path is None:
        return url
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.is_file():
        raise NasError(
            f"no study storage at '{path}'"
            + (f" (from {url})" if str(path) != url else "")
            + ("" if storage else "; pass --storage, or run nas search first")
        )
    return url


def storage_database(url: str) -> str | None:
    """Where a storage URL (or journal file path) keeps its studies: the journal file, the SQLite
    file, or a server's database name; None when it names none. URLs are parsed by SQLAlchemy,
    as Optuna's RDBStorage parses them (the query string is not part of the name)."""
    if is_journal(url):
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).database or None
    except ArgumentError:  # not a URL Optuna could open either; opening it says why
        return None


def storage_file(url: str) -> Path | None:
    """The local file of a journal or SQLite storage; None for a database server or an in-memory
    SQLite database."""
    if is_journal(url):
        return Path(url)
    database = storage_database(url) if url.startswith("sqlite:") else None
    return Path(database) if database and database != ":memory:" else None


def open_storage(storage: str | None = None, create: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for `storage` (see `resolve_storage`), or a one-line NasError."""
    url = resolve_storage(storage, create)
    try:
        if is_journal(url):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url))
        if url.startswith("sqlite"):
            _sqlite_wal(url)
            # SQLite serialises writers: wait for the lock instead of failing when processes share it.
            kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}
        else:
            # A worker's connection sits idle for a whole training run; a server or firewall may
            # have dropped it by then: test it before use instead of failing the tell.
            kwargs = {"pool_pre_ping": True}
        with warnings.catch_warnings():  # the heartbeat arguments are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, **_optuna_heartbeat_options())
    except NasError:
        raise
    except Exception as e:  # bad URL, missing driver, unreachable server: all the user's to fix
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, ImportError) and url.startswith("postgres"):
            reason += " (PostgreSQL needs a driver: pip install 'psycopg[binary]', and a postgresql+psycopg:// URL)"
        raise NasError(f"cannot open storage '{url}': {reason}") from None


def _optuna_heartbeat_options() -> dict[str, Any]:
    """RDBStorage's heartbeat: every NAS_HEARTBEAT_SECONDS (Optuna takes whole seconds), stale after
    twice that, and a stale trial retried (at most MAX_RETRY times) with Optuna's own callback."""
    interval = max(1, math.ceil(heartbeat_seconds()))
    try:  # Optuna >= 4.9 names it so; the older name is deprecated there
        from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

        key = "heartbeat_stale_trial_callback"
    except ImportError:
        from optuna.storages import RetryFailedTrialCallback as Retry

        key = "failed_trial_callback"
    return {"heartbeat_interval": interval, "grace_period": 2 * interval, key: Retry(max_retry=MAX_RETRY)}


def _sqlite_wal(url: str) -> None:
    """Switch a SQLite file to write-ahead logging (persistent in the file): with the default
    rollback journal, a reader (a heartbeat, another job's query) stalls every writer's commit."""
    import sqlite3

    path = storage_file(url)
    if path is None:
        return
    con = sqlite3.connect(path, timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def dashboard_command(storage: str | None = None) -> str:
    """The shell command that opens the storage in optuna-dashboard (absolute SQLite path)."""
    url = storage_url(storage)
    path = storage_file(url)
    if path is not None and not is_journal(url) and not path.is_absolute():
        url = "sqlite:///" + str(path.resolve())
    return f"optuna-dashboard {url}"


# ---------------------------------------------------------------- studies

DEFAULT_VAL_SIZE = 5000


def study_name(
    space: str,
    budget: int,
    recipe: Recipe,
    score: str = "val",
    subset: int | None = None,
    val_size: int = DEFAULT_VAL_SIZE,
) -> str:
    """`{space}-b{budget}-{recipe.tag}`. Scores by the asymptote, or from a training subset or
    another validation split, must not be mixed with plain ones: those get a suffix
    (`-asym`, `-sub{N}`, `-val{N}`)."""
    name = f"{space}-b{budget}-{recipe.tag}"
    if score == "asymptote":
        name += "-asym"
    if subset:
        name += f"-sub{subset}"
    if val_size != DEFAULT_VAL_SIZE:
        name += f"-val{val_size}"
    return name


def open_study(
    storage: str | optuna.storages.BaseStorage | None,
    space: Space,
    budget: int,
    recipe: Recipe,
    *,
    tol: float,
    searcher: str,
    score: str = "val",
    subset: int | None = None,
    val_size: int = DEFAULT_VAL_SIZE,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create or resume the study of (space, budget, recipe) and record its user attrs."""
    if score not in SCORES:
        raise NasError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    st = storage if isinstance(storage, optuna.storages.BaseStorage) else open_storage(storage)
    name = study_name(space.name, budget, recipe, score, subset, val_size)
    study = optuna.create_study(
        storage=st, study_name=name, direction="maximize", load_if_exists=True, sampler=sampler, pruner=pruner
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise NasError(f"study '{name}' exists and minimises; use another --storage")
    attrs = dict(study.user_attrs)
    if "tol" in attrs and not math.isclose(float(attrs["tol"]), tol):
        raise NasError(
            f"study '{name}' was searched with --tol {attrs['tol']}; rerun with that tolerance or use another --storage"
        )
    wanted = {
        "space": space.name,
        "family": space.family.name,
        "budget": budget,
        "tol": tol,
        "recipe": recipe.to_dict(),
        "score": score,
        "train_subset": subset,
        "val_size": val_size,
    }
    for key, value in wanted.items():
        if attrs.get(key) != value:
            study.set_user_attr(key, value)
    # Several searchers may work on one study (they share its results): all are listed.
    used = [s for s in str(attrs.get("searcher", "")).split(",") if s]
    if searcher not in used:
        study.set_user_attr("searcher", ",".join([*used, searcher]))
    return study


def genome_attrs(genome: Genome) -> dict[str, Any]:
    return {
        "genome": genome.to_json(),
        "genome_str": str(genome),
        "params": count_params(genome),
        "flops": count_flops(genome),
    }


def trial_genome(t: FrozenTrial) -> Genome | None:
    text = t.user_attrs.get("genome")
    return Genome.from_json(text) if isinstance(text, str) else None


def trial_genome_by_number(study: str, number: int, storage: str | None = None) -> Genome:
    """The genome of trial `number` of study `study` in `storage` (a GENOME `STUDY#N`), or a
    one-line NasError naming what is missing: the storage, the study or the trial."""
    st = open_storage(storage, create=False)
    names = optuna.get_all_study_names(st)
    if study not in names:
        listed = ", ".join(sorted(names)[:10]) + (", ..." if len(names) > 10 else "")
        raise NasError(f"no study '{study}' in {storage_url(storage)} (studies: {listed or 'none'})")
    trials = optuna.load_study(study_name=study, storage=st).get_trials(deepcopy=False)
    found = [t for t in trials if t.number == number]
    if not found:
        have = f"trials #0..#{len(trials) - 1}" if trials else "no trials"
        raise NasError(f"study '{study}' has no trial #{number} ({have})")
    genome = trial_genome(found[0])
    if genome is None:
        raise NasError(f"trial #{number} of study '{study}' has no genome")
    return genome


def trial_proposal(trial: optuna.Trial) -> dict[str, Any] | None:
    """The genome, role and step a sampler chose for `trial` itself (PROPOSAL_ATTR), if it did."""
    return trial.storage.get_trial_system_attrs(_trial_id(trial)).get(PROPOSAL_ATTR)


def counts_as_done(t: FrozenTrial) -> bool:
    """Finished for good: complete, pruned, or failed for a reason that a rerun would not fix
    (interrupted and dead-process trials are not done: a rerun evaluates them again). A sampler's
    proposal of a genome the study already held (`duplicate_of`) is not an evaluation at all."""
    if DUPLICATE_ATTR in t.user_attrs:
        return False
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return (
        t.state == TrialState.FAIL
        and t.user_attrs.get("failure") not in (INTERRUPTED, DIED, None)
        and not t.user_attrs.get("retryable")
    )


def searcher_trials(
    study: optuna.Study, searcher: str, states: tuple[TrialState, ...] | None = None
) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=states) if t.user_attrs.get("searcher") == searcher]


def in_budget(t: FrozenTrial, budget: int) -> bool:
    return isinstance(t.user_attrs.get("params"), int) and t.user_attrs["params"] <= budget


def search_seconds(trials: Iterable[FrozenTrial], attrs: dict[str, Any]) -> float:
    """The time a study's search has taken: its finished trials' durations and its finalists'
    retraining (a sweep's rerun with the same --time spends only what is left)."""
    return sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None
    ) + seconds_spent(attrs)


def top_trials(study: optuna.Study, budget: int, n: int | None = 10) -> list[FrozenTrial]:
    """The `n` (None: all) best completed trials within the budget, one per genome, best first."""
    seen, out = set(), []
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and in_budget(t, budget)
    ]
    for t in sorted(done, key=lambda t: (-t.value, t.number)):
        if t.user_attrs.get("genome") not in seen:
            seen.add(t.user_attrs.get("genome"))
            out.append(t)
    return out[:n]


# ---------------------------------------------------------------- liveness


def heartbeat_seconds() -> float:
    text = os.environ.get(HEARTBEAT_ENV)
    if not text:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(text)
    except ValueError:
        raise NasError(f"{HEARTBEAT_ENV} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise NasError(f"{HEARTBEAT_ENV} must be positive, got {text!r}")
    return value


def _trial_id(t: optuna.Trial | FrozenTrial) -> int:
    return t._trial_id  # Optuna exposes no public id; the storage API needs it


def optuna_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether `storage` keeps Optuna's own heartbeat: an RDBStorage opened by `open_storage`, also
    as a study holds it (wrapped in Optuna's cache, which passes the heartbeat through)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def beat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """One heartbeat of a running trial: Optuna's where the storage has one, else nas's attr."""
    if optuna_heartbeat(storage):
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())


@contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int, interval: float | None = None) -> Iterator[None]:
    """Send the trial's heartbeat now and every `interval` seconds (default: the storage's, else
    NAS_HEARTBEAT_SECONDS) until the block ends."""
    if interval is None:
        interval = storage.get_heartbeat_interval() if optuna_heartbeat(storage) else heartbeat_seconds()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                beat(storage, trial_id)
            except UpdateFinishedTrialError:
                return
            except Exception:  # a database hiccup: a missed beat is harmless, a dead thread is not
                continue

    beat(storage, trial_id)
    thread = threading.Thread(target=loop, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def failure_reason(t: FrozenTrial) -> str | None:
    """Why a trial failed: its `failure` attr; a FAIL without one was failed by Optuna's heartbeat
    check (it cannot write attrs to the trial it fails), i.e. its process died."""
    reason = t.user_attrs.get("failure")
    if reason is None and t.state == TrialState.FAIL:
        return DIED
    return reason


def fail_stale_trials(study: optuna.Study, interval: float | None = None) -> list[int]:
    """Mark RUNNING trials whose heartbeat stopped as FAIL and queue a retry of each (at most
    MAX_RETRY per original trial); returns the failed trial numbers. RDB storages: Optuna's
    `fail_stale_trials` and retry callback; journal files: nas's own (`failure` = DIED)."""
    storage = study._storage  # the storage API is the only way to write another process's trial
    if optuna_heartbeat(storage):
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        if not running:
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return sorted(
            t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in running
        )
    grace = 2 * (interval or heartbeat_seconds())
    now, failed = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = t.system_attrs.get(HEARTBEAT_ATTR)
        if not isinstance(last, (int, float)) or now - last <= grace:
            continue  # alive, or not a nas trial
        try:
            storage.set_trial_user_attr(_trial_id(t), "failure", DIED)
            if not storage.set_trial_state_values(_trial_id(t), TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process got there first
        failed.append(t.number)
        enqueue_retry(study, t)
    return failed


def enqueue_retry(study: optuna.Study, t: FrozenTrial) -> None:
    """A WAITING copy of `t` (params, identity attrs and proposal), marked like Optuna's retry
    callback's (which copies every system attr)."""
    history = [*t.system_attrs.get("retry_history", []), t.number]
    if len(history) > MAX_RETRY:
        return
    proposal = {PROPOSAL_ATTR: t.system_attrs[PROPOSAL_ATTR]} if PROPOSAL_ATTR in t.system_attrs else {}
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=t.params,
            distributions=t.distributions,
            user_attrs={k: t.user_attrs[k] for k in IDENTITY_ATTRS if k in t.user_attrs},
            system_attrs={
                "failed_trial": t.system_attrs.get("failed_trial", t.number),
                "retry_history": history,
                **proposal,
            },
        )
    )


# ---------------------------------------------------------------- evaluating genomes as trials


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
        beat(self.study._storage, _trial_id(trial))
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
        optuna_beats = optuna_heartbeat(self.study._storage)
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
                    beat = t.system_attrs.get(HEARTBEAT_ATTR)
                    alive = optuna_beats or (isinstance(beat, (int, float)) and now - beat <= grace)
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
        with heartbeat(self.study._storage, _trial_id(trial)):
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
