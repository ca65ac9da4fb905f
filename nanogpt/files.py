"""
Files that must never be half-written, and the files a training run keeps in its out_dir:
ckpt.pt (written by checkpoint.py), metrics.jsonl, one JSON object per logged iteration and per
evaluation, appended by train.py and read by plot.py, and run.lock, held while a run writes there.

A write that fails for want of space (or any other OSError) ends the script with one line that says
what is left: atomic_write keeps the file's previous version, swap_in the folder's previous files.
Every file is created anew (never opened through a link someone left at its name: such a link is
refused in one line), with the permissions the user's umask gives, and the temporary files of a
write that was killed are removed by the next write of the same file.
"""

import io
import json
import os
import pickletools
import re
import secrets
import socket
import stat
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


def refuse_link(path, in_place=False):
    """Stops where a symbolic link is at path, a file this toolkit is about to create or replace:
    writing there would write into the file the link leads to, wherever that is. in_place: a file
    written where it is (appended to, a lock), for which a second name of the same file (a hard
    link) is refused too. A file replaced by a rename leaves the other names of the old one alone."""
    try:
        info = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise ScriptError(f"{path} is a symbolic link (to {os.readlink(path)}), and this toolkit does not write "
                          f"through links (it would overwrite the file it leads to); remove the link, or write "
                          f"elsewhere")
    if in_place and stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        raise ScriptError(f"{path} is one of {info.st_nlink} names of the same file (a hard link), and this toolkit "
                          f"does not write through links (it would change the other names' file too); remove it, or "
                          f"write elsewhere")


def create_file(path):
    """A new file at path, open for writing (a file descriptor): never a link's target (O_EXCL does not
    follow links, and refuses whatever is there), with the usual permissions (0666 less the umask)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_CLOEXEC', 0), 0o666)


def umask_mode():
    """The permissions a new file gets from this process's umask (0644 for the usual 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def remove_stale(tmp):
    """Removes a temporary file that a killed write left behind, before the next write creates it
    again; a link there is refused (the toolkit never makes one)."""
    refuse_link(tmp)
    try:
        os.remove(tmp)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ScriptError(f"cannot remove {tmp}, the leftover of an interrupted write: {e.strerror or e}")


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
    refuse_link(path)
    remove_stale(tmp)
    existed = os.path.exists(path)
    raw = None
    try:
        raw = _RecordingFile(io.FileIO(create_file(tmp), 'w'))
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
    its old files; a failed write is one ScriptError line. The temporary files of an earlier swap
    that was killed before its journal are removed. The files get the permissions of the umask,
    whatever wrote them (safetensors makes its files private)."""
    finish_swap(folder)  # an earlier swap interrupted after its journal: completed first
    for name in (*names, SWAP_JOURNAL):
        refuse_link(os.path.join(folder, name))
    remove_stale_swaps(folder, names)
    created = not os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ScriptError(f"cannot create {folder}: {e.strerror or e}")
    staged = {}
    try:
        for name in names:  # a unique name, with the usual permissions (mkstemp's would be private)
            staged[name] = os.path.join(folder, f"{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
            os.close(create_file(staged[name]))
        yield dict(staged)
        mode = umask_mode()
        for tmp in staged.values():
            refuse_link(tmp)  # what wrote it replaced it: by a file of its own, not a link
            os.chmod(tmp, mode)
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


def remove_stale_swaps(folder, names):
    """Removes the temporary files that swaps of names into folder left when they were killed before
    their journal: those named by a process that no longer runs."""
    pattern = re.compile(rf"({'|'.join(map(re.escape, names))})\.(\d+)-[0-9a-f]{{8}}\.tmp")
    try:
        found = [(m, name) for name in os.listdir(folder) if (m := pattern.fullmatch(name))]
    except OSError:
        return
    for m, name in found:
        pid = int(m.group(2))
        if pid != os.getpid() and not process_runs(pid):
            remove_stale(os.path.join(folder, name))


def process_runs(pid):
    """Whether a process of this id runs on this machine (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def finish_swap(folder):
    """Completes a swap_in whose journal was written but whose renames a kill interrupted (the
    renames still to do are those whose temporary file is there); nothing where there is no journal."""
    journal = os.path.join(folder, SWAP_JOURNAL)
    refuse_link(journal)  # swap_in writes none: one there is not a journal to act on
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
    except (OSError, ValueError, TypeError, RecursionError) as e:
        raise ScriptError(f"{folder} holds an interrupted swap of its files ({SWAP_JOURNAL}) that cannot be "
                          f"completed here ({type(e).__name__}: {e}); write the files again (prepare the dataset "
                          f"again)")


# ----------------------------------------------------------------------------- pickles read in bounded time

PICKLE_MAX_VALUES = 1 << 24  # values a pickle may unfold into, a value held in several places counted at each
PICKLE_MAX_DEPTH = 100  # containers inside containers

# what each opcode does to the unpickler's stack: pops (None: down to the last MARK) and what it pushes
# ('atom': a value with nothing inside, 'new': a container of what was popped, 'into': adds what was
# popped to the container below)
_PICKLE_OPS = {
    **{name: (0, 'atom') for name in (
        'NONE', 'NEWTRUE', 'NEWFALSE', 'INT', 'BININT', 'BININT1', 'BININT2', 'LONG', 'LONG1', 'LONG4', 'FLOAT',
        'BINFLOAT', 'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'UNICODE', 'BINUNICODE', 'SHORT_BINUNICODE',
        'BINUNICODE8', 'BINBYTES', 'SHORT_BINBYTES', 'BINBYTES8', 'BYTEARRAY8', 'GLOBAL', 'EXT1', 'EXT2', 'EXT4',
        'PERSID', 'NEXT_BUFFER')},
    **{name: (0, 'new') for name in ('EMPTY_LIST', 'EMPTY_DICT', 'EMPTY_SET', 'EMPTY_TUPLE')},
    **{name: (None, 'new') for name in ('LIST', 'TUPLE', 'DICT', 'FROZENSET', 'OBJ', 'INST')},
    'TUPLE1': (1, 'new'), 'TUPLE2': (2, 'new'), 'TUPLE3': (3, 'new'), 'STACK_GLOBAL': (2, 'new'),
    'REDUCE': (2, 'new'), 'NEWOBJ': (2, 'new'), 'NEWOBJ_EX': (3, 'new'), 'BINPERSID': (1, 'new'),
    'APPEND': (1, 'into'), 'SETITEM': (2, 'into'), 'BUILD': (1, 'into'),
    **{name: (None, 'into') for name in ('APPENDS', 'SETITEMS', 'ADDITEMS')},
}


def pickle_bounds_error(f):
    """Why the pickle read from the binary file f would unfold into more than PICKLE_MAX_VALUES values
    or nest deeper than PICKLE_MAX_DEPTH, or contain itself; None where it does not, or where it is no
    pickle (its loader says what is wrong then). Found from the opcodes alone, in time linear in its
    length, before anything is built: a few hundred bytes can hold a list that holds another twice,
    level upon level, 2**60 values that unpickling (hashing a key), comparing or printing would walk."""
    atoms, kids = [], []  # per container: how many values without insides it holds, and its containers
    stack, marks, memo = [], [], {}

    def container(inside):
        atoms.append(sum(1 for x in inside if x < 0))
        kids.append([x for x in inside if x >= 0])
        return len(kids) - 1

    try:
        for op, arg, _ in pickletools.genops(f):
            name = op.name
            if name in ('PROTO', 'FRAME', 'READONLY_BUFFER'):
                continue
            if name == 'STOP':
                break
            if name == 'MARK':
                marks.append(len(stack))
            elif name in ('POP', 'POP_MARK'):
                if name == 'POP' and (not marks or len(stack) > marks[-1]):
                    stack.pop()
                else:
                    del stack[marks.pop():]
            elif name == 'DUP':
                stack.append(stack[-1])
            elif name in ('PUT', 'BINPUT', 'LONG_BINPUT', 'MEMOIZE'):
                memo[len(memo) if name == 'MEMOIZE' else arg] = stack[-1]
            elif name in ('GET', 'BINGET', 'LONG_BINGET'):
                stack.append(memo[arg])
            elif name in _PICKLE_OPS:
                pops, action = _PICKLE_OPS[name]
                start = marks.pop() if pops is None else len(stack) - pops
                if start < 0:
                    return None
                popped, stack[start:] = stack[start:], []
                if action == 'atom':
                    stack.append(-1)
                elif action == 'new':
                    stack.append(container(popped))
                elif stack[-1] < 0:  # items added to a value without insides: a broken pickle
                    stack[-1] = container(popped)
                else:
                    atoms[stack[-1]] += sum(1 for x in popped if x < 0)
                    kids[stack[-1]].extend(x for x in popped if x >= 0)
            else:
                return f"it holds the unknown pickle opcode {name}"
    except (ValueError, IndexError, KeyError, EOFError):
        return None  # not a well-formed pickle: loading it fails with a reason of its own
    if not stack or stack[-1] < 0:
        return None
    # the values each container unfolds into, and its depth: children before parents, each container once
    size, depth, state = [0] * len(kids), [0] * len(kids), [0] * len(kids)  # state: 0 new, 1 open, 2 done
    todo = [stack[-1]]
    while todo:
        node = todo[-1]
        if state[node] == 0:
            state[node] = 1
            for child in kids[node]:
                if state[child] == 1:
                    return "it holds a value that contains itself"
                if state[child] == 0:
                    todo.append(child)
            continue
        todo.pop()
        if state[node] == 2:
            continue
        state[node] = 2
        size[node] = min(1 + atoms[node] + sum(size[c] for c in kids[node]), PICKLE_MAX_VALUES + 1)
        depth[node] = 1 + max((depth[c] for c in kids[node]), default=0)
        if size[node] > PICKLE_MAX_VALUES:
            return f"it unfolds into more than {PICKLE_MAX_VALUES:,} values (values held in one another many times over)"
        if depth[node] > PICKLE_MAX_DEPTH:
            return f"it nests values more than {PICKLE_MAX_DEPTH} deep"
    return None


# ----------------------------------------------------------------------------- a run's out_dir

def holds_run(out_dir):
    """The files that show a training run in out_dir: ckpt.pt, and with it metrics.jsonl unless empty;
    [] where there is no checkpoint (a run whose first save failed, or that diverged before it, has
    nothing to continue or to keep)."""
    found = [p for p in (ckpt_path(out_dir), metrics_path(out_dir)) if os.path.isfile(p) and os.path.getsize(p) > 0]
    return [os.path.basename(p) for p in found] if ckpt_path(out_dir) in found else []


def claim_out_dir(out_dir, new_run):
    """For the process that writes a training run (rank 0): out_dir's run.lock is locked for this
    process's lifetime (the kernel releases it when the process ends, a kill -9 included), so that a
    second run into the same out_dir is refused, with the holder's pid, host and start time. A new
    run (not a resume) also refuses an out_dir that holds a run (a checkpoint), so that no run is
    replaced by accident. Links at the names of the run's files are refused before anything is
    written. Creates out_dir. Returns the open lock file: keep it."""
    refuse_link(ckpt_path(out_dir))
    for path in (ckpt_path(out_dir), metrics_path(out_dir)):
        refuse_link(f"{path}.tmp")
    for path in (metrics_path(out_dir), lock_path(out_dir)):  # written in place
        refuse_link(path, in_place=True)
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
    path = lock_path(out_dir)
    try:  # where it is, as it is locked in place, but never through a link
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0), 0o666)
        lock = os.fdopen(fd, 'r+', encoding='utf-8')
    except OSError as e:
        refuse_link(path, in_place=True)
        raise ScriptError(f"cannot write in out_dir {out_dir}: {e.strerror or e}")
    if fcntl is None:
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read(1000).strip() or 'another process'
        lock.close()
        raise ScriptError(f"{out_dir} is in use by another training run ({holder}); wait for it to end, "
                          f"or train into another --out_dir")
    except OSError as e:  # a file system without locks
        print(f"warning: cannot lock {path} ({e.strerror or e}); make sure no other run writes there",
              file=sys.stderr)
    return lock


# ----------------------------------------------------------------------------- metrics.jsonl

def _metrics_rows(path):
    """(rows, clean) of a metrics file: its rows (JSON objects with an 'iter' from 0 to 2**63 - 1), and
    whether every line is one, the last ended by its line break."""
    rows, clean = [], True
    with open(path, encoding='utf-8', errors='replace') as f:
        for line in f:
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: brackets nested thousands deep
                row = None
            it = row.get('iter') if isinstance(row, dict) else None
            is_row = type(it) is int and 0 <= it < 2**63
            if is_row:
                rows.append(row)  # also a last line cut short after its closing brace: whole, but unended
            clean = clean and is_row and line.endswith('\n')
    return rows, clean


def read_metrics(path):
    """The rows of a metrics file (JSON objects with an 'iter'); a last line cut short by a kill, or
    any other line that is not such a row, is skipped."""
    return _metrics_rows(path)[0]


_failed_appends = set()  # the metrics files already warned about


def append_metrics(path, row):
    """Appends a row (on a line of its own, after a last line that a kill cut short). A failed write (a
    full disk) is a warning, once, not the end of the run: the rows are a record of it, the checkpoint
    is what a run must keep, and its save says so if it fails. Never through a link at path."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0)
                     | getattr(os, 'O_CLOEXEC', 0), 0o666)
        with open(fd, 'rb+') as f:
            info = os.fstat(fd)
            if info.st_nlink > 1:
                raise OSError(f"it has {info.st_nlink} names (hard links), and appending would change them all")
            cut = info.st_size > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b'\n'
            f.write((('\n' if cut else '') + json.dumps(row) + '\n').encode('utf-8'))
    except OSError as e:
        if path not in _failed_appends:
            _failed_appends.add(path)
            print(f"warning: cannot append to {path} ({e.strerror or e}); rows from iteration {row.get('iter')} "
                  f"on may be missing there", file=sys.stderr)


WANDB_NAMES = {'loss': 'iter/loss', 'train_loss': 'train/loss', 'val_loss': 'val/loss'}  # upstream's for the losses


def check_wandb():
    """The wandb module, where a run can log to it; one line where it cannot (not installed, or no API
    key for online logging), said before the run writes anything."""
    try:
        import wandb
    except ImportError:
        raise ScriptError("wandb_log=True needs wandb: pip install wandb")
    if os.environ.get('WANDB_MODE', '').lower() not in ('offline', 'disabled', 'dryrun'):
        try:
            wandb.login(verify=False)  # the API key from WANDB_API_KEY or `wandb login`; nothing is sent
        except Exception as e:
            raise ScriptError(f"wandb cannot log online ({type(e).__name__}: {e}); run `wandb login` (or set "
                              f"WANDB_API_KEY), or log offline with WANDB_MODE=offline and `wandb sync` later")
    return wandb


def start_wandb(wandb, project, name, config):
    try:
        wandb.init(project=project, name=name, config=config)
    except Exception as e:
        raise ScriptError(f"wandb could not start a run ({type(e).__name__}: {e}); log offline with "
                          f"WANDB_MODE=offline (and `wandb sync` later), or set wandb_log=False")


def record(path, row, wandb=None):
    """Appends a row to the metrics file at path, and sends the same numbers to wandb where it logs
    (under upstream's names for the losses, MFU in percent)."""
    append_metrics(path, row)
    if wandb is not None:
        wandb_row = {WANDB_NAMES.get(k, k): v for k, v in row.items() if k != 'iter'}
        if wandb_row.get('mfu') is not None:
            wandb_row['mfu'] *= 100
        wandb.log(wandb_row, step=row['iter'])


def trim_metrics(path, resume_iter=None, keep_eval_at_resume=False):
    """Before a run appends: drop the rows of the iterations it is about to repeat (from resume_iter
    on; None: none), so each iteration appears once, and mend what a crash left (a last line cut
    short, or any line that is not a row). The evaluations (losses, HellaSwag) at the resume iteration
    stay when they are not repeated."""
    if not os.path.exists(path):
        return
    rows, clean = _metrics_rows(path)
    kept = [r for r in rows if resume_iter is None or r['iter'] < resume_iter
            or (keep_eval_at_resume and ('val_loss' in r or 'hellaswag_acc_norm' in r) and r['iter'] == resume_iter)]
    if len(kept) < len(rows) or not clean:
        with atomic_write(path, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in kept)
