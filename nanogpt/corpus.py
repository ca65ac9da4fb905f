"""
Text corpora for the prepare scripts of large datasets (data/openwebtext, data/fineweb_edu): a local
folder of Parquet or JSONL files with a 'text' column, read document by document, each file checked
before any work so that a corrupt one is named in one line; GPT-2 tokens of a document for worker
processes, how many of them, and Ctrl-C among them; and the shards a sharded dataset is written in.

No torch here, and the datasets and pyarrow packages only where a caller needs them: the prepare
scripts start fast and their workers stay light.
"""

import glob
import json
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager

import numpy as np

from nanogpt import ScriptError, one_line

CORPUS_KINDS = ('parquet', 'jsonl')


def corpus_files(folder):
    """(kind, files): the folder's .parquet files, or its .jsonl files, in sorted path order
    (subfolders included, hidden ones left out). One kind per folder, so the order is unambiguous."""
    if not os.path.isdir(folder):
        raise ScriptError(f"source={folder} is not a folder; give a folder of .parquet or .jsonl files")
    found = {kind: sorted(p for p in glob.glob(os.path.join(folder, '**', f'*.{kind}'), recursive=True)
                          if os.path.isfile(p)) for kind in CORPUS_KINDS}
    kinds = [kind for kind in CORPUS_KINDS if found[kind]]
    if not kinds:
        raise ScriptError(f"no .parquet or .jsonl files in the folder {folder}")
    if len(kinds) > 1:
        raise ScriptError(f"{folder} holds both .parquet and .jsonl files; keep one kind (the order of the "
                          f"documents must be clear)")
    return kinds[0], found[kinds[0]]


# the hub's layout of FineWeb and FineWeb-Edu: sample/10BT/*.parquet, sample/100BT/, ..., and data/CC-MAIN-*/ (the
# crawls, all of them the 'default' subset)
HUB_SUBSET = re.compile(r'(?:^|/)(sample/[^/]+|data(?=/CC-MAIN-[^/]+/))/')


def hub_subsets(folder, files):
    """The subsets of the hub's FineWeb-Edu layout that files (found under folder) belong to: 'sample/10BT',
    'sample/100BT', ..., and 'data' (the crawls)."""
    return sorted({m.group(1) for path in files if (m := HUB_SUBSET.search(os.path.relpath(path, folder)))})


def import_pyarrow_parquet():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ScriptError("reading Parquet files needs pyarrow: pip install pyarrow")
    try:  # memory that pyarrow frees goes back to the system at once (its default allocator keeps it)
        pyarrow.set_memory_pool(pyarrow.jemalloc_memory_pool())
        pyarrow.jemalloc_set_decay_ms(0)
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
        pass
    return pyarrow.parquet


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def check_parquet(files):
    """Reads each file's footer: a truncated or corrupt file, or one without a 'text' column, is named
    before anything is tokenised or written. Returns the number of documents (rows) of each file."""
    pq = import_pyarrow_parquet()
    rows = []
    for path in files:
        try:
            meta = pq.ParquetFile(path).metadata
            names = meta.schema.to_arrow_schema().names
        except Exception as e:
            raise ScriptError(f"{path} is not a readable Parquet file ({first_line(e)}); download it again or "
                              f"move it out of the folder")
        if 'text' not in names:
            raise ScriptError(f"{path} has no 'text' column (it has {', '.join(names[:10])})")
        rows.append(meta.num_rows)
    return rows


def json_lines(lines, where, expected):
    """(line number, object) of each non-blank JSON line; a line that is not JSON ends the script with
    one line naming it and saying what was expected."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ScriptError(f"{where} line {number} is not JSON ({e.msg}); {expected}")
        except RecursionError:
            raise ScriptError(f"{where} line {number} nests brackets too deep to read; {expected}")
        yield number, item


def batch_texts(batches, skip=0):
    """The 'text' column of Arrow record batches, row after row, the first `skip` rows passed over (a null
    is an empty text)."""
    for batch in batches:
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield from (text or '' for text in batch.column('text').to_pylist()[skip:])
        skip = 0


def read_texts(kind, files, skip=0):
    """The documents' texts, file after file, passing over the first `skip` of them (whole Parquet
    files by their row counts, without reading them). A file that turns out unreadable, or a JSONL
    line that is not an object with a string 'text', ends the script with one line naming it."""
    if kind == 'parquet':
        pq = import_pyarrow_parquet()
        for path, n in zip(files, check_parquet(files)):
            if skip >= n:
                skip -= n
                continue
            try:
                # read as a stream, a page at a time, not a row group's column at once (row groups can be large)
                parquet = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
                yield from batch_texts(parquet.iter_batches(batch_size=1024, columns=['text']), skip)
                skip = 0
            except ScriptError:
                raise
            except Exception as e:
                raise ScriptError(f"{path} is corrupt and cannot be read ({first_line(e)}); download it again "
                                  f"or move it out of the folder")
        return
    for path in files:
        try:
            with open(path, encoding='utf-8') as f:
                for number, doc in json_lines(f, path, "each line must be an object with a 'text' string"):
                    if not isinstance(doc, dict) or not isinstance(doc.get('text'), str):
                        raise ScriptError(f"{path} line {number} has no 'text' string; each line must be an "
                                          f"object with a 'text' string")
                    if skip:
                        skip -= 1
                        continue
                    yield doc['text']
        except UnicodeDecodeError as e:
            raise ScriptError(f"{path} is not valid UTF-8 (at byte {e.start}); convert it or move it away")
        except OSError as e:
            raise ScriptError(f"cannot read {path}: {e.strerror or e}")


# ----------------------------------------------------------------------------- tokens in worker processes

class _Failed(Exception):
    """A failure of the corpus reader (run by the pool's feeder thread) or of a worker, carried to the
    main process as the message of its error line. A bare SystemExit there would hang the pool."""


def cores():
    """The CPU cores this process may run on (its affinity, which a container or taskset may narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def ignore_ctrl_c():
    """A worker pool's initializer: its workers leave Ctrl-C to the main process, however they start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def child_processes():
    """The processes this one started: from /proc where there is one (pool workers that a pool's thread
    forks at any moment among them), else those multiprocessing (and datasets' multiprocess) know of."""
    found, read = set(), False
    for task in os.listdir('/proc/self/task') if os.path.isdir('/proc/self/task') else []:
        try:
            with open(f'/proc/self/task/{task}/children') as f:
                found.update(int(pid) for pid in f.read().split())
            read = True
        except OSError:
            pass
    if read:
        return found
    modules = [m for m in (sys.modules.get('multiprocessing'), sys.modules.get('multiprocess')) if m]
    return {child.pid for m in modules for child in m.active_children()}


def end_children():
    """Kills the processes this one started, until none is left (a pool's thread may start new ones)."""
    for _ in range(100):
        children = child_processes()
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (OSError, ChildProcessError):
                pass


@contextmanager
def ctrl_c_ends_with(say, patience=10.0):
    """Within the block, Ctrl-C ends the script with one line, 'error: interrupted: ' + say(), and exit
    code 130 (128 + SIGINT, as shells report an interrupted command), said by this process alone.
    A terminal sends SIGINT to every process of the command: worker processes forked from this one (a
    pool's, datasets') inherit a handler that does nothing there, and this process ends them.
    Here it raises KeyboardInterrupt, so that the code unwinds (temporary files are removed, pools
    stopped); whatever that raises on its way (datasets' pools wait on their workers, and time out)
    ends the same way. Where the unwinding cannot happen (Python swallows an exception raised in a
    callback, as around a fork), or takes more than `patience` seconds, or at a second Ctrl-C, the
    workers are terminated and the process exits at once."""
    main, state = os.getpid(), {'interrupted': False, 'said': False}

    def say_once():
        if not state['said']:
            state['said'] = True
            newline = '\n' if sys.stderr.isatty() else ''  # below a progress bar
            print(f"{newline}error: interrupted: {one_line(say())}", file=sys.stderr, flush=True)

    def exit_now():
        say_once()
        end_children()
        sys.stdout.flush()
        os._exit(128 + signal.SIGINT)

    def on_ctrl_c(signum, frame):
        if os.getpid() != main:
            return  # a worker: the main process stops it
        if state['interrupted']:
            exit_now()
        state['interrupted'] = True
        watchdog.start()
        raise KeyboardInterrupt

    def on_unraisable(unraisable):
        if state['interrupted'] and issubclass(unraisable.exc_type, KeyboardInterrupt):
            exit_now()  # our KeyboardInterrupt, swallowed: the code goes on as if not interrupted
        sys.__unraisablehook__(unraisable)

    watchdog = threading.Timer(patience, exit_now)
    watchdog.daemon = True
    previous = signal.signal(signal.SIGINT, on_ctrl_c), sys.unraisablehook
    sys.unraisablehook = on_unraisable
    try:
        yield
    except BaseException:
        if not state['interrupted']:
            raise
        watchdog.cancel()
        say_once()
        end_children()
        raise SystemExit(128 + signal.SIGINT) from None
    finally:
        watchdog.cancel()
        signal.signal(signal.SIGINT, previous[0])
        sys.unraisablehook = previous[1]


_encoding = None  # each worker process's GPT-2 BPE, made on its first document


def worker_encoding():
    """This process's GPT-2 BPE, made once. Worker processes call it from module-level functions, which
    pickle light and work whether the workers fork or spawn."""
    global _encoding
    if _encoding is None:
        from nanogpt.data import gpt2_encoding
        _encoding = gpt2_encoding()
    return _encoding


def gpt2_document(text):
    """<|endoftext|> then the document's GPT-2 tokens, as uint16, computed in a worker process.
    Special tokens written in the text are tokenised as plain text."""
    try:
        encoding = worker_encoding()
    except ScriptError as e:
        raise _Failed(e.code)
    try:  # the ids straight from tiktoken's buffer, without a Python list of them (tiktoken 0.8 and later)
        ids = encoding.encode_to_numpy(text, disallowed_special=())  # special tokens stay text, as encode_ordinary's
    except (AttributeError, UnicodeEncodeError):  # an older tiktoken; lone surrogates, which encode_ordinary replaces
        ids = encoding.encode_ordinary(text)
    out = np.empty(len(ids) + 1, dtype=np.uint16)
    out[0] = encoding.eot_token
    out[1:] = ids
    return out


def _guarded(texts, what):
    try:
        yield from texts
    except ScriptError as e:
        raise _Failed(e.code)
    except Exception as e:  # the hub's connection lost, say
        raise _Failed(f"error: reading {what} failed ({type(e).__name__}: {first_line(e)}); run the same "
                      f"command again to continue after the last complete shard")


def gpt2_documents(pool, texts, what, chunksize=16):
    """gpt2_document(text) of each text, in order, computed by the pool's workers while this process
    reads on. A failure to read `what` (named in the error line) ends the script with one line."""
    try:
        yield from pool.imap(gpt2_document, _guarded(texts, what), chunksize)
    except _Failed as e:
        raise SystemExit(e.args[0])


# ----------------------------------------------------------------------------- shards

def shard_name(index):
    """The file of the index-th shard of a token stream: the first is the validation split (val_000.bin),
    the rest are training shards train_000.bin, train_001.bin, ..."""
    return 'val_000.bin' if index == 0 else f'train_{index - 1:03d}.bin'


def existing_shards(folder):
    """The paths of the shards already in folder, in stream order, up to the first one missing."""
    paths = []
    while os.path.isfile(path := os.path.join(folder, shard_name(len(paths)))):
        paths.append(path)
    return paths


def resume_point(paths, eot):
    """Where a token stream of documents, each <|endoftext|> then its text, continues after the
    complete shards in paths: (documents to pass over, tokens of the next document already written).
    Read from the shards themselves, as the text never holds <|endoftext|>: the documents started are
    the <|endoftext|> tokens, and the last of them began at the last such token."""
    shards = [np.memmap(p, dtype=np.uint16, mode='r') for p in paths]
    started = sum(int(np.count_nonzero(s == eot)) for s in shards)
    written = sum(len(s) for s in shards)
    offset = written
    for s in reversed(shards):
        offset -= len(s)
        hits = np.flatnonzero(s == eot)
        if len(hits):
            return started - 1, written - (offset + int(hits[-1]))
    return 0, 0
