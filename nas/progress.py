"""Progress a person can read: tqdm bars on stderr, drawn only when asked for and stderr is a
terminal, so a log file gets the commands' own lines instead of bar redraws (`EpochLines` for a
long training); and a search's progress over its trials (`SearchProgress`)."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from nas.text import duration, plural

if TYPE_CHECKING:
    from nas.evaluator import Outcome


def progress_bar(total: int, enabled: bool, **options: Any) -> tqdm:
    """A bar over `total` steps (tqdm `options`: unit, desc, ...); silent unless `enabled` and
    stderr is a terminal (tqdm's `disable=None`)."""
    return tqdm(total=total, disable=None if enabled else True, **options)


class EpochLines:
    """A long training's progress in a log file, where its bar is silent: after an epoch, at most
    once every LOG_EVERY_S, one line with the epochs done and the ETA (a 1M model's final
    training runs an hour). Nothing on a terminal (the bar shows it) or when not `enabled`.
    Called as `train(..., callback=EpochLines(...))`; it never stops the training."""

    LOG_EVERY_S = 60.0

    def __init__(self, enabled: bool, what: str, epochs: int):
        self.enabled = enabled and not sys.stderr.isatty()
        self.what, self.epochs = what, epochs
        self.started = self.last = time.monotonic()
        self.before: int | None = None  # epochs done before this process started (a resumed run)

    def __call__(self, epoch: int, val_acc: float | None) -> None:
        now = time.monotonic()
        if self.before is None:
            self.before = epoch - 1
        if not self.enabled or epoch >= self.epochs or now - self.last < self.LOG_EVERY_S:
            return
        self.last = now
        took = now - self.started
        val = "" if val_acc is None else f", val acc {val_acc:.2%}"
        print(
            f"{self.what}: epoch {epoch}/{self.epochs}{val}, {duration(took)} elapsed, "
            f"ETA {duration(took / (epoch - self.before) * (self.epochs - epoch))}",
            file=sys.stderr,
            flush=True,
        )


class SearchProgress:
    """Progress a person can read. On a terminal: a bar over the trials with the ETA and the best
    score so far (the running trial's own bar, over its batches, sits below it). In a log file: one
    line per finished trial with its time, and an ETA line at least once a minute."""

    LOG_EVERY_S = 60.0

    def __init__(
        self,
        total: int,
        done: int,
        enabled: bool,
        best: float | None,
        deadline: float | None,
        seconds_per_trial: float | None,
        counted: bool = True,
    ):
        self.total, self.done, self.enabled, self.best = total, done, enabled, best
        self.counted = counted  # False: `total` is only the plan's guess, the deadline ends the search
        self.deadline, self.estimate = deadline, seconds_per_trial
        self.started = time.time()
        self.finished = 0
        self.tty = enabled and sys.stderr.isatty()
        self.bar = progress_bar(
            total,
            enabled,
            initial=min(done, total),
            unit="trial",
            desc="search",
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = None
        if enabled and not self.tty:
            self._ticker = threading.Thread(target=self._tick, daemon=True, name="progress")
            self._ticker.start()
        self._refresh()

    def eta_s(self) -> float | None:
        """Seconds left: the remaining trials at the mean measured trial time (the calibrated
        estimate until a trial has finished), cut at the deadline; without a trial count, the
        time to the deadline."""
        per = (time.time() - self.started) / self.finished if self.finished else self.estimate
        left = None if per is None or not self.counted else max(0, self.total - self.done) * per
        if self.deadline is not None:
            until = max(0.0, self.deadline - time.time())
            left = until if left is None else min(left, until)
        return left

    def status(self) -> str:
        best = f"best {self.best:.2%}" if self.best is not None else "no result yet"
        return f"{best}, ETA {duration(self.eta_s())}"

    def _refresh(self) -> None:
        self.bar.set_postfix_str(self.status(), refresh=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.LOG_EVERY_S):
            with self._lock:
                print(
                    f"search: {self.done}/{self.total} trials, {duration(time.time() - self.started)} elapsed, "
                    f"{self.status()}",
                    file=sys.stderr,
                    flush=True,
                )

    def outcome(self, out: Outcome) -> None:
        with self._lock:
            if out.ok and (self.best is None or out.value > self.best):
                self.best = out.value
            if out.reused_from is None:
                self.finished += 1
            self.done += 1
            if self.done > self.total:  # more (e.g. pruned, shorter) trials than the plan guessed
                self.total = self.bar.total = self.done
            if not self.enabled:
                return
            self.bar.update(1)
            self._refresh()
            what = (f"{out.value:.2%}" if out.value is not None else "-") + f" {out.state.name.lower()}"
            reused = f" (reused #{out.reused_from})" if out.reused_from is not None else ""
            took = f" in {out.seconds:.0f} s" if out.seconds is not None else ""
            self.bar.write(f"trial #{out.number}: {out.genome}  {what}{took}{reused}", file=sys.stderr)

    def note(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text, file=sys.stderr)

    def wait(self, n: int) -> None:
        self.note(
            f"waiting for {plural(n, 'trial')} running in another process (or a dead one, until its heartbeat expires)"
        )

    def close(self) -> None:
        self._stop.set()
        self.bar.close()
