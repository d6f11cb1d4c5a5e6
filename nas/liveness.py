"""Liveness of running work: a trial sends a heartbeat every `NAS_HEARTBEAT_SECONDS` (default
30); one silent for twice that belongs to a dead process, and `fail_stale_trials` marks it FAIL and
queues a retry with the same parameters. RDB storages use Optuna's heartbeat and retry callback
(`nas.storage`); journal files, which have none in Optuna, get nas's own here: a system attr with
the writer's wall-clock time, and the same retry records. Work outside trials (a sweep's final
trainings) is claimed in its study the same way (`claimed`, `live_claims`), so that processes
sharing a storage do it once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from nas.storage import MAX_RETRY, heartbeat_seconds, optuna_heartbeat, trial_id
from nas.study import DIED, IDENTITY_ATTRS, PROPOSAL_ATTR

HEARTBEAT_ATTR = "nas:heartbeat"
# A study's user attr CLAIM_PREFIX + a name says a process is doing that work now: what (the
# claimer's payload), who ("host pid N") and when it last said so; None once it is done.
CLAIM_PREFIX = "training:"


def beat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """One heartbeat of a running trial: Optuna's where the storage has one, else nas's attr."""
    if optuna_heartbeat(storage):
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())


@contextmanager
def repeating(action: Callable[[], bool | None], interval: float, name: str) -> Iterator[None]:
    """Call `action` now and every `interval` seconds in a daemon thread until the block ends, or
    until it returns False. The first call's errors propagate; later ones are retried at the next
    beat (a database hiccup: a missed beat is harmless, a dead thread is not)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                if action() is False:
                    return
            except Exception:
                continue

    if action() is False:
        yield
        return
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


@contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int, interval: float | None = None) -> Iterator[None]:
    """Send the trial's heartbeat now and every `interval` seconds (default: the storage's, else
    NAS_HEARTBEAT_SECONDS) until the block ends."""
    if interval is None:
        interval = storage.get_heartbeat_interval() if optuna_heartbeat(storage) else heartbeat_seconds()

    def once() -> bool:
        try:
            beat(storage, trial_id)
        except UpdateFinishedTrialError:
            return False  # the trial ended (another process took it for dead): nothing to keep alive
        return True

    with repeating(once, interval, f"heartbeat-{trial_id}"):
        yield


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
            storage.set_trial_user_attr(trial_id(t), "failure", DIED)
            if not storage.set_trial_state_values(trial_id(t), TrialState.FAIL):
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


def _me() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


@contextmanager
def claimed(study: optuna.Study, name: str, payload: dict[str, Any]) -> Iterator[None]:
    """This process's claim on the work `name` of `study` (user attr CLAIM_PREFIX + name holding
    `payload`), renewed every heartbeat while the block runs and withdrawn after it, however it ends."""
    key, me = CLAIM_PREFIX + name, _me()

    def renew() -> None:
        study.set_user_attr(key, {**payload, "by": me, "beat": time.time()})

    try:
        with repeating(renew, heartbeat_seconds(), f"claim-{name}"):
            yield
    finally:
        study.set_user_attr(key, None)


def live_claims(study: optuna.Study) -> list[dict[str, Any]]:
    """Other processes' claims in `study` that are alive (renewed within twice the heartbeat):
    each its payload with "by" and "beat". A dead process's claim goes silent and is left out."""
    grace, now, me = 2 * heartbeat_seconds(), time.time(), _me()
    return [
        claim
        for attr, claim in study.user_attrs.items()
        if attr.startswith(CLAIM_PREFIX)
        and isinstance(claim, dict)
        and claim.get("by") != me
        and now - claim.get("beat", 0.0) <= grace
    ]
