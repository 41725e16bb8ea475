"""File helpers every layer uses: sha256 of a file, atomic file and folder writes, process-alive checks.

Atomic file write (`atomic_write`): the data goes to an unnamed temp file in the destination folder (Linux
O_TMPFILE) that gets its name only once it is complete, so a crash, a SIGKILL or a full disk leaves nothing behind
at all; where O_TMPFILE is not available, to a named temp file `.NAME.PID.*.tmp*` renamed into place (a kill can
leave that hidden temp file; the next write into the folder removes the ones whose process is gone).

Atomic folder write (`atomic_dir`): write into `.NAME.tmp-PID-*`, then swap it in by rename; a kill between the two
renames leaves `.NAME.old-PID`, which `recover_dir` puts back.

Targets: an existing target must be a regular file (a folder, for `atomic_dir`). A FIFO, a device node, a socket or
a symbolic link is refused (`UnsafePathError`), never swapped for a regular file (as root, `-o /dev/null` would
otherwise replace the system's /dev/null). A replaced file keeps its permission bits. A hard link is not followed:
the new file gets the name, the other names of the old file keep the old content.

Paths read from files (manifest keys, index entries) go through `inside(folder, rel)`: a plain relative path that
resolves inside the folder, or `UnsafePathError`.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


def sha256_and_size(path: str | os.PathLike) -> tuple[str, int]:
    """(hex sha256, bytes) of a file, read in chunks (any size)."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    return sha256_and_size(path)[0]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask(0) would briefly affect every
    thread of the host process)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


class UnsafePathError(ValueError):
    """A path that would escape its folder, or a target that is not a plain file or folder (one-line message)."""


def inside(folder: str | os.PathLike, rel: object, what: str = "path") -> Path:
    """folder/rel, where rel (read from a file) is a plain relative path that resolves inside folder (symbolic
    links included); else UnsafePathError. Use it for every path a file names."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise UnsafePathError(f"{what}: refusing path {rel!r} (not a plain relative path)")
    if os.path.isabs(rel) or re.match(r"^[A-Za-z]:", rel) or any(p in ("..", "") for p in rel.split("/")):
        raise UnsafePathError(f"{what}: refusing path {rel!r} (absolute, or with '..' or an empty component)")
    root = Path(folder).resolve()
    p = Path(folder) / rel
    real = p.resolve()
    if real != root and root not in real.parents:
        raise UnsafePathError(f"{what}: refusing path {rel!r}: it resolves outside {folder} ({real})")
    return p


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def existing_target(path: str | os.PathLike, folder_ok: bool = False) -> os.stat_result | None:
    """lstat of an output target: None when it does not exist; UnsafePathError unless it is a regular file (or,
    with folder_ok, a folder). Symbolic links are refused, not followed: name the file they point to."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(st.st_mode) or (folder_ok and stat.S_ISDIR(st.st_mode)):
        return st
    kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
    hint = f" (name the file it points to, {os.path.realpath(path)})" if stat.S_ISLNK(st.st_mode) else ""
    raise UnsafePathError(f"{path} is {kind}: refusing to replace it with a regular file{hint}")


def check_apart(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], flag: str = "--out") -> None:
    """UnsafePathError when `out` is, contains or lies inside one of `inputs` ({what: path}): writing it (or
    replacing it with --force) would destroy that input."""
    o = Path(out).expanduser().resolve()
    for what, path in inputs.items():
        if path is None:
            continue
        i = Path(path).expanduser().resolve()
        if o == i:
            rel = "is"
        elif i in o.parents:
            rel = "lies inside"
        elif o in i.parents:
            rel = "contains"
        else:
            continue
        raise UnsafePathError(f"{flag} {out} {rel} the {what} {path}: writing it would destroy its input; "
                              "choose another folder")


def unlink_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------- files


def open_unnamed(folder: Path) -> int | None:
    """An unnamed regular file in `folder` (O_TMPFILE), or None where the OS / file system has none."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, flag | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None  # file system without O_TMPFILE support (ENOENT: old kernels)
        raise


def _link_unnamed(fd: int, p: Path, folder: Path) -> None:
    """Give the unnamed file `fd` the name `p` (replacing an existing file in one rename)."""
    proc = os.open("/proc/self/fd", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:  # linkat(AT_SYMLINK_FOLLOW) through /proc (an explicit dir fd makes os.link use linkat)
            os.link(str(fd), p, src_dir_fd=proc, follow_symlinks=True)
            return
        except FileExistsError:
            pass
        tmp = folder / f".{p.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        os.link(str(fd), tmp, src_dir_fd=proc, follow_symlinks=True)
        try:
            os.replace(tmp, p)
        except BaseException:
            unlink_quietly(tmp)
            raise
    finally:
        os.close(proc)


def remove_stale_temp_files(folder: Path, name: str) -> None:
    """Named temp files of `name` left by a process that no longer exists (a kill during a fallback write)."""
    pat = re.compile(rf"^\.{re.escape(name)}\.(\d+)\..*\.(tmp|probe)")
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        m = pat.match(entry)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            unlink_quietly(folder / entry)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(temp_path) for a temp file beside `path`, then give it the name `path` (nothing is left on
    failure; with O_TMPFILE, nothing is left even if the process is killed)."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    old = existing_target(p)
    mode = stat.S_IMODE(old.st_mode) if old is not None else 0o666 & ~current_umask()
    fd = open_unnamed(folder)
    if fd is not None:
        try:
            write(f"/proc/self/fd/{fd}")
            os.fchmod(fd, mode)
            existing_target(p)  # it may have changed while we wrote
            _link_unnamed(fd, p, folder)
        finally:
            os.close(fd)  # an unnamed file that failed is freed here
        return p
    remove_stale_temp_files(folder, p.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=".tmp" + p.suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        existing_target(p)
        os.replace(tmp, p)
    except BaseException:
        unlink_quietly(tmp)
        raise
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ------------------------------------------------------------------------------------------------- folders


def recover_dir(target: Path) -> None:
    """Undo a swap interrupted between its two renames: bring back `.NAME.old-PID` if NAME is missing."""
    target = Path(target)
    if os.path.lexists(target) or not target.parent.is_dir():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], target)


def remove_stale_temp_dirs(target: Path) -> None:
    """Remove `.NAME.tmp-PID-*` folders left by a writer that was killed (PID no longer running on this host)."""
    target = Path(target)
    for p in target.parent.glob(f".{target.name}.tmp-*"):
        pid = p.name[len(target.name) + 6:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def remove_tree(path: Path) -> None:
    """Remove a folder tree, or a single file (a --force over a file must leave no `.NAME.old-PID` behind)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        unlink_quietly(path)


def atomic_dir(target: Path, write: Callable[[Path], object], overwrite: bool = True) -> Path:
    """Call write(tmp_dir), then move tmp_dir to target in one step (the old target is removed only after).

    A kill between the two renames leaves `.NAME.old-PID`; `recover_dir` (run here and by readers) restores it. A
    kill during write() leaves the hidden `.NAME.tmp-PID-*` folder, never NAME; the next atomic_dir of NAME
    removes it once PID is gone."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    remove_stale_temp_dirs(target)
    present = existing_target(target, folder_ok=True) is not None
    if present and not overwrite:
        raise FileExistsError(f"{target} exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: give the folder the mode a plain mkdir would
        if present:
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            remove_tree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
