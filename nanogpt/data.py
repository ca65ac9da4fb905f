"""
Datasets on disk, batches and tokenizers, shared by the prepare scripts, train.py, bench.py and sample.py.

A dataset is a folder data/<name>/ with train.bin and val.bin, flat arrays of token ids (uint16, or
uint32 where meta.pkl says 'dtype': 'uint32'), or with each split in shards train_000.bin,
train_001.bin, ... (or build-nanogpt's edufineweb_train_000001.npy, ...) read as one; and meta.pkl with
vocab_size, the tokenizer ('char' datasets carry stoi and itos, 'gpt2' ones use tiktoken's GPT-2 BPE, 'bpe'
ones a byte-level BPE trained on their own text, kept beside them in the file meta.pkl names:
'tokenizer_file': 'tokenizer.json') and the files the preparation wrote with their token counts
('files': {name: tokens}).

Batches are random windows (upstream's sampler, get_batch), or the split read in order, row after row
(get_ordered_batch: train.py's data_order='sequential' and fixed_val_set).
"""

import base64
import binascii
import hashlib
import io
import json
import os
import pickle
import re
import reprlib

import numpy as np

from nanogpt import ScriptError
from nanogpt.files import finish_swap, pickle_bounds_error, swap_in

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project: data/ and the scripts
SHAKESPEARE_TXT = os.path.join(ROOT, 'data', 'shakespeare_char', 'input.txt')  # tiny Shakespeare, shipped
GPT2_VOCAB_SIZE = 50257  # GPT-2's BPE: 50,000 merges, 256 bytes and <|endoftext|>
GPT2_EOT_TOKEN = 50256  # <|endoftext|>
PADDED_GPT2_VOCAB_SIZE = 50304  # GPT-2's vocabulary padded up to a multiple of 64 for speed, as upstream's
GPT2_BPE_ENV = 'NANOGPT_GPT2_BPE'
EOT = '<|endoftext|>'  # the special token between documents (GPT-2's, and that of a BPE trained here)
# GPT-2's BPE ranks (tiktoken's r50k_base.tiktoken, whose file has the sha256 306cd27f...dd930 that tiktoken
# checks after a download) by ranks_sha256, whatever the layout of the file that holds them
GPT2_RANKS_SHA256 = '7cff19521369c7f5f5ed77ed7b730e7491800afb47d01d341e12b3ca740d8543'
GPT2_BPE_MAX_BYTES = 16 << 20  # the file is 835,554 bytes
FULL_CHECK_TOKENS = 1 << 29  # token files up to this size are checked whole at start; larger ones batch by batch
META_MAX_BYTES = 1 << 28  # a meta.pkl larger than this is not one the toolkit wrote
MAX_DIMENSION = 2**31 - 1  # the largest size of a model dimension (vocab_size, n_embd, n_layer, ...) taken


def dataset_dir(dataset):
    """data/<dataset> beside these scripts; a path (absolute, or with a separator) is taken as it is."""
    if os.path.isabs(dataset) or os.sep in dataset or (os.altsep and os.altsep in dataset):
        return dataset
    return os.path.join(ROOT, 'data', dataset)


def prepare_hint(dataset):
    script = os.path.join('data', dataset, 'prepare.py')
    if os.path.exists(os.path.join(ROOT, script)):
        return f"run python {script} first"
    return f"prepare it with python data/prepare.py --input=YOUR_TEXT --dataset={dataset}"


class _PlainDataUnpickler(pickle.Unpickler):
    """Loads dicts, lists, tuples, sets, strings, bytes, numbers, booleans and None, and nothing else:
    any other object (and any function a pickle could call) has to be looked up by find_class, which
    refuses, so a meta.pkl from someone else cannot run code."""

    def find_class(self, module, name):
        raise _NotPlainData(f"{module}.{name}")


class _NotPlainData(pickle.UnpicklingError):
    pass


class _ShortRepr(reprlib.Repr):
    """reprlib's repr, which shows a few levels and a few items of each, with integers too long to print
    (Python refuses those of over 4300 digits) given by their size."""

    def repr_int(self, x, level):
        return repr(x) if x.bit_length() <= 200 else f"<an integer of {x.bit_length():,} bits>"


def short(value, limit=60):
    """A value's repr, cut to limit characters, in bounded time and memory whatever the value is (a list
    nested in itself level upon level, an integer of a million digits): for values in messages that may
    be anything."""
    shorter = _ShortRepr()
    shorter.maxlevel, shorter.maxstring, shorter.maxother, shorter.maxlong = 3, limit, limit, limit
    text = shorter.repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


def load_meta(data_dir):
    """meta.pkl as a dict; {} where there is none (upstream's BPE datasets have none). Only plain
    data loads (see _PlainDataUnpickler); upstream's meta.pkl files are plain data."""
    path = os.path.join(data_dir, 'meta.pkl')
    finish_swap(data_dir)  # a preparation killed while swapping its files in: completed first
    if not os.path.exists(path):
        return {}
    try:
        with open(path, 'rb') as f:
            data = f.read(META_MAX_BYTES + 1)
        if len(data) > META_MAX_BYTES:
            raise ScriptError(f"{path} is larger than {META_MAX_BYTES >> 20} MiB, not a meta.pkl this toolkit wrote; "
                              f"prepare the dataset again")
        if reason := pickle_bounds_error(io.BytesIO(data)):  # before anything is built from it
            raise ScriptError(f"{path} is not a dataset's meta.pkl ({reason}); prepare the dataset again")
        meta = _PlainDataUnpickler(io.BytesIO(data)).load()
    except ScriptError:
        raise
    except _NotPlainData as e:
        raise ScriptError(f"{path} holds more than plain data (it refers to {e}); it is not loaded, since unpickling "
                          f"it could run code. Prepare the dataset again (or load it yourself if you trust its source)")
    except Exception as e:
        raise ScriptError(f"cannot read {path} ({type(e).__name__}: {e}); prepare the dataset again")
    check_meta(meta, path)
    return meta


def check_meta(meta, path):
    """What the scripts read from a meta.pkl has the types they expect."""
    if not isinstance(meta, dict):
        raise ScriptError(f"{path} holds a {type(meta).__name__}, not a dict; prepare the dataset again")
    vocab_size = meta.get('vocab_size', 1)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 0 < vocab_size <= MAX_DIMENSION:
        raise ScriptError(f"{path} says vocab_size={short(vocab_size)}, not a positive int (up to 2**31 - 1); "
                          f"prepare the dataset again")
    files = meta.get('files', {})
    if not (isinstance(files, dict) and all(isinstance(k, str) and type(v) is int and v >= 0
                                            for k, v in files.items())):
        raise ScriptError(f"{path} lists its files in a form other than file name -> token count; prepare the "
                          f"dataset again")
    if 'stoi' in meta or 'itos' in meta:
        stoi, itos = meta.get('stoi'), meta.get('itos')
        if not (isinstance(stoi, dict) and isinstance(itos, dict)
                and all(isinstance(k, str) and isinstance(v, int) for k, v in stoi.items())
                and all(isinstance(k, int) and isinstance(v, str) for k, v in itos.items())):
            raise ScriptError(f"{path} has stoi and itos that are not a character vocabulary (str -> int and "
                              f"int -> str); prepare the dataset again")


def token_dtype(meta):
    dtype = meta.get('dtype', 'uint16')
    if dtype not in ('uint16', 'uint32'):
        raise ScriptError(f"meta.pkl names token dtype {short(dtype)}; expected uint16 or uint32")
    return np.dtype(dtype)


def split_files(data_dir, split):
    """The token files of a split: [<split>.bin], or its shards [<split>_000.bin, <split>_001.bin, ...]
    in order, or build-nanogpt's shards (npy_shards), or [] where there are none. Shards numbered with a
    gap, or a folder with two kinds, are refused: a split with a piece missing would train on the wrong
    data without a word."""
    single = os.path.join(data_dir, f'{split}.bin')
    pattern = re.compile(rf'{re.escape(split)}_(\d{{3,}})\.bin')
    numbered = sorted((int(m.group(1)), name) for name in os.listdir(data_dir) if (m := pattern.fullmatch(name)))
    npy = npy_shards(data_dir, split)
    if npy and (numbered or os.path.isfile(single)):
        raise ScriptError(f"{data_dir} holds both .npy shards ({os.path.basename(npy[0])}, ...) and {split} .bin "
                          f"files; move one kind away")
    if npy:
        return npy
    if not numbered:
        return [single] if os.path.isfile(single) else []
    if os.path.isfile(single):
        raise ScriptError(f"{data_dir} holds both {split}.bin and {split} shards ({numbered[0][1]}, ...); "
                          f"move one of them away")
    for i, (number, name) in enumerate(numbered):
        if number < i:
            raise ScriptError(f"{data_dir} holds {numbered[i - 1][1]} and {name}, two shards numbered {number}; "
                              f"move one of them away")
        if number > i:
            raise ScriptError(f"{os.path.join(data_dir, f'{split}_{i:03d}.bin')} is missing: the {split} shards "
                              f"must be numbered from 000 without gaps; prepare the dataset again (an interrupted "
                              f"prepare.py continues from its last complete shard)")
    return [os.path.join(data_dir, name) for _, name in numbered]


# build-nanogpt's shards: edufineweb_val_000000.npy, edufineweb_train_000001.npy, ...
NPY_SHARD = re.compile(r'(.+)_(train|val)_(\d+)\.npy')


def npy_shards(data_dir, split):
    """The .npy shards of a split as build-nanogpt's fineweb.py writes them, in order: one numbering
    for the whole token stream, the val shard first (edufineweb_val_000000.npy, then
    edufineweb_train_000001.npy, ...). Numbers missing or taken twice, or shards of two prefixes, are
    refused."""
    found = sorted((int(m.group(3)), m.group(2), m.group(1), name)
                   for name in os.listdir(data_dir) if (m := NPY_SHARD.fullmatch(name)))
    if not found:
        return []
    prefixes = sorted({prefix for _, _, prefix, _ in found})
    if len(prefixes) > 1:
        raise ScriptError(f"{data_dir} holds .npy shards of {len(prefixes)} datasets ({', '.join(prefixes[:3])}); "
                          f"keep one of them in the folder")
    for i, (number, _, _, name) in enumerate(found):
        if number < i:
            raise ScriptError(f"{data_dir} holds {found[i - 1][3]} and {name}, two shards numbered {number}; "
                              f"move one of them away")
        if number > i:
            raise ScriptError(f"{data_dir} has no .npy shard numbered {i} (after {found[i - 1][3] if i else 'none'}): "
                              f"the shards are numbered from 0 without gaps, val then train; copy the missing one")
    return [os.path.join(data_dir, name) for _, kind, _, name in found if kind == split]


def open_tokens(path, dtype):
    """A token file as a read-only array of dtype: a flat .bin file (memmapped), or a .npy file whose
    header must say a flat array of dtype (memmapped past the header)."""
    if not path.endswith('.npy'):
        size = os.path.getsize(path)
        if size % dtype.itemsize:
            raise ScriptError(f"{path} is not a whole number of {dtype} tokens; prepare the dataset again")
        return np.memmap(path, dtype=dtype, mode='r') if size else np.zeros(0, dtype)
    try:
        with open(path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, file_dtype = read_header(f)  # C or Fortran order: the same for a flat array
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise ScriptError(f"{path} is not a .npy file numpy can read ({e}); copy it again")
    if file_dtype != dtype.newbyteorder('<') or len(shape) != 1:
        kind = file_dtype.name + (' (big-endian)' if file_dtype.byteorder == '>' else '')
        raise ScriptError(f"{path} holds {kind if file_dtype.fields is None else 'records'} of shape "
                          f"{shape}, not a flat array of {dtype} tokens: a shard of another token width or kind; "
                          f"move it out of the dataset")
    n = shape[0]
    if os.path.getsize(path) != offset + n * dtype.itemsize:
        raise ScriptError(f"{path} is not {n:,} tokens long, as its header says: cut short or grown; copy it again")
    return np.memmap(path, dtype=file_dtype, mode='r', offset=offset, shape=(n,)) if n else np.zeros(0, dtype)


def check_listed_files(data_dir, split, files, listed, dtype):
    """The split's files on disk against those meta.pkl lists ({name: tokens}, written by the
    preparation): each listed one there, with as many bytes as its tokens of dtype take, and no other.
    A shard of another token width, or from another preparation, would train as garbage."""
    names = [os.path.basename(path) for path in files]
    shard = re.compile(rf'{re.escape(split)}(_\d{{3,}})?\.bin')
    for name in sorted(n for n in listed if shard.fullmatch(n)):
        if name not in names:
            raise ScriptError(f"{os.path.join(data_dir, name)} is missing (meta.pkl lists it); prepare the dataset "
                              f"again")
    for path, name in zip(files, names):
        if name not in listed:
            raise ScriptError(f"{path} is not among the files meta.pkl lists: it is not of this preparation; move "
                              f"it away or prepare the dataset again")
        size, tokens = os.path.getsize(path), listed[name]
        if size != tokens * dtype.itemsize:
            raise ScriptError(f"{path} holds {size:,} bytes where meta.pkl lists {tokens:,} {dtype} tokens "
                              f"({tokens * dtype.itemsize:,} bytes): a file of another token width or another "
                              f"preparation; prepare the dataset again")


class TokenShards:
    """A split stored as shards <split>_000.bin, <split>_001.bin, ... read as one: len() is the tokens
    of all of them, and slices and np.asarray() see them joined in order (for whole-split evaluation).
    Training windows never cross from one shard into the next (see windows())."""

    def __init__(self, shards):
        self.shards = shards  # read-only memmaps
        self.lengths = np.array([len(s) for s in shards], dtype=np.int64)
        self.dtype = shards[0].dtype

    def __len__(self):
        return int(self.lengths.sum())

    def __getitem__(self, index):
        """A token, or a slice of the joined shards, read from the shards it covers only."""
        ends = np.cumsum(self.lengths)
        if not isinstance(index, slice):
            i = int(index) + (len(self) if int(index) < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"token {index} of {len(self)}")
            s = int(np.searchsorted(ends, i, side='right'))
            return self.shards[s][i - (ends[s] - self.lengths[s])]
        start, stop, step = index.indices(len(self))
        if step < 0:
            return np.asarray(self)[index]
        pieces = [shard[max(start - first, 0):max(stop - first, 0)]
                  for shard, first in zip(self.shards, ends - self.lengths) if first < stop and first + len(shard) > start]
        joined = np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)
        return joined if step == 1 else joined[::step]

    def __array__(self, dtype=None, copy=None):
        joined = np.concatenate(self.shards)
        return joined if dtype is None else joined.astype(dtype)

    def astype(self, dtype):
        return np.asarray(self, dtype=dtype)

    def window_count(self, block_size):
        """How many windows of block_size + 1 tokens fit in the shards, each inside one shard."""
        return int(np.maximum(self.lengths - block_size, 0).sum())

    def windows(self, k, block_size):
        """Rows of block_size + 1 tokens: window k[i] of the window_count(block_size) windows, counted
        shard after shard. Drawn uniformly over the windows, each shard is chosen in proportion to its
        length. With one shard, window k starts at token k, as in a single .bin file."""
        counts = np.maximum(self.lengths - block_size, 0)
        ends = np.cumsum(counts)
        shard = np.searchsorted(ends, k, side='right')
        offset = k - (ends[shard] - counts[shard])
        rows = np.empty((len(k), block_size + 1), dtype=self.dtype)
        for s in np.unique(shard):
            chosen = shard == s
            rows[chosen] = self.shards[s][offset[chosen, None] + np.arange(block_size + 1)]
        return rows


def open_split(data_dir, split, meta, block_size, vocab_size, dataset=None):
    """The tokens of a split, opened once: <split>.bin as a read-only memmap, or its shards
    <split>_000.bin, <split>_001.bin, ... (or .npy shards) as TokenShards. Checks first that the files
    exist, are those meta.pkl lists (where it lists them), hold whole tokens of the dataset's width and
    more than block_size of them, and (up to FULL_CHECK_TOKENS tokens in all) that every id is below
    vocab_size."""
    hint = prepare_hint(dataset or os.path.basename(data_dir))
    if not os.path.isdir(data_dir):
        raise ScriptError(f"no dataset folder {data_dir}; {hint}")
    files = split_files(data_dir, split)
    if not files:
        raise ScriptError(f"{os.path.join(data_dir, f'{split}.bin')} does not exist (nor {split}_000.bin); {hint}")
    dtype = token_dtype(meta)
    if 'files' in meta:
        check_listed_files(data_dir, split, files, meta['files'], dtype)
    shards = [open_tokens(path, dtype) for path in files]
    n = sum(len(tokens) for tokens in shards)
    if os.path.basename(files[0]) == f'{split}.bin':
        if n <= block_size:
            raise ScriptError(f"{files[0]} has {n} tokens, it needs more than block_size={block_size}; "
                              f"use a smaller block_size or more data")
        data = shards[0]
    else:
        data = TokenShards(shards)
        if data.window_count(block_size) == 0:
            raise ScriptError(f"no shard of {os.path.join(data_dir, split)}_* has more than "
                              f"block_size={block_size} tokens; use a smaller block_size or more data")
    if n <= FULL_CHECK_TOKENS:
        for path, tokens in zip(files, shards):
            check_token_ids(tokens, vocab_size, path)
    return data


def check_token_ids(tokens, vocab_size, where):
    top = int(tokens.max()) if len(tokens) else 0
    if top >= vocab_size:
        raise ScriptError(f"{where} holds token id {top}, not below the model's vocab_size {vocab_size}; "
                         f"the data and the model's vocabulary do not match")


def get_batch(data, batch_size, block_size, seed, vocab_size=None, device='cpu'):
    """batch_size random windows of data: x (batch_size, block_size) and y, the same shifted by one.
    The windows are a function of seed alone (a tuple of ints, e.g. (seed, rank, iter, micro_step)),
    so a resumed run draws exactly the batches the uninterrupted run would have drawn."""
    rng = np.random.default_rng(seed)
    if isinstance(data, TokenShards):
        rows = data.windows(rng.integers(0, data.window_count(block_size), size=batch_size), block_size)
    else:
        starts = rng.integers(0, len(data) - block_size, size=batch_size)
        rows = data[starts[:, None] + np.arange(block_size + 1)]  # one gather, no Python loop over rows
    return batch_tensors(rows, len(data), vocab_size, device)


def row_count(data, block_size):
    """How many rows of block_size + 1 tokens a split holds read in order (see ordered_rows)."""
    return (len(data) - 1) // block_size


def check_fixed_val_set(data, block_size, rows):
    """Stops with one line where a val split holds fewer than rows rows (fixed_val_set's eval_iters x batch_size)."""
    if (held := row_count(data, block_size)) < rows:
        raise ScriptError(f"fixed_val_set=True evaluates on the first eval_iters x batch_size = {rows} rows of "
                          f"{block_size + 1} tokens of the val split, which has {held}; lower eval_iters")


def epoch_begun(first, count, rows):
    """The epoch (counted from 1) that begins among rows first to first + count - 1 of a split of rows
    rows read over and over (data_order='sequential'), or None; the first epoch's start is not one."""
    epoch = (first + count - 1) // rows
    return epoch + 1 if epoch > ((first - 1) // rows if first else 0) else None


def ordered_rows(data, block_size, first, count):
    """Rows first, first + 1, ..., first + count - 1 of a split read in order, as build-nanogpt and
    llm.c read it: row r is tokens r * block_size to r * block_size + block_size of the split (its
    shards joined: they are pieces of one stream of documents), its last token the first of row r + 1,
    so that the rows' inputs take every token once. Past the last row, row r is row r mod
    row_count(): the split read again (an epoch). The split's last (len - 1) % block_size tokens are
    left out."""
    total = row_count(data, block_size)
    first %= total
    pieces = []
    while count:
        n = min(count, total - first)
        chunk = np.asarray(data[first * block_size:(first + n) * block_size + 1])
        pieces.append(np.lib.stride_tricks.sliding_window_view(chunk, block_size + 1)[::block_size])
        count, first = count - n, 0
    return np.concatenate(pieces)


def get_ordered_batch(data, batch_size, block_size, first_row, vocab_size=None, device='cpu'):
    """Rows first_row to first_row + batch_size - 1 of the split read in order (ordered_rows), as x
    and y like get_batch's."""
    return batch_tensors(ordered_rows(data, block_size, first_row, batch_size), len(data), vocab_size, device)


def batch_tensors(rows, data_tokens, vocab_size, device):
    """x and y of rows of block_size + 1 tokens, on the device; their ids checked against vocab_size
    where the split (data_tokens long) was too large to check whole when opened."""
    import torch  # here, not at the top: the prepare scripts and their worker processes start without it
    if vocab_size is not None and data_tokens > FULL_CHECK_TOKENS:
        check_token_ids(rows, vocab_size, 'the training data')
    x = torch.from_numpy(rows[:, :-1].astype(np.int64))
    y = torch.from_numpy(rows[:, 1:].astype(np.int64))
    if device.startswith('cuda'):
        # pinned host memory lets the copy run asynchronously, overlapping the current step
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------- tokenizers

def gpt2_encoding():
    """tiktoken's GPT-2 BPE. tiktoken downloads it on first use; where that fails, it is read from
    the tiktoken-format file named by NANOGPT_GPT2_BPE."""
    import tiktoken
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as download_error:
        path = os.environ.get(GPT2_BPE_ENV)
        if not path:
            raise ScriptError(f"tiktoken could not download the GPT-2 BPE ({type(download_error).__name__}); "
                             f"offline, set {GPT2_BPE_ENV} to a local gpt2.tiktoken file")
        if not os.path.isfile(path):
            raise ScriptError(f"{GPT2_BPE_ENV}={path} does not exist, and tiktoken could not download the GPT-2 BPE")
        from tiktoken_ext.openai_public import r50k_pat_str
        return tiktoken.Encoding(name='gpt2', pat_str=r50k_pat_str, mergeable_ranks=gpt2_ranks(path),
                                 special_tokens={'<|endoftext|>': GPT2_EOT_TOKEN})


def gpt2_ranks(path):
    """GPT-2's BPE ranks {token bytes: rank} from a file in tiktoken's format (a line 'base64 rank' per
    token), read whole (tiktoken's own reader would cache it by its path), and checked to be GPT-2's:
    another BPE of its own ranks would tokenize every text into other ids, without a word."""
    try:
        with open(path, 'rb') as f:
            data = f.read(GPT2_BPE_MAX_BYTES + 1)
    except OSError as e:
        raise ScriptError(f"cannot read {GPT2_BPE_ENV}={path}: {e.strerror or e}")
    where = f"{GPT2_BPE_ENV}={path}"
    if len(data) > GPT2_BPE_MAX_BYTES:
        raise ScriptError(f"{where} is larger than {GPT2_BPE_MAX_BYTES >> 20} MiB, not GPT-2's BPE ranks (tiktoken's "
                          f"r50k_base.tiktoken, 835,554 bytes)")
    ranks = {}
    try:
        for line in data.splitlines():
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, binascii.Error):
        raise ScriptError(f"{where} is not a tiktoken BPE file (each line a base64 token and its rank)")
    if sorted(ranks.values()) != list(range(GPT2_EOT_TOKEN)) or ranks_sha256(ranks) != GPT2_RANKS_SHA256:
        raise ScriptError(f"{where} holds a BPE of {len(ranks):,} tokens that is not GPT-2's (tiktoken's "
                          f"r50k_base.tiktoken); point it at GPT-2's")
    return ranks


def ranks_sha256(ranks):
    """A fingerprint of BPE ranks: the sha256 of the tokens in the order of their ranks, each after its length."""
    digest = hashlib.sha256()
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        digest.update(len(token).to_bytes(4, 'little') + token)
    return digest.hexdigest()


def char_vocab(text):
    """stoi and itos of the sorted set of characters in text."""
    chars = sorted(set(text))
    return {ch: i for i, ch in enumerate(chars)}, {i: ch for i, ch in enumerate(chars)}


def is_gpt2_data(meta):
    """Whether a dataset's tokens are GPT-2's BPE: its meta.pkl says so, or it has none (upstream's)."""
    if not meta or meta.get('tokenizer') == 'gpt2':
        return True
    return 'stoi' not in meta and 'tokenizer' not in meta and meta.get('vocab_size') in (GPT2_VOCAB_SIZE,
                                                                                           PADDED_GPT2_VOCAB_SIZE)


def check_vocab(meta, model_vocab, where, hint):
    """Stops, with hint, unless a model with model_vocab tokens reads the tokens of the data that
    meta describes: the same vocab_size, or GPT-2's BPE on both sides (50257, or padded to 50304)."""
    if is_gpt2_data(meta):
        if model_vocab >= GPT2_VOCAB_SIZE:
            return
        data = "GPT-2's BPE"
    elif meta['vocab_size'] == model_vocab:
        return
    else:
        kind = 'characters' if 'stoi' in meta else 'tokens'
        data = f"{meta['vocab_size']} {kind}"
    raise ScriptError(f"the model's vocabulary ({model_vocab} tokens) is not that of {where} ({data}); {hint}")


def load_tokenizer(meta, where='this dataset', data_dir=None):
    """(encode, decode_bytes) for a dataset's meta: text -> ids, ids -> UTF-8 bytes. Bytes, because
    a BPE token can hold part of a character: decode them with an incremental UTF-8 decoder. A
    'bpe' dataset's tokenizer file is read from data_dir."""
    if meta.get('tokenizer') == 'bpe':
        tokenizer = read_bpe(meta, data_dir)[0]
        table = bpe_token_bytes(tokenizer, where)

        def encode(text):
            return tokenizer.encode(text, add_special_tokens=False).ids  # <|endoftext|> written out is that token

        def decode_bytes(ids):
            return b''.join(table[i] for i in ids if i < len(table))
        return encode, decode_bytes
    if 'stoi' in meta and 'itos' in meta:
        stoi, itos = meta['stoi'], meta['itos']

        def encode(text):
            unknown = sorted(set(ch for ch in text if ch not in stoi))
            if unknown:
                shown = ', '.join(repr(ch) for ch in unknown[:10]) + (' ...' if len(unknown) > 10 else '')
                raise ScriptError(f"the prompt has characters that are not in the vocabulary of {where}: {shown}")
            return [stoi[ch] for ch in text]

        def decode_bytes(ids):
            return ''.join(itos.get(i, '') for i in ids).encode('utf-8')  # ids past the characters: padding
        return encode, decode_bytes
    if not is_gpt2_data(meta):
        raise ScriptError(f"{where} has no tokenizer this toolkit knows: its meta.pkl has neither stoi and itos "
                          f"(characters) nor tokenizer='gpt2'")
    enc = gpt2_encoding()

    def encode(text):
        return enc.encode(text, allowed_special={'<|endoftext|>'})

    def decode_bytes(ids):
        ids = [i for i in ids if i < enc.n_vocab]  # a padded vocabulary's unused ids decode to nothing
        return enc.decode_bytes(ids)
    return encode, decode_bytes


def byte_alphabet():
    """The character that stands for each byte in a byte-level BPE's token strings (GPT-2's vocab.json
    and merges.txt, Hugging Face's ByteLevel): the printable Latin-1 bytes stand for themselves, the
    others (control bytes, space, ...) take the characters from U+0100 on, in byte order."""
    printable = {*range(ord('!'), ord('~') + 1), *range(ord('\xa1'), ord('\xac') + 1), *range(ord('\xae'), 256)}
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


def train_bpe(texts, vocab_size, show_progress=False):
    """A byte-level BPE of vocab_size tokens trained on texts (an iterable of strings, read once, so a
    corpus need not be in memory) by Hugging Face's tokenizers: <|endoftext|> (id 0), the 256 bytes,
    then the merges. Any UTF-8 text encodes (there is no unknown token) and decodes back exactly: no
    normalisation, no space added in front. Stops short of vocab_size where the text has no more pairs
    to merge; the caller checks get_vocab_size()."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.BPE())
    # GPT-2's pre-tokenizer: words, numbers, punctuation and spaces split apart before merging, bytes as characters
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def read_bpe(meta, data_dir):
    """The tokenizer of a 'bpe' dataset, from the file its meta.pkl names in data_dir: (tokenizers.Tokenizer,
    the file's bytes). A file that is missing, that is no tokenizer, or whose size is not meta's
    vocab_size is one error line."""
    name = meta.get('tokenizer_file', 'tokenizer.json')
    if not isinstance(name, str) or not name or os.path.basename(name) != name or name in ('.', '..'):
        raise ScriptError(f"the meta.pkl of {data_dir} names the tokenizer file {short(name)}, not a file name in "
                          f"its folder; prepare the dataset again")
    path = os.path.join(data_dir or '.', name)
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        raise ScriptError(f"{path} is missing: the dataset's tokenizer (its meta.pkl names it); prepare the dataset "
                          f"again with data/prepare.py --tokenizer=bpe")
    except OSError as e:
        raise ScriptError(f"cannot read {path}: {e.strerror or e}")
    from tokenizers import Tokenizer
    try:
        tokenizer = Tokenizer.from_str(raw.decode('utf-8'))
    except Exception as e:  # UnicodeDecodeError, or the Rust library's Exception for what it cannot parse
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ScriptError(f"{path} is not a tokenizer file ({reason}); prepare the dataset again")
    if tokenizer.get_vocab_size() != meta.get('vocab_size'):
        raise ScriptError(f"{path} has {tokenizer.get_vocab_size()} tokens, but the dataset's meta.pkl says "
                          f"vocab_size={short(meta.get('vocab_size'))}; prepare the dataset again")
    return tokenizer, raw


def bpe_token_bytes(tokenizer, where):
    """The bytes each id of a byte-level BPE stands for (special tokens: their name, as its decoder
    writes them), a list indexed by id. A tokenizer that is not byte-level is one error line."""
    byte_of = {c: b for b, c in enumerate(byte_alphabet())}
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    table = [b''] * tokenizer.get_vocab_size()
    for token, i in tokenizer.get_vocab().items():
        if token in special:
            table[i] = token.encode('utf-8')
        elif all(c in byte_of for c in token):
            table[i] = bytes(byte_of[c] for c in token)
        else:
            raise ScriptError(f"the tokenizer of {where} is not a byte-level BPE (its token {short(token)} is not "
                              f"bytes); prepare the dataset again with data/prepare.py --tokenizer=bpe")
    return table


def token_bytes(meta, where='this dataset', data_dir=None):
    """(the bytes each id stands for, a list indexed by id; the ids of special tokens) for a dataset's
    tokenizer. Its length is the number of ids the tokenizer makes (GPT-2's 50257, where the model's
    vocabulary is padded to 50304). The special tokens (<|endoftext|>) decode to their name but stand
    for no text: bits per byte counts them as no bytes."""
    if meta.get('tokenizer') == 'bpe':
        tokenizer = read_bpe(meta, data_dir)[0]
        return bpe_token_bytes(tokenizer, where), set(tokenizer.get_added_tokens_decoder())
    if 'stoi' in meta and 'itos' in meta:
        itos = meta['itos']
        return [itos.get(i, '').encode('utf-8') for i in range(max(itos, default=-1) + 1)], set()
    load_tokenizer(meta, where)  # the one error line of a dataset without a tokenizer
    enc = gpt2_encoding()
    return [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)], {enc.eot_token}


def tokenizer_fingerprint(meta, data_dir=None):
    """A short name of a dataset's tokenizer, which checkpoints record: 'gpt2', 'char-<size>-<hash>' (the
    hash of its characters in id order) or 'bpe-<size>-<hash>' (of its tokenizer file); None where meta
    names no tokenizer. A dataset prepared again from other text can keep its vocab_size; its
    fingerprint changes, so that no model is run on ids that now stand for other text."""
    if meta.get('tokenizer') == 'bpe':
        tokenizer, raw = read_bpe(meta, data_dir)
        return f"bpe-{tokenizer.get_vocab_size()}-{hashlib.sha256(raw).hexdigest()[:16]}"
    if 'stoi' in meta and 'itos' in meta:
        chars = json.dumps([meta['itos'][i] for i in sorted(meta['itos'])], ensure_ascii=False)
        return f"char-{len(meta['itos'])}-{hashlib.sha256(chars.encode('utf-8')).hexdigest()[:16]}"
    return 'gpt2' if is_gpt2_data(meta) else None


def model_tokenizer(checkpoint, model_vocab, where, hint):
    """(meta, data_dir, where) of the tokenizer a model reads: that of the dataset its checkpoint names
    (its meta.pkl and folder), else GPT-2's (meta {}, data_dir None, the where given, for GPT-2's weights
    and Hugging Face directories). Stops, with hint, where the model's vocabulary is not the
    tokenizer's, or its checkpoint records another tokenizer (the dataset was prepared again)."""
    config = checkpoint.get('config') if isinstance(checkpoint, dict) else None
    dataset = config.get('dataset') if isinstance(config, dict) else None
    meta, data_dir = {}, None
    if isinstance(dataset, str) and dataset:
        data_dir, where = dataset_dir(dataset), f"dataset {dataset}"
        meta = load_meta(data_dir)
        if not meta and model_vocab < GPT2_VOCAB_SIZE:
            raise ScriptError(f"the model's vocabulary ({model_vocab} tokens) is not GPT-2's and "
                              f"{os.path.join(data_dir, 'meta.pkl')} is missing; prepare that dataset again")
        hint = "the model was trained on other tokens than these (was the dataset prepared again since?)"
    check_vocab(meta, model_vocab, where, hint)
    check_fingerprint(checkpoint, tokenizer_fingerprint(meta, data_dir), where, hint)
    return meta, data_dir, where


def check_fingerprint(checkpoint, fingerprint, where, hint):
    """Stops, with hint, where a checkpoint records another tokenizer than fingerprint (tokenizer_fingerprint
    of the dataset at hand). Checkpoints from before fingerprints (and upstream's) record none: no check."""
    recorded = checkpoint.get('tokenizer_fingerprint') if isinstance(checkpoint, dict) else None
    if recorded is None or fingerprint is None or recorded == fingerprint:
        return
    shown = recorded[:60] if isinstance(recorded, str) else short(recorded)
    raise ScriptError(f"the model was trained with another tokenizer ({shown}) than {where} has ({fingerprint}); "
                      f"{hint}")


# ----------------------------------------------------------------------------- writing datasets

def write_tokens(f, ids, dtype=np.uint16):
    """Appends token ids to a binary file as dtype, through f.write: a full disk is then an OSError that
    says so (numpy's tofile says only how many items it wrote)."""
    f.write(memoryview(np.ascontiguousarray(ids, dtype=dtype)).cast('B'))


def write_dataset(out_dir, train_ids, val_ids, meta, source='the text', extra_files=None):
    """train.bin, val.bin and meta.pkl (and extra_files) in out_dir from two arrays of ids: write_token_stream
    with one piece per split."""
    return write_token_stream(out_dir, [('train', train_ids), ('val', val_ids)], meta, source, extra_files)


def write_token_stream(out_dir, pieces, meta, source='the text', extra_files=None):
    """train.bin, val.bin and meta.pkl in out_dir (and extra_files, {name: bytes}, such as the tokenizer), swapped
    in together with files.swap_in, meta.pkl last: whatever happens, readers find the old dataset whole
    or the new one whole. pieces yields (split, ids) pairs, 'train' or 'val' and an array of ids, each
    appended to its split's file as it comes: a corpus larger than memory is written piece by piece.
    A kill while the files are written leaves the old ones (and temporary .tmp files); a kill while
    they are renamed leaves a journal that the next reader (load_meta) or writer completes; a full disk
    is one error line, the old files kept. meta gains the token dtype and the token files with their
    counts ('files'). A split of fewer than 2 tokens (nothing to predict) is refused, and nothing changes."""
    dtype = np.uint32 if meta['vocab_size'] > 65535 else np.uint16
    meta = dict(meta, dtype=np.dtype(dtype).name)
    extra_files = extra_files or {}
    with swap_in(out_dir, ('train.bin', 'val.bin', *extra_files, 'meta.pkl')) as staged:
        counts = {'train': 0, 'val': 0}
        with open(staged['train.bin'], 'wb') as train_file, open(staged['val.bin'], 'wb') as val_file:
            out = {'train': train_file, 'val': val_file}
            for split, ids in pieces:
                write_tokens(out[split], ids, dtype)
                counts[split] += len(ids)
        if counts['train'] < 2 or counts['val'] < 2:
            raise too_small(source, counts['train'], counts['val'])
        meta['files'] = {'train.bin': counts['train'], 'val.bin': counts['val']}
        for name, data in extra_files.items():
            with open(staged[name], 'wb') as f:
                f.write(data)
        with open(staged['meta.pkl'], 'wb') as f:
            pickle.dump(meta, f)
    return meta


def too_small(source, n_train, n_val):
    return ScriptError(f"{source} is too small to split: train gets {n_train} tokens and val {n_val}, each needs "
                       f"at least 2; give more text")


def read_text(path):
    """The UTF-8 text a prepare script works on."""
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(f"cannot read {path}: {e}")
