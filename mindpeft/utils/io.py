"""Crash-safe file writing: a folder (an adapter, a model, a checkpoint) is replaced as a whole, never in part.

``atomic_directory(path)`` gives a temporary sibling folder to write into. When the block ends without an error,
entries of the old folder that were not rewritten are hard-linked into the new one (recursively), every file is
fsynced, and the two folders are exchanged in one ``renameat2(RENAME_EXCHANGE)`` system call, so that at every
instant ``path`` holds either the complete old folder or the complete new one. On an error the temporary folder is
removed and ``path`` is untouched. Folders left behind by a killed process are removed by the next save.
"""
import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager

import numpy as np

_TEMP_MARK = ".mindpeft-"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _libc_renameat2():
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return func


_renameat2 = _libc_renameat2()


def _exchange(a, b):
    """Swap the paths ``a`` and ``b`` atomically; ``False`` where the system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, f"Could not exchange {a!r} and {b!r}: {os.strerror(code)}")


def _fsync_path(path):
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _give_default_permissions(root):
    """Files written into ``root`` get the mode a plain ``open()`` would give (temporary-file writers, safetensors
    included, create them owner-only)."""
    mode = _default_file_mode()
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, mode)


def _fsync_tree(root):
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(os.path.join(folder, name))
        _fsync_path(folder)


def _link_missing(old, new, discard=None):
    """Hard-link (copy where links fail) every entry of ``old`` that ``new`` lacks, into ``new``, recursively; the
    top-level entries ``discard(name)`` is true for are left out."""
    for name in os.listdir(old):
        if discard is not None and discard(name):
            continue
        src, dst = os.path.join(old, name), os.path.join(new, name)
        if os.path.isdir(src) and not os.path.islink(src):
            if not os.path.lexists(dst):
                os.mkdir(dst)
            if os.path.isdir(dst) and not os.path.islink(dst):
                _link_missing(src, dst)
        elif not os.path.lexists(dst):
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
                continue
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def pid_alive(pid):
    """Whether a process with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TEMPORARY_NAME = re.compile(rf"^\.(?P<name>.+?){re.escape(_TEMP_MARK)}(?P<pid>\d+)-")


def remove_stale_temporaries_in(folder, name=None):
    """Remove the temporary files and folders (of ``name``, or of any entry) in ``folder`` that a killed process
    left behind."""
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY_NAME.match(entry)
        if not match or (name is not None and match["name"] != name):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        remove_path(os.path.join(folder, entry))


def remove_path(path):
    """Remove a file, link or folder tree; nothing when it is already gone."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def remove_stale_temporaries(path):
    """Remove the temporary siblings of ``path`` that a killed process left behind."""
    parent, name = os.path.split(path)
    remove_stale_temporaries_in(parent, name)


def _temporary_sibling(path, kind):
    parent, name = os.path.split(path)
    return os.path.join(parent, f".{name}{_TEMP_MARK}{os.getpid()}-{kind}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_directory(path, discard=None):
    """Yield an empty temporary folder; on success it replaces the folder ``path`` as a whole (see module doc).

    Entries of the old folder that the block did not write are kept (hard-linked), so saving one adapter leaves
    the other adapters' sub-folders and the user's own files in place; except those whose name ``discard(name)``
    is true for (the weight files of an earlier save, which the new one replaces).
    """
    path = os.path.realpath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"Provided path ({path}) should be a directory, not a file")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(path)
    staging = _temporary_sibling(path, "new")
    os.mkdir(staging)
    try:
        yield staging
        _give_default_permissions(staging)
        if os.path.isdir(path):
            _link_missing(path, staging, discard)
        _fsync_tree(staging)
        cwd = _working_directory()
        _swap_in(staging, path)
        if cwd == path or cwd.startswith(path + os.sep):  # follow the folder, not the old one about to go
            os.chdir(cwd)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _fsync_path(parent)


def _working_directory():
    try:
        return os.getcwd()
    except OSError:
        return ""


def _swap_in(staging, path):
    """Put ``staging`` at ``path``; the old folder (if any) ends at ``staging`` and is removed by the caller."""
    if not os.path.exists(path):
        try:
            os.rename(staging, path)
            return
        except OSError:
            if not os.path.isdir(path):
                raise
    if _exchange(staging, path):
        return
    # No atomic exchange on this system: two renames, with the old folder kept until the new one is in place.
    retired = _temporary_sibling(path, "old")
    os.rename(path, retired)
    try:
        os.rename(staging, path)
    except OSError:
        os.rename(retired, path)
        raise
    os.rename(retired, staging)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` through a fsynced temporary file and a rename: old or new, never a mix."""
    parent = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}{_TEMP_MARK}{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_path(parent)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _dumps(data, **kwargs):
    return json.dumps(data, allow_nan=False, default=_json_default, **kwargs)


def json_dumps(data):
    """``data`` as indented JSON text (numpy scalars as numbers, sets as sorted lists).

    Raises ``TypeError`` (a value JSON cannot hold) or ``ValueError`` (NaN or infinity) naming the key.
    """
    try:
        return _dumps(data, indent=2, sort_keys=True)
    except (TypeError, ValueError):
        if isinstance(data, dict):
            for key, value in data.items():
                try:
                    _dumps(value)
                except (TypeError, ValueError) as inner:
                    raise type(inner)(f"{key!r}: {inner}") from None
        raise


def write_text(path, text):
    """Write ``text`` as UTF-8 to ``path`` (a file inside an :func:`atomic_directory` folder)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path, data):
    """Atomically write ``data`` as JSON to ``path``."""
    atomic_write_bytes(path, (json_dumps(data) + "\n").encode("utf-8"))


def read_json_object(path):
    """The JSON object in ``path``; a ``ValueError`` naming the file when it is not valid JSON or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data
