"""
Files that must never be half-written, and the files a training run keeps in its out_dir:
ckpt.pt (written by checkpoint.py) and metrics.jsonl, one JSON object per logged iteration and per
evaluation, appended by train.py and read by plot.py.
"""

import json
import os
from contextlib import contextmanager


def ckpt_path(out_dir):
    return os.path.join(out_dir, 'ckpt.pt')


def metrics_path(out_dir):
    return os.path.join(out_dir, 'metrics.jsonl')


@contextmanager
def atomic_write(path, mode='wb'):
    """Yields a file open for writing at a temporary name beside path. When the block ends without
    error, the file is flushed, fsynced and renamed over path, and the rename is made durable: path
    then holds either its old content or the new one, whole, whatever happens (a kill, a full disk).
    On any failure the temporary file is removed and path is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp"  # a kill -9 can leave it behind; the next write replaces it
    try:
        with open(tmp, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if hasattr(os, 'O_DIRECTORY'):  # the rename itself survives a power cut
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_metrics(path):
    """The rows of a metrics file; a last line cut short by a kill is skipped."""
    rows = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def append_metrics(path, row):
    with open(path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(row) + '\n')


def trim_metrics(path, resume_iter, keep_eval_at_resume):
    """Before a resumed run appends: drop the rows of the iterations it is about to repeat, so each
    iteration appears once. The evaluations (losses, HellaSwag) at the resume iteration stay when they
    are not repeated."""
    if not os.path.exists(path):
        return
    rows = read_metrics(path)
    kept = [r for r in rows if r.get('iter', 0) < resume_iter
            or (keep_eval_at_resume and ('val_loss' in r or 'hellaswag_acc_norm' in r) and r.get('iter') == resume_iter)]
    if len(kept) < len(rows):
        with atomic_write(path, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in kept)
