"""Which folder a run writes: a new one, the one of the run it resumes, or a fork beside it.

- A new run takes the user's `output_dir`, else the adapter's folder (a logger's version folder), else a new
  timestamped folder; a folder that holds another run is never reused (the run goes to a new subfolder).
- A run resumed from a checkpoint continues the folder the checkpoint names, trimming the step records past the
  checkpoint (work lost with the crash, reported beside the totals), unless that would take the folder from
  someone: then it forks, as a new run in the folder a new run would take, recording its parent run and step.
  It forks when the user's `output_dir` (or the adapter's home, the Trainer's `output_dir`) does not hold the
  checkpoint's folder, when the checkpoint's run went on past it and finished (a branch from its middle), and when
  another live process is writing that folder. A fork's totals include its parent's up to the checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from carbon_callbacks._record.folder import claim_existing, claim_for_new_run, claim_fresh, is_within
from carbon_callbacks._record.names import STEPS_FILE
from carbon_callbacks._record.reader import read_summary, steps_path
from carbon_callbacks._record.steplog import StepLog, Trimmed, number, record_end
from carbon_callbacks._record.store import RunStore


@dataclass(frozen=True)
class Place:
    """Where a run's folder may go.

    Attributes:
        output_dir: the user's folder for this run. `None`: not given.
        default_dir: the adapter's folder for this run (a logger's version folder). `None`: none.
        default_parent: else a new timestamped folder under this one.
        home: a resumed run continues its checkpoint's folder only inside this one (the user's `output_dir` wins).
            `None`: anywhere.
    """

    output_dir: Path | None = None
    default_dir: Path | None = None
    default_parent: Path = Path("carbon-runs")
    home: Path | None = None


@dataclass(frozen=True)
class Opened:
    """The store a run writes through, and how it came to be: `"new"`, `"continued"` or `"forked"`."""

    store: RunStore
    how: str
    trimmed: Trimmed = Trimmed()
    why: str = ""


def open_store(
    place: Place,
    restored: dict | None,
    warn: Callable[[str, str], None],
    say: Callable[[str], None],
) -> Opened:
    """Claims the run's folder (see the module docstring); a folder that cannot be written gives a store that
    writes nothing, warned once.

    Args:
        place: where the run's folder may go.
        restored: a checkpoint's state (`RunSession.state_dict()`): its `run_dir`, `run_id`, `steps` and the
            record of its open interval (`pending_record`). Defaults to a new run when `None`.
        warn: `(key, message)`, warns once per run.
        say: prints one line for the user (a folder that moved, a fork).
    """
    wanted = place.output_dir or place.default_dir or place.default_parent
    try:
        if restored is not None and restored.get("run_dir"):
            return _resume(place, restored, warn, say)
        return Opened(_new(place, warn, say), "new")
    except OSError as err:
        warn("output_dir", f"carbon-callbacks: cannot write the run files to {str(wanted)!r} ({type(err).__name__}: "
             f"{err}); the run is kept in memory and its metrics are still logged. Pass output_dir= a writable "
             "directory to keep the files.")
        return Opened(RunStore(warn=warn), "new")


def _new(place: Place, warn, say, parent: dict | None = None) -> RunStore:
    target = place.output_dir or place.default_dir
    if target is None:
        claim = claim_fresh(place.default_parent)
    else:
        claim, moved = claim_for_new_run(Path(target))
        if moved:
            say(f"carbon-callbacks: {target} already holds a run; this run is written to {claim.folder}")
    steps = StepLog(claim.folder / STEPS_FILE)
    try:
        steps.create()
    except OSError:
        claim.release()
        raise
    return RunStore(claim, steps, warn, parent=parent)


def _resume(place: Place, restored: dict, warn, say) -> Opened:
    folder = Path(restored["run_dir"])
    steps = int(restored.get("steps") or 0)
    home = place.output_dir or place.home
    why, claim = "", None
    if home is not None and not is_within(folder, home):
        why = f"its folder {folder} is not inside {home}"
    elif _finished_past(folder, steps):
        why = f"that run went on past step {steps} and finished"
    else:
        try:
            claim = claim_existing(folder)
        except FileNotFoundError:
            why = f"its folder {folder} is gone"
        if claim is None and not why:
            why = "another process is writing its folder"
    if claim is None:
        parent = {"run_id": restored.get("run_id"), "run_dir": str(folder), "steps": steps,
                  "totals_include_parent": True}
        store = _new(place, warn, say, parent=parent)
        say(f"carbon-callbacks: this run forks from run {restored.get('run_id') or folder} at step {steps} ({why}); "
            f"it is written to {store.folder}, and its totals include the parent's.")
        return Opened(store, "forked", why=why)
    pending = restored.get("pending_record")
    pending_steps = int(pending.get("num_steps", 0)) if isinstance(pending, dict) else 0
    log = StepLog(steps_path(folder))
    try:
        trimmed = log.reopen(keep_steps=steps - pending_steps)
    except OSError:
        claim.release()
        raise
    store = RunStore(claim, log, warn, parent=restored.get("parent"))
    if pending_steps:  # the checkpoint's open interval: written again, and not lost
        store.add(pending, steps - pending_steps + 1, record_end(pending, steps - pending_steps))
        trimmed = dataclasses.replace(
            trimmed,
            steps=max(trimmed.steps - pending_steps, 0),
            seconds=max(trimmed.seconds - number(pending.get("seconds")), 0.0),
            energy_kwh=max(trimmed.energy_kwh - number(pending.get("step_energy_kwh")), 0.0),
        )
    return Opened(store, "continued", trimmed)


def _finished_past(folder: Path, steps: int) -> bool:
    """Whether the run in `folder` ended `finished` with more steps than `steps`."""
    try:
        summary = read_summary(folder)
    except Exception:  # an unreadable run.json: leave it to the claim
        return False
    if not summary:
        return False
    done = summary.get("steps")
    return summary.get("status") == "finished" and isinstance(done, int) and done > steps
