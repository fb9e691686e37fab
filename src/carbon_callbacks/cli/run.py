"""`carbon-callbacks run -- COMMAND ...`: meter a command from start to end, like wrapping a training script.

The command's own output passes through untouched; the energy and CO2e follow it (on stderr as text, or on stdout
as one final JSON line with `--json`). The exit code is the command's.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys

from carbon_callbacks._errors import InvalidInputError
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
    host_share = args.host_share
    if host_share is None:
        host_share = True
    elif host_share is not False:
        try:
            host_share = float(host_share)
        except ValueError:
            raise InvalidInputError(f"--host-share must be watts per accelerator, got {host_share!r}.") from None
    meter = create_meter(
        args.chip,
        args.num_chips,
        host_share=host_share,
        rapl=not args.no_rapl,
        nvml=not args.no_nvml,
        tdp_w=args.tdp_w,
        include_children=True,
    )
    accountant = Accountant(site, chip=args.chip, num_chips=args.num_chips or 1)
    sys.stdout.flush()
    meter.begin_window("run")
    try:
        try:
            child = subprocess.Popen(command)
        except OSError as err:
            meter.close()
            print(f"carbon-callbacks run: error: cannot start {command[0]!r}: {err.strerror}", file=sys.stderr)
            return 127 if isinstance(err, FileNotFoundError) else 126
        while True:
            try:
                returncode = child.wait()
                break
            except KeyboardInterrupt:  # the terminal sent SIGINT to the child too; wait for it to finish
                child.send_signal(signal.SIGINT)
        measurement = meter.end_window("run")
    finally:
        meter.close()
    accountant.update(seconds=measurement.seconds, energy_j=measurement.energy_j, energy_method=measurement.methods)
    summary = accountant.close()
    result = {
        "command": command,
        "exit_code": _exit_code(returncode),
        "wall_time_s": measurement.seconds,
        "energy_kwh": summary["energy_kwh"],
        "it_energy_kwh": summary["it_energy_kwh"],
        "energy_j_by_component": measurement.energy_j,
        "energy_method": summary["energy_method"],
        "energy_methods": summary["energy_methods"],
        "gross_co2e_kg": summary["gross_co2e_kg"],
        "net_co2e_kg": summary["net_co2e_kg"],
        "pue": site.pue,
        "gross_kg_per_kwh": site.gross_kg_per_kwh,
        "net_kg_per_kwh": site.net_kg_per_kwh,
        "region": site.region,
        "sources": summary["sources"],
        "devices_j": measurement.devices,
        "meter_notes": list(meter.notes),
        "warnings": list(measurement.warnings),
    }
    sys.stdout.flush()
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(
            f"carbon-callbacks: {fmt_number(result['wall_time_s'])} s, "
            f"{fmt_number(result['energy_kwh'])} kWh (facility, PUE {fmt_number(site.pue)}), "
            f"gross {fmt_number(result['gross_co2e_kg'])} kg CO2e, net {fmt_number(result['net_co2e_kg'])} kg CO2e "
            f"[{result['energy_method']}]",
            file=sys.stderr,
        )
    return result["exit_code"]
