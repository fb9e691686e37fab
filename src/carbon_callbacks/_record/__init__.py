"""The run record: the files a run leaves, how they are claimed, written and read back.

- `names`: the file names of a run folder.
- `folder`: one run, one folder, claimed atomically (an exclusive `mkdir` or an `O_EXCL` claim file, held with a
  lock while a process writes it).
- `steplog`: `steps.jsonl`, appended in whole records: a failed append is trimmed back, a torn tail trimmed when
  the log is opened again, and records past a checkpoint trimmed when a run resumes from it.
- `store`: what the run session writes through: a bounded buffer of records, the flush policy, `run.json`, and
  the record of what the step log holds (`step_log` in `run.json`). It never raises into training.
- `reader`: the one reader of run folders (reports, `load_run`, the what-if, resume), which skips and names a bad
  line instead of rejecting the run.
"""
