"""The files of a run folder."""

#: The run's summary, replaced atomically at every flush.
RUN_FILE = "run.json"
#: The step log: a CSV header, then one line per logging interval, appended in batches (`schema.STEP_COLUMNS`).
STEPS_FILE = "steps.csv"
#: The step log of versions before the CSV one: one JSON object per line. Still read, and continued where a run
#: of such a version is resumed.
LEGACY_STEPS_FILE = "steps.jsonl"
#: The report card in Markdown (`carbon-callbacks report RUN_DIR --markdown`), written at a run's end.
REPORT_FILE = "report.md"
#: Created with `O_EXCL` to claim the folder for one run; holds the run's id, and is locked while a process writes.
CLAIM_FILE = ".carbon-run"
