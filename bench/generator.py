"""Generator: `obsgen render` wall time, CPU and peak memory, against `python -c 'import stack'` as the floor.

    python bench/generator.py            # 5 runs each (about a minute)
    python bench/generator.py --quick    # 1 run each, for CI

Each command runs in a child process, one after another, alternating so that a burst of load on
the shared machine hits every command alike; the table gives the median wall time, the median CPU
(user+sys of the child, from ``resource.getrusage(RUSAGE_CHILDREN)``) and the peak RSS (the
child's ``ru_maxrss``). Specs: the embedded default (no SPEC argument), and a generated spec of
100 services and 50 SLOs (the default's service and 2 SLOs, plus 99 scraped services and 48 SLOs,
availability and latency alternately). Ratios are against the floor measured in the same run.

Children run as an installed obsgen does: with Python's bytecode cache (pip compiles ``.pyc``
files on install), kept in ``.cache/bench/pycache`` (``PYTHONPYCACHEPREFIX``) and filled by one
unmeasured run first, even when the environment sets ``PYTHONDONTWRITEBYTECODE``.
``--no-bytecode-cache`` measures every child compiling its modules from source instead.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import harness

RENDER_TARGET_SECONDS = 1.0  # the target for the 100-service spec
DEFAULT_RENDER_TARGET_SECONDS = 0.5  # and for the default spec


def generated_spec(services: int = 100, slos: int = 50) -> dict:
    """The default spec grown to ``services`` services and ``slos`` SLOs."""
    spec = yaml.safe_load((harness.REPO / "stack" / "data" / "default.yaml").read_text())
    for i in range(1, services - len(spec["services"]) + 1):
        name = f"svc-{i:03d}"
        spec["services"].append({"name": name, "host": f"{name}.internal", "otlp": i % 2 == 0,
                                 "metrics": {"port": 9100, "path": "/metrics"}})
    for i in range(slos - len(spec["slos"])):
        job = f"svc-{i + 1:03d}"
        if i % 2 == 0:
            spec["slos"].append({
                "name": f"{job}-availability", "objective": 99.9, "window": "30d",
                "events": {
                    "error_query": f'sum(rate(websocket_errors_total{{job="{job}",reason=~"internal|broker"}}[$window]))',
                    "total_query": f'sum(rate(websocket_messages_received_total{{job="{job}"}}[$window]))',
                }})
        else:
            spec["slos"].append({
                "name": f"{job}-latency", "objective": 99.0, "window": "7d",
                "latency": {"metric": "websocket_message_duration_seconds", "threshold_seconds": 0.1,
                            "selector": f'job="{job}"'}})
    return spec


CHILD_ENV: dict[str, str] | None = None  # None: this process's environment


def bytecode_cache_env() -> dict[str, str]:
    """The environment with Python's bytecode cache on, kept out of the source tree."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(harness.REPO / ".cache" / "bench" / "pycache")
    return env


def run_child(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=harness.REPO, env=CHILD_ENV)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run of each (CI smoke run)")
    parser.add_argument("--runs", type=int, help="runs of each command (default 5; quick 1)")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="children compile every module from source (as with PYTHONDONTWRITEBYTECODE=1)")
    args = parser.parse_args(argv)
    global CHILD_ENV
    if args.no_bytecode_cache:
        CHILD_ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    else:
        CHILD_ENV = bytecode_cache_env()
    runs = args.runs or (1 if args.quick else 5)
    started = harness.machine()
    obsgen = [sys.executable, "-m", "stack"]  # the same entry point as the `obsgen` console script

    work = Path(tempfile.mkdtemp(prefix="obsgen-bench-gen-"))
    try:
        spec_path = work / "spec-100.yaml"
        spec_path.write_text(yaml.safe_dump(generated_spec(), sort_keys=False))
        commands = {
            "python -c 'import stack' (floor)": [sys.executable, "-c", "import stack"],
            "obsgen render (default spec)": obsgen + ["render", "--out", str(work / "out-default")],
            "obsgen render (100 services, 50 SLOs)": obsgen + ["render", str(spec_path), "--out", str(work / "out-100")],
        }
        commands["obsgen render --check (100 services, 50 SLOs)"] = obsgen + [
            "render", str(spec_path), "--check", "--out", str(work / "out-100")]
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        files: dict[str, int] = {}
        for command in commands.values():  # unmeasured: fills the bytecode cache, renders out-100 for --check
            if "--check" not in command:
                run_child(command)
        for round_ in range(runs):
            for name, command in commands.items():
                wall, cpu = run_child(command)
                samples[name].append((wall, cpu))
                harness.log(f"[{round_ + 1}/{runs}] {name}: {wall:.3f}s wall, {cpu:.3f}s CPU")
        for name, directory in (("obsgen render (default spec)", "out-default"),
                                ("obsgen render (100 services, 50 SLOs)", "out-100")):
            files[name] = sum(len(f) for _, _, f in os.walk(work / directory))
        # ru_maxrss of RUSAGE_CHILDREN is the largest child so far, so each peak is read apart.
        peaks = child_peaks(commands)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    floor_wall = statistics.median(s[0] for s in samples["python -c 'import stack' (floor)"])
    floor_cpu = statistics.median(s[1] for s in samples["python -c 'import stack' (floor)"])
    rows = []
    for name, values in samples.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        rows.append((name, files.get(name, "-"), wall, cpu, f"{wall / floor_wall:.1f}x", f"{cpu / floor_cpu:.1f}x",
                     peaks[name] / 2**20))
    harness.print_table(f"Generator, median of {runs} run(s) per command",
                        ["command", "files", "wall s", "CPU s", "wall vs floor", "CPU vs floor", "peak RSS MiB"], rows)
    big = statistics.median(v[0] for v in samples["obsgen render (100 services, 50 SLOs)"])
    small = statistics.median(v[0] for v in samples["obsgen render (default spec)"])
    for what, seconds, target in (("the 100-service spec", big, RENDER_TARGET_SECONDS),
                                  ("the default spec", small, DEFAULT_RENDER_TARGET_SECONDS)):
        verdict = "met" if seconds < target else "not met"
        print(f"target: render of {what} under {target:g} s wall: {verdict} ({seconds:.2f} s)")
    print("bytecode cache: " + ("off (every module compiled from source)" if args.no_bytecode_cache
                                else f"on ({CHILD_ENV['PYTHONPYCACHEPREFIX']})"))
    harness.print_machine(started, harness.command_line())
    return 0


def child_peaks(commands: dict[str, list[str]]) -> dict[str, int]:
    """Each command's own peak RSS: run alone in a fresh intermediate process, whose
    RUSAGE_CHILDREN then holds only that command's maximum."""
    peaks = {}
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    for name, command in commands.items():
        out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True,
                             cwd=harness.REPO, check=True, env=CHILD_ENV).stdout
        peaks[name] = int(out.strip()) * 1024
    return peaks


if __name__ == "__main__":
    raise SystemExit(main())
