"""
Datasets on disk, batches and tokenizers, shared by the prepare scripts, train.py, bench.py and sample.py.

A dataset is a folder data/<name>/ with train.bin and val.bin, flat arrays of token ids (uint16, or
uint32 where meta.pkl says 'dtype': 'uint32'), or with each split in shards train_000.bin,
train_001.bin, ... read as one; and meta.pkl with vocab_size and the tokenizer: 'char' datasets carry
stoi and itos, 'gpt2' ones use tiktoken's GPT-2 BPE.
"""

import base64
import binascii
import hashlib
import io
import os
import pickle
import re
import reprlib

import numpy as np
import torch

from nanogpt import ScriptError
from nanogpt.files import finish_swap, pickle_bounds_error, swap_in

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project: data/ and the scripts
SHAKESPEARE_TXT = os.path.join(ROOT, 'data', 'shakespeare_char', 'input.txt')  # tiny Shakespeare, shipped
GPT2_VOCAB_SIZE = 50257  # GPT-2's BPE: 50,000 merges, 256 bytes and <|endoftext|>
GPT2_EOT_TOKEN = 50256  # <|endoftext|>
PADDED_GPT2_VOCAB_SIZE = 50304  # GPT-2's vocabulary padded up to a multiple of 64 for speed, as upstream's
GPT2_BPE_ENV = 'NANOGPT_GPT2_BPE'
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
    in order, or [] where there are none. Shards numbered with a gap, or a folder with both kinds,
    are refused: a split with a piece missing would train on the wrong data without a word."""
    single = os.path.join(data_dir, f'{split}.bin')
    pattern = re.compile(rf'{re.escape(split)}_(\d{{3,}})\.bin')
    numbered = sorted((int(m.group(1)), name) for name in os.listdir(data_dir) if (m := pattern.fullmatch(name)))
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
    <split>_000.bin, <split>_001.bin, ... as TokenShards. Checks first that the files exist, hold
    whole tokens and more than block_size of them, and (up to FULL_CHECK_TOKENS tokens in all) that
    every id is below vocab_size."""
    hint = prepare_hint(dataset or os.path.basename(data_dir))
    if not os.path.isdir(data_dir):
        raise ScriptError(f"no dataset folder {data_dir}; {hint}")
    files = split_files(data_dir, split)
    if not files:
        raise ScriptError(f"{os.path.join(data_dir, f'{split}.bin')} does not exist (nor {split}_000.bin); {hint}")
    dtype = token_dtype(meta)
    for path in files:
        if os.path.getsize(path) % dtype.itemsize:
            raise ScriptError(f"{path} is not a whole number of {dtype} tokens; prepare the dataset again")
    n = sum(os.path.getsize(path) for path in files) // dtype.itemsize
    if os.path.basename(files[0]) == f'{split}.bin':
        if n <= block_size:
            raise ScriptError(f"{files[0]} has {n} tokens, it needs more than block_size={block_size}; "
                              f"use a smaller block_size or more data")
        data = np.memmap(files[0], dtype=dtype, mode='r')
        shards = [data]
    else:
        shards = [np.memmap(path, dtype=dtype, mode='r') if os.path.getsize(path) else np.zeros(0, dtype)
                  for path in files]
        data = TokenShards(shards)
        if data.window_count(block_size) == 0:
            raise ScriptError(f"no shard of {os.path.join(data_dir, split)}_*.bin has more than "
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
    if vocab_size is not None and len(data) > FULL_CHECK_TOKENS:
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


def load_tokenizer(meta, where='this dataset'):
    """(encode, decode_bytes) for a dataset's meta: text -> ids, ids -> UTF-8 bytes. Bytes, because
    a GPT-2 token can hold part of a character: decode them with an incremental UTF-8 decoder."""
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


# ----------------------------------------------------------------------------- writing datasets

def write_tokens(f, ids, dtype=np.uint16):
    """Appends token ids to a binary file as dtype, through f.write: a full disk is then an OSError that
    says so (numpy's tofile says only how many items it wrote)."""
    f.write(memoryview(np.ascontiguousarray(ids, dtype=dtype)).cast('B'))


def write_dataset(out_dir, train_ids, val_ids, meta, source='the text'):
    """train.bin, val.bin and meta.pkl in out_dir, swapped in together with files.swap_in, meta.pkl
    last: whatever happens, readers find the old dataset whole or the new one whole. A kill while
    the files are written leaves the old ones (and temporary .tmp files); a kill while they are
    renamed leaves a journal that the next reader (load_meta) or writer completes; a full disk is
    one error line, the old files kept. meta gains the token dtype. A split of fewer than 2 tokens
    (nothing to predict) is refused before anything is written."""
    if len(train_ids) < 2 or len(val_ids) < 2:
        raise ScriptError(f"{source} is too small to split: train gets {len(train_ids)} tokens and val "
                          f"{len(val_ids)}, each needs at least 2; give more text")
    dtype = np.uint32 if meta['vocab_size'] > 65535 else np.uint16
    meta = dict(meta, dtype=np.dtype(dtype).name)
    with swap_in(out_dir, ('train.bin', 'val.bin', 'meta.pkl')) as staged:
        for name, ids in (('train.bin', train_ids), ('val.bin', val_ids)):
            with open(staged[name], 'wb') as f:
                write_tokens(f, ids, dtype)
        with open(staged['meta.pkl'], 'wb') as f:
            pickle.dump(meta, f)
    return meta


def read_text(path):
    """The UTF-8 text a prepare script works on."""
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(f"cannot read {path}: {e}")
