"""
Any UTF-8 text as a dataset: writes data/<dataset>/train.bin, val.bin and meta.pkl for train.py.
$ python data/prepare.py --input=path/to/text.txt --dataset=mytext
$ python data/prepare.py --input=path/to/folder --dataset=mybooks --tokenizer=bpe --vocab_size=4096
$ python data/prepare.py --input=path/to/folder --dataset=mybooks --tokenizer=gpt2 --val_fraction=0.05

--input is a file, or a folder whose .txt files (in all its subfolders, hidden ones left out) are read
in sorted path order, as one stream of text: joined with a blank line ("\n\n") for char and gpt2,
separated by an <|endoftext|> token (which is no text) for bpe. Text is read with Python's universal
newlines, so \r\n becomes \n. The first 1 - val_fraction of the stream's characters is for training,
the rest for validation (a file may straddle the two): a first pass counts them, so the split is the
one the whole text in memory would give.

--tokenizer=char: one token per character, a vocabulary of the text's characters (stoi, itos in meta.pkl).
--tokenizer=gpt2: tiktoken's GPT-2 BPE (offline: set NANOGPT_GPT2_BPE to a local gpt2.tiktoken).
--tokenizer=bpe --vocab_size=N: a byte-level BPE of N tokens (at least 257: the 256 bytes and
<|endoftext|>), trained by Hugging Face's tokenizers on the training part only and written beside the
dataset as tokenizer.json, which meta.pkl names. Any UTF-8 text round-trips through it exactly.

The text is never in memory whole: files are read in blocks, cut into pieces of about 64K characters,
encoded on every core and appended to the .bin files. A cut goes right after a newline that has a
non-space character on each side, where the BPE pre-tokenizers (GPT-2's and ours) always split, so the
pieces tokenize as the whole text would; a text without such a place for a million characters is cut
there anyway (its tokens may differ a little from the whole text's; it still decodes exactly).
"""
import codecs
import glob
import itertools
import os
import re
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from configurator import configure  # noqa: E402
from nanogpt import ScriptError  # noqa: E402

# -----------------------------------------------------------------------------
input = ''  # a UTF-8 text file, or a folder of .txt files
dataset = ''  # the name of the dataset: it is written to data/<dataset>/ (train.py --dataset=<dataset>)
tokenizer = 'char'  # 'char' (one token per character), 'gpt2' (tiktoken's GPT-2 BPE) or 'bpe' (trained on your text)
vocab_size = 0  # --tokenizer=bpe: the tokens of the BPE to train, at least 257 (256 bytes and <|endoftext|>)
val_fraction = 0.1  # the last part of the text, held out for validation
# -----------------------------------------------------------------------------
configure(globals())
if not input or not dataset:
    raise ScriptError("give the text and a name: python data/prepare.py --input=PATH --dataset=NAME")
if tokenizer not in ('char', 'gpt2', 'bpe'):
    raise ScriptError(f"tokenizer={tokenizer!r}: use 'char', 'gpt2' or 'bpe'")
if tokenizer == 'bpe' and vocab_size < 257:
    raise ScriptError(f"vocab_size={vocab_size}: a byte-level BPE needs at least 257 tokens (the 256 bytes and "
                      f"<|endoftext|>); give --vocab_size=N, e.g. 4096")
if tokenizer != 'bpe' and vocab_size:
    raise ScriptError(f"vocab_size is for --tokenizer=bpe; the vocabulary of --tokenizer={tokenizer} is " +
                      ("the characters of the text" if tokenizer == 'char' else "GPT-2's"))
if not os.path.exists(input):
    raise ScriptError(f"{input} does not exist")

if os.path.isdir(input):
    files = sorted(p for p in glob.glob(os.path.join(input, '**', '*.txt'), recursive=True) if os.path.isfile(p))
    if not files:
        raise ScriptError(f"no .txt files in the folder {input}")
else:
    files = [input]
JOIN = '\n\n'  # between files, for char and gpt2; bpe puts <|endoftext|> there
BLOCK = 1 << 20  # characters read at a time
CHUNK = 1 << 16  # characters per piece to tokenize, about
MAX_PIECE = 1 << 20  # a piece is cut here if no safe place came before
SAFE_CUT = re.compile(r'(?<=\S\n)(?=\S)')
size = sum(os.path.getsize(p) for p in files)  # bytes
quiet = size < 10 * CHUNK  # no progress bars for a small text


def first_bad_byte(path):
    """(the byte, its offset) where path stops being UTF-8."""
    decoder, offset = codecs.getincrementaldecoder('utf-8')(), 0
    with open(path, 'rb') as f:
        while block := f.read(BLOCK):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:  # e.object: the bytes the decoder held back, then block
                return e.object[e.start], offset + e.start - (len(e.object) - len(block))
            offset += len(block)
    return 0, offset


def read_blocks(path, bar=None):
    """The text of a file, in blocks of up to BLOCK characters. A file that is not UTF-8, or that holds
    NUL bytes (a binary file), is one error line."""
    try:
        with open(path, encoding='utf-8') as f:
            done = 0  # bytes read
            while block := f.read(BLOCK):
                if '\0' in block:
                    raise ScriptError(f"{path} holds NUL bytes: a binary file, not text; move it out of the way")
                if bar is not None:
                    bar.update(f.buffer.tell() - done)
                    done = f.buffer.tell()
                yield block
    except UnicodeDecodeError:
        byte, offset = first_bad_byte(path)
        raise ScriptError(f"{path} is not valid UTF-8 (byte 0x{byte:02x} at offset {offset}); convert it to UTF-8 "
                          f"or move it out of the way")
    except OSError as e:
        raise ScriptError(f"cannot read {path}: {e.strerror or e}")


def texts(bar=None):
    """The stream of text: the files' blocks, with JOIN between files, or None (<|endoftext|>) for bpe."""
    for i, path in enumerate(files):
        if i:
            yield None if tokenizer == 'bpe' else JOIN
        yield from read_blocks(path, bar)


def next_cut(buf, start, final):
    """Where the piece that begins at buf[start] ends: at the first safe place CHUNK characters on, or
    MAX_PIECE on where there is none; with final, at the end of buf; None: wait for more text."""
    if len(buf) - start >= CHUNK:
        if cut := SAFE_CUT.search(buf, start + CHUNK, start + MAX_PIECE):
            return cut.start()
        if len(buf) - start >= MAX_PIECE:
            return start + MAX_PIECE
    return len(buf) if final and start < len(buf) else None


def pieces(split):
    """('train' or 'val', piece) along the stream: its text cut into pieces, the first `split` characters
    for training, and (split, None) for each <|endoftext|>. A piece never spans the split or a file boundary
    of bpe's."""
    buf, start, pos = '', 0, 0  # pos: the place of buf[start] in the stream
    for text in itertools.chain(texts(), ['']):
        final = text is None or text == ''
        if text:
            buf, start = buf[start:] + text, 0
        while (end := next_cut(buf, start, final)) is not None:
            if pos < split < pos + end - start:
                end = start + split - pos  # the train/val boundary is a cut of its own
            yield 'train' if pos < split else 'val', buf[start:end]
            pos, start = pos + end - start, end
        if text is None:
            yield 'train' if pos < split else 'val', None


# pass 1: the characters (and for char, which ones), each file checked before any work
n, chars = 0, set()
with tqdm(total=size, desc='reading', unit='B', unit_scale=True, disable=quiet) as bar:
    for text in texts(bar):
        if text is not None:
            n += len(text)
            if tokenizer == 'char':
                chars.update(text)
split = int(n * (1 - val_fraction))  # as shakespeare_char's int(n * 0.9) for the default 0.1
print(f"{len(files):,} file(s), {n:,} characters")

# nanogpt.data imports torch, which takes seconds: only now that the input is known to be readable
from nanogpt.data import (EOT, PADDED_GPT2_VOCAB_SIZE, dataset_dir, gpt2_encoding, too_small, train_bpe,  # noqa: E402
                          write_token_stream)

files_out = {}
if n == 0:
    raise too_small(input, 0, 0)
if tokenizer == 'char':
    itos = dict(enumerate(sorted(chars)))
    stoi = {c: i for i, c in itos.items()}
    meta = {'vocab_size': len(stoi), 'itos': itos, 'stoi': stoi, 'tokenizer': 'char'}
    id_dtype = np.uint32 if len(stoi) > 65535 else np.uint16
    lookup = np.zeros(ord(max(chars)) + 1, dtype=id_dtype)  # code point -> id
    lookup[[ord(c) for c in stoi]] = list(stoi.values())

    def encode(batch):
        return [lookup[np.frombuffer(piece.encode('utf-32-le'), dtype=np.uint32)] for piece in batch]
elif tokenizer == 'gpt2':
    enc = gpt2_encoding()
    meta = {'vocab_size': PADDED_GPT2_VOCAB_SIZE, 'tokenizer': 'gpt2'}
    eot = enc.eot_token

    def encode(batch):  # tiktoken's threads, one per core
        return [np.array(ids, dtype=np.uint16) for ids in enc.encode_ordinary_batch(batch, num_threads=os.cpu_count())]
else:
    # the training part only, never val: pass 2 reads it again for the tokenizer's trainer
    train_texts = (piece for _, piece in itertools.takewhile(lambda p: p[0] == 'train', pieces(split)) if piece)
    bpe = train_bpe(train_texts, vocab_size, show_progress=not quiet)
    if bpe.get_vocab_size() < vocab_size:
        raise ScriptError(f"vocab_size={vocab_size} is more than the training text can fill: its BPE ran out of pairs "
                          f"to merge at {bpe.get_vocab_size()} tokens; use --vocab_size={bpe.get_vocab_size()} or less, "
                          f"or give more text")
    files_out['tokenizer.json'] = bpe.to_str().encode('utf-8')
    meta = {'vocab_size': vocab_size, 'tokenizer': 'bpe', 'tokenizer_file': 'tokenizer.json'}
    eot = bpe.token_to_id(EOT)
    bpe.encode_special_tokens = True  # '<|endoftext|>' written in the text is text, not a document boundary
    id_dtype = np.uint32 if vocab_size > 65535 else np.uint16

    def encode(batch):  # the tokenizers library's threads, one per core
        return [np.array(e.ids, dtype=id_dtype) for e in bpe.encode_batch_fast(batch, add_special_tokens=False)]


def encoded(bar):
    """(split, ids) of each piece, in order, encoded a batch of pieces at a time."""
    stream = pieces(split)
    while batch := list(itertools.islice(stream, 4 * (os.cpu_count() or 1))):
        ids = iter(encode([piece for _, piece in batch if piece is not None]))
        for name, piece in batch:
            yield name, np.array([eot], dtype=np.uint32) if piece is None else next(ids)
            bar.update(len(piece or ''))


# pass 2 (bpe: 3): tokenize, the ids appended to train.bin and val.bin as they come
out_dir = dataset_dir(dataset)
with tqdm(total=n, desc=f'tokenizing ({tokenizer})', unit='char', unit_scale=True, disable=quiet) as bar:
    meta = write_token_stream(out_dir, encoded(bar), meta, source=input, extra_files=files_out)  # refuses a split of under 2 tokens
print(f"vocab size: {meta['vocab_size']:,}")
for name in ('train', 'val'):
    print(f"{name} has {os.path.getsize(os.path.join(out_dir, f'{name}.bin')) // np.dtype(meta['dtype']).itemsize:,} tokens")
print(f"wrote {out_dir}/train.bin, val.bin{', tokenizer.json' if files_out else ''} and meta.pkl ({meta['dtype']} tokens)")
