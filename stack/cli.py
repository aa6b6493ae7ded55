"""The `obsgen` command: render, init, schema, check, up, down.

Exit codes: 0 ok; 1 drift (render --check) or a failed check; 2 a bad spec or bad usage
(nothing written); 3 an internal error (a bug in obsgen: please report it). A user's mistake
never ends in a traceback.

Each command is one function taking the parsed arguments and returning the exit code; a new
command (e.g. `obsgen up` / `obsgen down`) adds its parser in ``build_parser`` and its function.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path
from typing import Sequence, TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
DEFAULT_INIT_PATH = "obsgen.yaml"


ERROR_PREFIX = "obsgen: "  # every error obsgen prints ends with a line starting so


class UsageError(Exception):
    """Bad command-line use: printed as one line (after argparse's usage, if any), exit 2."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from stack.render import render_bundle
    from stack.write import check_drift, write_bundle

    spec, spec_name = _load(args.spec)
    if args.target and args.target != spec.target:
        spec = spec.model_copy(update={"target": args.target})
    bundle = render_bundle(spec)
    _warn_about_metric_names(spec, bundle, err)
    if args.check:
        found = check_drift(bundle, args.out)
        for item in found:
            print(f"{item.kind:8} {item.path}", file=out)
        drift = [item for item in found if item.is_drift]
        kept = len(found) - len(drift)
        kept_note = f"; {kept} entr{'ies' if kept != 1 else 'y'} obsgen did not write (kept by render)" if kept else ""
        if drift:
            print(
                f"obsgen: {len(drift)} file(s) in {args.out} differ from what {spec_name} renders "
                f"(target {spec.target}){kept_note}; run `obsgen render` without --check to update",
                file=err,
            )
            return EXIT_FAILED
        print(f"obsgen: {args.out} is up to date ({len(bundle)} files, target {spec.target}){kept_note}", file=out)
        return EXIT_OK
    written = write_bundle(bundle, args.out)
    print(
        f"obsgen: rendered {len(bundle)} files for {spec.project} (target {spec.target}) into {written}",
        file=out,
    )
    return EXIT_OK


def _warn_about_metric_names(spec, bundle, err: TextIO) -> None:
    """A custom alert naming a metric nothing exposes renders (the user may know better) with a
    warning; `obsgen check` fails on it."""
    if not spec.alerts.custom:
        return
    from stack.metric_names import bundle_recorded_names, custom_alert_problems

    for problem in custom_alert_problems(spec, bundle_recorded_names(bundle)):
        print(f"obsgen: warning: {problem}", file=err)


def cmd_init(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it")
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give a file name such as {path / DEFAULT_INIT_PATH}")
    text = resources.files("stack").joinpath("data/starter.yaml").read_text(encoding="utf-8")
    _write_text_atomically(path, text)
    print(f"obsgen: wrote {path}; next: obsgen render {path} --out stack", file=out)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    print(json.dumps(spec_json_schema(), indent=2, sort_keys=False), file=out)
    return EXIT_OK


def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from stack.check import format_report
    from stack.check_bundle import run_checks

    bundle_dir = Path(args.dir)
    if not bundle_dir.is_dir():
        raise UsageError(f"{bundle_dir} is not a directory (render a bundle first: obsgen render --out {bundle_dir})")
    results = run_checks(bundle_dir)
    print(format_report(results), file=out)
    failed = [r for r in results if r.status == "failed"]
    skipped = [r for r in results if r.status == "skipped"]
    if args.strict and skipped:
        print(f"obsgen: {len(skipped)} check(s) skipped and --strict was given", file=err)
        return EXIT_FAILED
    return EXIT_FAILED if failed else EXIT_OK


def cmd_up(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import signal
    import threading

    from stack.up import UpError, down, up

    bundle_dir = _bundle_dir(args.dir)
    print(f"obsgen: starting the local stack of {bundle_dir}", file=out)
    try:
        report = up(bundle_dir, out=out, timeout=args.timeout, external=set(args.external))
    except UpError as exc:
        print(_prefixed(str(exc)), file=err)
        return EXIT_FAILED
    print(
        f"obsgen: {len(report.started)} running, {len(report.skipped)} skipped; logs in {bundle_dir / 'logs'}",
        file=out,
    )
    if args.detach:
        print(f"obsgen: stop them with `obsgen down {args.dir}`", file=out)
        return EXIT_OK
    # Foreground: wait for Ctrl-C or SIGTERM, then stop everything this command started.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("obsgen: press Ctrl-C to stop", file=out)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    down(bundle_dir, out=out)
    return EXIT_OK


def cmd_down(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from stack.up import down

    bundle_dir = _bundle_dir(args.dir)
    stopped = down(bundle_dir, out=out)
    print(f"obsgen: stopped {len(stopped)} process(es)" if stopped else "obsgen: nothing was running", file=out)
    return EXIT_OK


def _bundle_dir(arg: str) -> Path:
    bundle_dir = Path(arg)
    if not bundle_dir.is_dir():
        raise UsageError(f"{bundle_dir} is not a directory (render one: obsgen render --target local --out {bundle_dir})")
    return bundle_dir


def spec_json_schema() -> dict:
    from stack.spec import Spec

    schema = Spec.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "obsgen spec, version 1",
        **{key: value for key, value in schema.items() if key != "title"},
    }


# ---------------------------------------------------------------------------------------
# Parsing and running
# ---------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 with its own message; we only make it raise so tests can catch it."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        command = self.prog.partition(" ")[2]  # "render" of "obsgen render"; "" at the top
        raise UsageError(f"{command + ': ' if command else ''}{message}", usage=self.format_usage().rstrip())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="obsgen",
        description="One YAML spec in, a whole observability stack out.",
    )
    parser.add_argument("--version", action="version", version=f"obsgen {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    render = commands.add_parser(
        "render", help="render the stack's configs from a spec",
        description="Render every config of the stack from SPEC (the embedded default when omitted).",
    )
    render.add_argument("spec", nargs="?", metavar="SPEC", help="spec file ('-' for stdin); default: the embedded demo spec")
    render.add_argument(
        "--out", "-o", required=True, metavar="DIR",
        help="bundle directory: the files an earlier render wrote there are replaced (listed in "
        "DIR/.obsgen-manifest); anything else at its top (data/ of obsgen up, your notes) is kept",
    )
    render.add_argument("--target", choices=("compose", "local", "kubernetes"), help="override the spec's target")
    render.add_argument(
        "--check", action="store_true",
        help="write nothing; list every file that differs, is missing, is left over (extra) or was not "
        "written by obsgen (foreign inside its directories: exit 1; kept at the top: exit 0)",
    )
    render.set_defaults(func=cmd_render)

    init = commands.add_parser("init", help="write a commented starter spec")
    init.add_argument("path", nargs="?", default=DEFAULT_INIT_PATH, metavar="PATH", help=f"default: {DEFAULT_INIT_PATH}")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_init)

    schema = commands.add_parser("schema", help="print the spec's JSON Schema (for editors)")
    schema.set_defaults(func=cmd_schema)

    check = commands.add_parser(
        "check", help="run every validator found on PATH over a rendered bundle",
        description="Run the real tools (promtool, amtool, otelcol, jaeger, loki, docker-compose) and "
        "obsgen's own checks over a rendered bundle; absent tools are listed as skipped.",
    )
    check.add_argument("dir", metavar="DIR", help="a rendered bundle")
    check.add_argument("--strict", action="store_true", help="exit 1 when any check was skipped")
    check.set_defaults(func=cmd_check)

    up_parser = commands.add_parser(
        "up", help="run a --target local bundle on native binaries",
        description="Start the installed components of a local bundle on 127.0.0.1 (plus Redis and the "
        "instrumented server), wait until each is ready and print where each listens. Loki, Jaeger or Grafana "
        "when not installed are listed as skipped and re-rendered out of the bundle (from its local/spec.yaml), "
        "so nothing scrapes, exports to or alerts on them. Ctrl-C (or `obsgen down DIR`) stops what it started.",
    )
    up_parser.add_argument("dir", metavar="DIR", help="a bundle rendered with --target local")
    up_parser.add_argument("--detach", "-d", action="store_true", help="return once everything is ready")
    up_parser.add_argument("--timeout", type=float, default=60.0, help="seconds each process has to get ready")
    up_parser.add_argument(
        "--external", action="append", default=[], metavar="NAME",
        help="a component you run yourself at the bundle's address (e.g. loki): not started, and kept in the "
        "bundle even when its binary is not installed here (repeatable)",
    )
    up_parser.set_defaults(func=cmd_up)

    down_parser = commands.add_parser("down", help="stop what `obsgen up DIR` started (and nothing else)")
    down_parser.add_argument("dir", metavar="DIR", help="the bundle given to obsgen up")
    down_parser.set_defaults(func=cmd_down)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from stack.errors import RenderError, SpecError
    from stack.write import BundleWriteError

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        return args.func(args, out, err)
    except SpecError as exc:
        for issue in exc.issues:
            print(str(issue), file=err)
        count = len(exc.issues)
        print(f"obsgen: {count} problem{'s' if count != 1 else ''} in the spec; nothing written", file=err)
        return EXIT_USAGE
    except (UsageError, BundleWriteError) as exc:
        if getattr(exc, "usage", ""):
            print(exc.usage, file=err)
        print(_prefixed(str(exc)), file=err)
        return EXIT_USAGE
    except RenderError as exc:
        print(f"obsgen: internal error, please report it: {exc}", file=err)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print("obsgen: interrupted", file=err)
        return 130
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK  # `obsgen schema | head`: the reader left, nothing is wrong


def _prefixed(text: str) -> str:
    # Only the exact prefix counts: "obsgen.yaml already exists" is a message, not a prefix.
    return text if text.startswith(ERROR_PREFIX) else ERROR_PREFIX + text


def _load(spec_arg: str | None):
    from stack.load import DEFAULT_SPEC_NAME, load_default_spec, load_spec, load_spec_file

    if spec_arg is None:
        return load_default_spec(), DEFAULT_SPEC_NAME
    if spec_arg == "-":
        return load_spec(sys.stdin.read(), "<stdin>", base_dir=os.getcwd()), "<stdin>"
    return load_spec_file(spec_arg), spec_arg


def _write_text_atomically(path: Path, text: str) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(temp, 0o644)
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def _version() -> str:
    try:
        return metadata.version("obsgen")
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":  # pragma: no cover - `python -m stack.cli`
    sys.exit(main())
