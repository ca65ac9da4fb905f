"""
Text corpora for the prepare scripts of large datasets (data/openwebtext, data/fineweb_edu): a local
folder of Parquet or JSONL files with a 'text' column, read document by document, each file checked
before any work so that a corrupt one is named in one line; GPT-2 tokens of a document for worker
processes; and the shards a sharded dataset is written in.

No torch here, and the datasets and pyarrow packages only where a caller needs them: the prepare
scripts start fast and their workers stay light.
"""

import glob
import json
import os

import numpy as np

from nanogpt import ScriptError

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


def import_pyarrow_parquet():
    try:
        import pyarrow.parquet
    except ImportError:
        raise ScriptError("reading Parquet files needs pyarrow: pip install pyarrow")
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
                for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=['text']):
                    texts = batch.column(0).to_pylist()
                    if skip >= len(texts):
                        skip -= len(texts)
                        continue
                    for text in texts[skip:]:
                        yield text or ''
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
