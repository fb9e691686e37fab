"""`carbon-callbacks run -- COMMAND ...`: meter a command from start to end, like wrapping a training script.

The command's own output passes through untouched; the energy and CO2e follow it (on stderr as text, or on stdout
as one final JSON line with `--json`). The exit code is the command's.

Under a launcher (`srun`, `torchrun`, `mpirun`: several tasks, each running this command), one task per host
meters the host (local rank 0: RAPL, or the host's CPU time modeled, and every GPU on it) and the others only run
the command; the hosts' measurements are added up by the job's rank 0 into one run folder (`--output-dir`, on a
file system every host reaches; by default `carbon-runs/job-<job id>`), which prints the result. Every task exits
with its command's exit code.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks._host import Host, from_launcher, hosts_in_job, job_id
from carbon_callbacks._record.folder import claim_fresh, claim_new
from carbon_callbacks._record.hosts import combined, gather, write_part
from carbon_callbacks._record.names import STEPS_FILE
from carbon_callbacks._record.schema import strict_json
from carbon_callbacks._record.steplog import StepLog
from carbon_callbacks._record.store import RunStore
from carbon_callbacks._reports.format import fmt_number
from carbon_callbacks._run.accountant import Accountant
from carbon_callbacks._site.site import resolve_site
from carbon_callbacks.cli._site_args import add_site_arguments, site_kwargs
from carbon_callbacks.meters import create_meter


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="meter a command's energy and CO2e from start to end",
        description=(
            "Runs COMMAND, meters the machine's energy while it runs (NVML for NVIDIA GPUs, RAPL for CPU and DRAM, "
            "else a labelled model) and reports energy and gross/net CO2e. Exits with COMMAND's exit code."
        ),
        usage="carbon-callbacks run [--region R | --intensity X] [--pue P] [--json] [options] -- COMMAND ...",
    )
    add_site_arguments(parser, "site (a region or an intensity is required)")
    meter = parser.add_argument_group("meter")
    meter.add_argument("--chip", help="the accelerator, from `carbon-callbacks tables chips` (TPUs are modeled)")
    meter.add_argument("--num-chips", type=int, help="accelerators the command uses (modeled chips, host share)")
    meter.add_argument(
        "--host-share",
        nargs="?",
        const=None,
        default=False,
        metavar="W",
        help="add the accelerators' modeled share of the host (W per accelerator; default figure if no W)",
    )
    meter.add_argument("--tdp-w", type=float, help="CPU TDP per socket for the modeled CPU meter, W")
    meter.add_argument("--no-rapl", action="store_true", help="model the CPU without trying RAPL (no warning)")
    meter.add_argument("--no-nvml", action="store_true", help="model the GPUs without trying NVML (no warning)")
    parser.add_argument("--json", action="store_true", help="print one JSON line on stdout after COMMAND's output")
    job = parser.add_argument_group("under a launcher (srun, torchrun, mpirun)")
    job.add_argument("--output-dir", metavar="DIR", help="the run folder (under a launcher: on a file system every "
                     "host reaches; default carbon-runs/job-<job id>)")
    job.add_argument("--gather-timeout", type=float, default=300.0, metavar="S",
                     help="how long rank 0 waits for the other hosts' measurements (default 300 s)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- COMMAND ...", help="the command to run")
    parser.set_defaults(func=run)


def _exit_code(returncode: int) -> int:
    """The shell's convention: a command killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def run(args) -> int:
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidInputError("COMMAND is missing: usage `carbon-callbacks run --intensity 0.4 -- python train.py`.")
    site = resolve_site(**site_kwargs(args))
    if site.traced:
        site.check_start(time.time())
    host = from_launcher()
    folder = _run_folder(args, host)
    if not host.leader:  # another task meters this host
        code, started = _run_command(command)
        return code if not started or host.rank != 0 else _report(args, site, folder, host, None, code)
    meter = create_meter(
        args.chip,
        args.num_chips,
        host_share=_host_share(args.host_share),
        rapl=not args.no_rapl,
        nvml=not args.no_nvml,
        tdp_w=args.tdp_w,
        include_children=True,
        host=host,
        devices="host" if host.world > 1 else "auto",
        cpu_scope="host" if host.world > 1 else "process",
    )
    sys.stdout.flush()
    meter.begin_window("run")
    try:
        code, started = _run_command(command)
        measurement = meter.end_window("run")
    finally:
        meter.close()
    if not started:
        return code
    if host.world > 1:
        write_part(folder, host.name, measurement, code)
        if host.rank != 0:
            return code
    return _report(args, site, folder, host, measurement, code, list(meter.notes))


def _run_command(command: list[str]) -> tuple[int, bool]:
    """Runs `command` to its end: its exit code, and whether it started (else 127, not found, or 126, as a shell
    says)."""
    try:
        child = subprocess.Popen(command)
    except OSError as err:
        print(f"carbon-callbacks run: error: cannot start {command[0]!r}: {err.strerror}", file=sys.stderr)
        return (127 if isinstance(err, FileNotFoundError) else 126), False
    while True:
        try:
            return _exit_code(child.wait()), True
        except KeyboardInterrupt:  # the terminal sent SIGINT to the child too; wait for it to finish
            child.send_signal(signal.SIGINT)


def _host_share(value) -> bool | float:
    if value is None:
        return True
    if value is False:
        return False
    try:
        return float(value)
    except ValueError:
        raise InvalidInputError(f"--host-share must be watts per accelerator, got {value!r}.") from None


def _run_folder(args, host: Host) -> Path | None:
    """The run folder: `--output-dir`; under a launcher, by default `carbon-runs/job-<job id>`."""
    if args.output_dir:
        return Path(args.output_dir)
    if host.world == 1:
        return None
    if (job := job_id()) is None:
        raise InvalidInputError(f"this is task {host.rank} of {host.world} under a launcher: pass --output-dir, a "
                                "folder every host reaches, where the hosts' measurements are added up.")
    return Path("carbon-runs") / f"job-{job}"


def _report(args, site, folder: Path | None, host: Host, measurement, code: int, notes=()) -> int:
    """Rank 0: the run's figures (the hosts' added up under a launcher), the run folder, the printed result."""
    hosts = None
    if host.world > 1:
        expected = hosts_in_job()
        parts = gather(folder, expected, args.gather_timeout)
        if not parts:
            print(f"carbon-callbacks run: no host's measurement reached {folder / 'hosts'}", file=sys.stderr)
            return code
        measurement, hosts = combined(parts), {"hosts": [p["host"] for p in parts], "expected": expected}
    accountant = Accountant(site, chip=args.chip, num_chips=args.num_chips or 1, world_size=host.world)
    accountant.annotate(command=list(args.cmd), exit_code=code, **({"job": hosts} if hosts else {}))
    record = accountant.update(seconds=measurement.seconds, energy_j=measurement.energy_j,
                               energy_method=measurement.methods)
    summary = accountant.close("finished" if code == 0 else "failed")
    if folder is not None:
        _write_folder(folder, summary, record)
    result = {
        "command": args.cmd, "exit_code": code, "wall_time_s": measurement.seconds,
        "energy_kwh": summary["energy_kwh"], "it_energy_kwh": summary["it_energy_kwh"],
        "energy_j_by_component": measurement.energy_j, "energy_method": summary["energy_method"],
        "energy_methods": summary["energy_methods"], "gross_co2e_kg": summary["gross_co2e_kg"],
        "net_co2e_kg": summary["net_co2e_kg"], "pue": site.pue, "gross_kg_per_kwh": site.gross_kg_per_kwh,
        "net_kg_per_kwh": site.net_kg_per_kwh, "region": site.region, "sources": summary["sources"],
        "devices_j": measurement.devices, "meter_notes": list(notes), "warnings": list(measurement.warnings),
        **({"job": hosts, "run_dir": str(folder)} if hosts else {}),
    }
    sys.stdout.flush()
    if args.json:
        print(strict_json(result), flush=True)
    else:
        print(
            f"carbon-callbacks: {fmt_number(result['wall_time_s'])} s, "
            f"{fmt_number(result['energy_kwh'])} kWh (facility, PUE {fmt_number(site.pue)}), "
            f"gross {fmt_number(result['gross_co2e_kg'])} kg CO2e, net {fmt_number(result['net_co2e_kg'])} kg CO2e "
            f"[{result['energy_method']}]" + (f", {len(hosts['hosts'])} host(s)" if hosts else ""),
            file=sys.stderr,
        )
    return code


def _write_folder(folder: Path, summary: dict, record: dict) -> None:
    """`run.json` and a one-record step log in the run folder (claimed as every run folder is)."""
    claim = claim_new(folder)
    if claim is None:
        claim = claim_fresh(folder)
        print(f"carbon-callbacks: {folder} already holds a run; this run is written to {claim.folder}", file=sys.stderr)
    log = StepLog(claim.folder / STEPS_FILE)
    log.create()
    store = RunStore(claim, log)
    store.add(record, 1, 1)
    store.flush(summary)
    store.close()
