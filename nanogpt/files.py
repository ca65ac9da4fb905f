"""
Files that must never be half-written, and the files a training run keeps in its out_dir:
ckpt.pt (written by checkpoint.py), metrics.jsonl, one JSON object per logged iteration and per
evaluation, appended by train.py and read by plot.py, and run.lock, held while a run writes there.

A write that fails for want of space (or any other OSError) ends the script with one line that says
what is left: atomic_write keeps the file's previous version, swap_in the folder's previous files.
"""

import io
import json
import os
import secrets
import socket
import sys
import time
from contextlib import contextmanager

from nanogpt import ScriptError

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None


def ckpt_path(out_dir):
    return os.path.join(out_dir, 'ckpt.pt')


def metrics_path(out_dir):
    return os.path.join(out_dir, 'metrics.jsonl')


def lock_path(out_dir):
    return os.path.join(out_dir, 'run.lock')


def write_failed(error, target, kept):
    """The ScriptError for an OSError (a full disk: ENOSPC; a file size limit: EFBIG; ...) met while
    writing target, saying what was kept."""
    reason = error.strerror or str(error) or type(error).__name__
    return ScriptError(f"cannot write {target}: {reason}; {kept}")


class _RecordingFile(io.BufferedWriter):
    """A binary file that remembers the OSError of a failed write: serializers such as torch.save
    catch it and raise their own error ('unexpected pos ...'), which says nothing of the disk."""
    error = None

    def write(self, data):
        try:
            return super().write(data)
        except OSError as e:
            self.error = self.error or e
            raise


def _fsync_folder(folder):
    if hasattr(os, 'O_DIRECTORY'):  # a rename survives a power cut once its folder is synced
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_write(path, mode='wb'):
    """Yields a file open for writing at a temporary name beside path. When the block ends without
    error, the file is flushed, fsynced and renamed over path, and the rename is made durable: path
    then holds either its old content or the new one, whole, whatever happens (a kill, a full disk).
    On any failure the temporary file is removed and path is left as it was; a failure to write (a
    full disk) becomes one ScriptError line that says so."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp"  # a kill -9 can leave it behind; the next write replaces it
    existed = os.path.exists(path)
    raw = None
    try:
        raw = _RecordingFile(io.FileIO(tmp, 'w'))
        f = raw if 'b' in mode else io.TextIOWrapper(raw, encoding='utf-8')
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        error = e if isinstance(e, OSError) else getattr(raw, 'error', None)
        if error is None:
            raise
        kept = f"the previous {os.path.basename(path)} is kept as it was" if existed else "nothing was written"
        raise write_failed(error, path, kept) from None


# ----------------------------------------------------------------------------- several files as one

SWAP_JOURNAL = '.swap.json'  # lists the renames of a swap_in that has begun


@contextmanager
def swap_in(folder, names):
    """Replaces the files names (e.g. train.bin, val.bin, meta.pkl) of folder all together. Yields
    {name: temporary path} in folder; write each file there (by path or with open()). When the
    block ends without error, the files are synced, a journal listing the renames is written, the
    renames are done in the order of names (so put the file that readers open first last), and the
    journal is removed. What a kill leaves:
      - before the journal exists: the old files, whole, and temporary files (names ending .tmp);
      - after: the journal, and finish_swap (which the next reader or writer calls) completes the
        renames, so the new files are there, whole.
    On a failure (an exception, a full disk) the temporary files are removed and the folder keeps
    its old files; a failed write is one ScriptError line."""
    finish_swap(folder)  # an earlier swap interrupted after its journal: completed first
    created = not os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ScriptError(f"cannot create {folder}: {e.strerror or e}")
    staged = {}
    try:
        for name in names:  # a unique name, with the usual permissions (mkstemp's would be private)
            staged[name] = os.path.join(folder, f"{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
            os.close(os.open(staged[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        yield dict(staged)
        for tmp in staged.values():
            with open(tmp, 'rb+') as f:
                os.fsync(f.fileno())
        _fsync_folder(folder)
        with atomic_write(os.path.join(folder, SWAP_JOURNAL), 'w') as f:  # the moment the new files win
            json.dump([[os.path.basename(tmp), name] for name, tmp in staged.items()], f)
    except BaseException as e:
        for tmp in staged.values():
            if os.path.exists(tmp):
                os.remove(tmp)
        if created and not os.listdir(folder):
            os.rmdir(folder)
        if isinstance(e, OSError):
            kept = "nothing was written" if created else "the files there are left as they were"
            raise write_failed(e, f"{', '.join(names)} in {folder}", kept) from None
        raise
    finish_swap(folder)


def finish_swap(folder):
    """Completes a swap_in whose journal was written but whose renames a kill interrupted (the
    renames still to do are those whose temporary file is there); nothing where there is no journal."""
    journal = os.path.join(folder, SWAP_JOURNAL)
    if not os.path.exists(journal):
        return
    try:
        with open(journal, encoding='utf-8') as f:
            renames = json.load(f)
        for tmp, name in renames:
            # names in the folder itself, as swap_in writes them: a journal cannot move other files
            if os.path.basename(tmp) != tmp or os.path.basename(name) != name or not tmp.startswith(f'{name}.') \
                    or not tmp.endswith('.tmp') or name in ('', '.', '..'):
                raise ValueError(f"unexpected entry {tmp!r} -> {name!r}")
        for tmp, name in renames:
            try:
                os.replace(os.path.join(folder, tmp), os.path.join(folder, name))
            except FileNotFoundError:
                pass  # renamed already, before the kill or by another process finishing the same swap
        _fsync_folder(folder)
        os.remove(journal)
    except FileNotFoundError:
        pass  # another process finished it
    except (OSError, ValueError, TypeError) as e:
        raise ScriptError(f"{folder} holds an interrupted swap of its files ({SWAP_JOURNAL}) that cannot be "
                          f"completed here ({type(e).__name__}: {e}); write the files again (prepare the dataset "
                          f"again)")


# ----------------------------------------------------------------------------- a run's out_dir

def holds_run(out_dir):
    """The files that show a training run in out_dir: ckpt.pt, and metrics.jsonl unless empty."""
    found = [p for p in (ckpt_path(out_dir), metrics_path(out_dir)) if os.path.isfile(p) and os.path.getsize(p) > 0]
    return [os.path.basename(p) for p in found]


def claim_out_dir(out_dir, new_run):
    """For the process that writes a training run (rank 0): out_dir's run.lock is locked for this
    process's lifetime (the kernel releases it when the process ends, a kill -9 included), so that a
    second run into the same out_dir is refused, with the holder's pid, host and start time. A new
    run (not a resume) also refuses an out_dir that holds a run (ckpt.pt, metrics.jsonl), so that no
    run is replaced by accident. Creates out_dir. Returns the open lock file: keep it."""
    lock = _lock(out_dir) if os.path.exists(lock_path(out_dir)) else None  # a run in progress is named first
    if new_run and (found := holds_run(out_dir)):
        if lock is not None:
            lock.close()
        raise ScriptError(f"{out_dir} already holds a run ({' and '.join(found)}); continue it with "
                          f"--init_from=resume, or start a new one with another --out_dir (or delete "
                          f"{' and '.join(found)} there first)")
    if lock is None:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise ScriptError(f"cannot create out_dir {out_dir}: {e.strerror or e}")
        lock = _lock(out_dir)
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    lock.flush()
    return lock


def _lock(out_dir):
    """out_dir's run.lock, open and locked by this process; a ScriptError naming the holder if another has it."""
    try:
        lock = open(lock_path(out_dir), 'a+', encoding='utf-8')
    except OSError as e:
        raise ScriptError(f"cannot write in out_dir {out_dir}: {e.strerror or e}")
    if fcntl is None:
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or 'another process'
        lock.close()
        raise ScriptError(f"{out_dir} is in use by another training run ({holder}); wait for it to end, "
                          f"or train into another --out_dir")
    except OSError as e:  # a file system without locks
        print(f"warning: cannot lock {lock_path(out_dir)} ({e.strerror or e}); make sure no other run writes there",
              file=sys.stderr)
    return lock


# ----------------------------------------------------------------------------- metrics.jsonl

def read_metrics(path):
    """The rows of a metrics file (JSON objects with an 'iter'); a last line cut short by a kill, or
    any other line that is not such a row, is skipped."""
    rows = []
    with open(path, encoding='utf-8', errors='replace') as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get('iter'), int):
                rows.append(row)
    return rows


_failed_appends = set()  # the metrics files already warned about


def append_metrics(path, row):
    """Appends a row. A failed write (a full disk) is a warning, once, not the end of the run: the
    rows are a record of it, the checkpoint is what a run must keep, and its save says so if it fails."""
    try:
        with open(path, 'a', encoding='utf-8') as f:
            f.write(json.dumps(row) + '\n')
    except OSError as e:
        if path not in _failed_appends:
            _failed_appends.add(path)
            print(f"warning: cannot append to {path} ({e.strerror or e}); rows from iteration {row.get('iter')} "
                  f"on may be missing there", file=sys.stderr)


def trim_metrics(path, resume_iter, keep_eval_at_resume):
    """Before a resumed run appends: drop the rows of the iterations it is about to repeat, so each
    iteration appears once. The evaluations (losses, HellaSwag) at the resume iteration stay when they
    are not repeated."""
    if not os.path.exists(path):
        return
    rows = read_metrics(path)
    kept = [r for r in rows if r['iter'] < resume_iter
            or (keep_eval_at_resume and ('val_loss' in r or 'hellaswag_acc_norm' in r) and r['iter'] == resume_iter)]
    if len(kept) < len(rows):
        with atomic_write(path, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in kept)
