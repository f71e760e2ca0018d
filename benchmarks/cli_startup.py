"""Start-up time of the ``s3prl-distill`` command line: ``--help``, ``--help`` of every subcommand and an argument
error, each in a fresh interpreter, as a user meets them.

    python benchmarks/cli_startup.py [--repeats 10] [--output benchmarks/results/cli_startup.json]

The commands are run round-robin (one of each per round), so a load that comes and goes on a shared machine falls on
every command alike; the median and the spread (min, max) of each are reported, with the modules each one imported
(``torch``, ``pydantic``, ``s3prl``: none should be, for these), and the slowest subcommand ``--help``. The passthrough
subcommands (``pretrain``, ``downstream``) are left out: they hand ``--help`` to the runner they start.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from s3prl_distill.profiler import cpu_name

# What a user types (with every subcommand's --help, see commands()), and what it must not import on the way to its
# answer.
FIXED = {
    "--help": ["--help"],
    "argument error": ["layer-similarity", "--measure", "nonsense"],
}
HEAVY = ("torch", "pydantic", "s3prl")
PROBE = ("import sys, runpy; sys.argv = ['s3prl-distill', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('s3prl_distill.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "sys.stderr.write('IMPORTED ' + ' '.join(m for m in {heavy!r} if m in sys.modules) + '\\n')\n")


def commands() -> Dict[str, List[str]]:
    """:data:`FIXED` and ``<command> --help`` for every subcommand that parses its own arguments."""
    from s3prl_distill.cli import assemble

    helps = {f"{name} --help": [name, "--help"] for name, parser in assemble()[1].items()
             if not parser.get_default("passthrough")}
    return {**FIXED, **helps}


def time_once(arguments: List[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "s3prl_distill.cli", *arguments], capture_output=True, check=False)
    return time.perf_counter() - start


def imported(arguments: List[str]) -> List[str]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *arguments], capture_output=True,
                            text=True, check=False)
    line = next(line for line in result.stderr.splitlines() if line.startswith("IMPORTED"))
    return line.split()[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "cli_startup.json")
    args = parser.parse_args()
    typed = commands()
    times: Dict[str, List[float]] = {name: [] for name in typed}
    python_alone: List[float] = []
    for _ in range(args.repeats):
        python_alone.append(_bare_python())  # the interpreter's own start, in the same rounds
        for name, arguments in typed.items():
            times[name].append(time_once(arguments))
    results = {
        name: {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
               "max_s": round(max(values), 3), "imports": imported(typed[name])}
        for name, values in times.items()
    }
    report = {
        "what": "s3prl-distill start-up, fresh interpreter per run, commands round-robin",
        "repeats": args.repeats,
        "machine": f"{platform.machine()}, {cpu_name() or 'unknown CPU'}",
        "python_alone_median_s": round(statistics.median(python_alone), 3),
        "slowest_subcommand_help": max((name for name in results if name.endswith(" --help") and name != "--help"),
                                       key=lambda name: results[name]["median_s"]),
        "commands": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def _bare_python() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=False)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
