"""A bundle onto disk, all or nothing; and the drift between a bundle and a directory.

The whole bundle is written into a temporary directory beside the target, then swapped in with
two renames, so a failure leaves the previous bundle as it was, never half of a new one. A
manifest (``.obsgen-manifest``) lists the files obsgen wrote: the next render may replace those
and nothing else. Anything at the top of the directory that obsgen did not write (``data/`` and
``secrets/`` that ``obsgen up`` creates for the local target) is carried over into the new bundle;
a directory that is not empty and was not written by obsgen is never replaced.

Modes are set explicitly rather than from the umask, so the same bundle gives the same files:
configs are 0644 (containers run as other users and read them through bind mounts), anything
under a ``secrets/`` directory is 0600.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

MANIFEST = ".obsgen-manifest"
_MANIFEST_HEADER = (
    "# Written by `obsgen render`. The files listed below are replaced as a whole on every render;\n"
    "# edit the spec, not these files. Anything else at the top of this directory is kept.\n"
)


class BundleWriteError(Exception):
    """The bundle could not be written; the directory is as it was before."""


@dataclass(frozen=True, order=True)
class Drift:
    """One line of ``render --check``.

    ``differs``/``missing``: a file of the bundle; ``extra``: written by an earlier render, no
    longer rendered (the next render deletes it); ``foreign``: not written by obsgen, inside a
    directory the bundle writes (render refuses until it is moved away); ``kept``: a top-level
    entry obsgen did not write (``data/`` of ``obsgen up``, a note of yours), which render leaves
    as it is. Only ``kept`` is not drift.
    """

    path: str
    kind: Literal["differs", "missing", "extra", "foreign", "kept"]

    @property
    def is_drift(self) -> bool:
        return self.kind != "kept"

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}"


def file_mode(path: str) -> int:
    """Credentials are readable by their owner only; configs by everyone (containers' users)."""
    return 0o600 if "secrets" in path.split("/")[:-1] else 0o644


def manifest_text(paths) -> str:
    return _MANIFEST_HEADER + "".join(f"{path}\n" for path in sorted(paths))


def read_manifest(directory: Path) -> list[str] | None:
    """Paths obsgen wrote into ``directory`` last time, or None when it did not write it."""
    try:
        text = (directory / MANIFEST).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [line for line in text.splitlines() if line and not line.startswith("#")]


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def write_bundle(bundle: Mapping[str, bytes], out_dir: str | os.PathLike) -> Path:
    """Replace ``out_dir`` with exactly ``bundle`` (plus the manifest), atomically.

    Raises ``BundleWriteError`` (directory untouched) when ``out_dir`` holds files obsgen did
    not write in a place the bundle needs, or when writing fails.
    """
    out = Path(os.path.abspath(out_dir))
    if out.is_symlink():
        out = Path(os.path.realpath(out))
    carried = _entries_to_carry(bundle, out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    except OSError as exc:
        raise BundleWriteError(f"cannot create a directory beside {out}: {exc.strerror}") from None
    try:
        _write_tree(bundle, staging)
        _swap(staging, out, carried)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise BundleWriteError(
                f"could not write the bundle to {out} ({exc.strerror or exc}); the previous contents are unchanged"
            ) from None
        raise
    return out


def _write_tree(bundle: Mapping[str, bytes], root: Path) -> None:
    os.chmod(root, 0o755)
    written = [_write_file(root, path, data) for path, data in bundle.items()]
    written.append(_write_file(root, MANIFEST, manifest_text(bundle).encode("utf-8")))
    for directory, _subdirs, _files in os.walk(root):
        os.chmod(directory, 0o755)
    _fsync_all(written)


def _write_file(root: Path, path: str, data: bytes) -> Path:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = file_mode(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # exact, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return target


def _fsync_all(paths: list[Path]) -> None:
    """Every file on disk before the swap, several at a time.

    An fsync waits for the disk, not the CPU; issued together, the filesystem commits them
    together (one ext4 journal commit for many files). One after another, 411 files took
    0.7-1.7 s on a busy machine; eight at a time, 0.07-0.19 s (docs/performance.md).
    """
    from concurrent.futures import ThreadPoolExecutor  # only render writes: not imported by `import stack`

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync") as pool:
        for _ in pool.map(_fsync, paths):
            pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entries_to_carry(bundle: Mapping[str, bytes], out: Path) -> list[str]:
    """Top-level names in ``out`` that obsgen did not write and the new bundle does not need.

    Refuses (``BundleWriteError``) a non-empty directory obsgen did not write, and a file obsgen
    did not write where the new bundle would put its own.
    """
    if not out.exists():
        return []
    if not out.is_dir():
        raise BundleWriteError(f"{out} exists and is not a directory")
    entries = sorted(os.listdir(out))
    if not entries:
        return []
    previous = read_manifest(out)
    if previous is None:
        raise BundleWriteError(
            f"refusing to replace {out}: it is not empty and was not written by obsgen "
            f"(no {MANIFEST}); choose an empty or new directory"
        )
    managed_top = {path.split("/")[0] for path in previous} | {MANIFEST}
    new_top = {path.split("/")[0] for path in bundle}
    # Inside directories obsgen manages, a file it did not write would be lost with the swap.
    previous_set = set(previous)
    strangers = [
        path for path in _files_under(out, sorted(name for name in managed_top if name in entries))
        if path not in previous_set and path != MANIFEST
    ]
    clashes = sorted(name for name in entries if name not in managed_top and name in new_top)
    if strangers or clashes:
        listed = ", ".join((clashes + strangers)[:5])
        raise BundleWriteError(
            f"refusing to replace {out}: obsgen did not write {listed}"
            f"{' and others' if len(clashes) + len(strangers) > 5 else ''}; move them away first"
        )
    return [name for name in entries if name not in managed_top and name not in new_top]


def _files_under(root: Path, top_names: list[str]) -> list[str]:
    found = []
    for name in top_names:
        top = root / name
        if top.is_file() or top.is_symlink():
            found.append(name)
            continue
        for directory, _subdirs, files in os.walk(top):
            for file in files:
                found.append(Path(directory, file).relative_to(root).as_posix())
    return sorted(found)


def _swap(staging: Path, out: Path, carried: list[str]) -> None:
    """Put ``staging`` where ``out`` is, keeping ``carried`` entries; undo everything on failure."""
    if not out.exists():
        os.rename(staging, out)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.rename(out, retired)  # replaces the empty placeholder directory
    moved: list[str] = []
    try:
        for name in carried:
            os.rename(retired / name, staging / name)
            moved.append(name)
        os.rename(staging, out)
    except BaseException:
        for name in reversed(moved):
            os.rename(staging / name, retired / name)
        os.rename(retired, out)
        raise
    shutil.rmtree(retired, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Drift (render --check)
# ---------------------------------------------------------------------------------------


def check_drift(bundle: Mapping[str, bytes], out_dir: str | os.PathLike) -> list[Drift]:
    """Every file that differs from ``bundle``, is missing, is left over from an earlier render or
    was not written by obsgen (see ``Drift``); a top-level directory obsgen did not write is one
    ``kept`` entry (``data/``), not every file in it."""
    out = Path(out_dir)
    drift: list[Drift] = []
    for path, data in bundle.items():
        target = out / path
        try:
            if target.read_bytes() != data:
                drift.append(Drift(path, "differs"))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            drift.append(Drift(path, "missing"))
    if out.is_dir():
        manifest = read_manifest(out)
        previous = set(manifest or ())
        # In a directory obsgen did not write, render refuses to touch anything: nothing is kept.
        outside = "kept" if manifest is not None else "foreign"
        top = {path.split("/")[0] for path in bundle} | {path.split("/")[0] for path in previous}
        for path in _files_under(out, sorted(name for name in top if (out / name).exists())):
            if path not in bundle and path != MANIFEST:
                drift.append(Drift(path, "extra" if path in previous else "foreign"))
        for name in sorted(set(os.listdir(out)) - top - {MANIFEST}):
            drift.append(Drift(f"{name}/" if (out / name).is_dir() and not (out / name).is_symlink() else name, outside))
    return sorted(set(drift))
