"""
Any UTF-8 text as a dataset: writes data/<dataset>/train.bin, val.bin and meta.pkl for train.py.
$ python data/prepare.py --input=path/to/text.txt --dataset=mytext
$ python data/prepare.py --input=path/to/folder --dataset=mybooks --tokenizer=gpt2 --val_fraction=0.05

--input is a file, or a folder whose .txt files (in all its subfolders, hidden ones left out) are read
in sorted path order and joined with a blank line ("\n\n") between files. Text is read with Python's
universal newlines, so \r\n becomes \n. The first 1 - val_fraction of the characters is for training,
the rest for validation. --tokenizer=char makes a vocabulary of the text's characters (stoi, itos in
meta.pkl); --tokenizer=gpt2 uses tiktoken's GPT-2 BPE (offline: set NANOGPT_GPT2_BPE to a local
gpt2.tiktoken). The whole text is held in memory while it is tokenized.
"""
import glob
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
tokenizer = 'char'  # 'char' (one token per character) or 'gpt2' (tiktoken's GPT-2 BPE)
val_fraction = 0.1  # the last part of the text, held out for validation
# -----------------------------------------------------------------------------
configure(globals())
if not input or not dataset:
    raise ScriptError("give the text and a name: python data/prepare.py --input=PATH --dataset=NAME")
if tokenizer not in ('char', 'gpt2'):
    raise ScriptError(f"tokenizer={tokenizer!r}: use 'char' or 'gpt2'")
if not os.path.exists(input):
    raise ScriptError(f"{input} does not exist")

# the text: one file, or a folder's .txt files joined
if os.path.isdir(input):
    files = sorted(p for p in glob.glob(os.path.join(input, '**', '*.txt'), recursive=True) if os.path.isfile(p))
    if not files:
        raise ScriptError(f"no .txt files in the folder {input}")
else:
    files = [input]
texts = []
with tqdm(files, desc='reading', unit='file', disable=len(files) < 1000) as bar:
    for path in bar:
        try:
            with open(path, encoding='utf-8') as f:
                texts.append(f.read())
        except UnicodeDecodeError as e:
            raise ScriptError(f"{path} is not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset "
                             f"{e.start}); convert it to UTF-8 or move it out of the way")
        except OSError as e:
            raise ScriptError(f"cannot read {path}: {e.strerror or e}")
text = '\n\n'.join(texts)
texts = None
# nanogpt.data imports torch, which takes seconds: only now that the input is known to be readable
from nanogpt.data import PADDED_GPT2_VOCAB_SIZE, char_vocab, dataset_dir, gpt2_encoding, write_dataset  # noqa: E402
n = len(text)
split = int(n * (1 - val_fraction))  # as shakespeare_char's int(n * 0.9) for the default 0.1
print(f"{len(files):,} file(s), {n:,} characters")

# Cut the text into pieces of about CHUNK characters, to tokenize with a progress bar. A cut goes only
# right after a newline that has a non-space character on each side: GPT-2's pre-tokenizer always
# separates there, so the pieces tokenize exactly as the whole text would.
CHUNK = 1 << 16
SAFE_CUT = re.compile(r'(?<=\S\n)(?=\S)')


def pieces(start, end):
    while start < end:
        cut = SAFE_CUT.search(text, min(start + CHUNK, end), end)
        stop = cut.start() if cut else end
        yield text[start:stop]
        start = stop


if tokenizer == 'char':
    stoi, itos = char_vocab(text)
    meta = {'vocab_size': len(stoi), 'itos': itos, 'stoi': stoi, 'tokenizer': 'char'}
    id_dtype = np.uint32 if len(stoi) > 65535 else np.uint16

    def encode(piece):
        return np.fromiter((stoi[c] for c in piece), dtype=id_dtype, count=len(piece))
else:
    enc = gpt2_encoding()
    meta = {'vocab_size': PADDED_GPT2_VOCAB_SIZE, 'tokenizer': 'gpt2'}

    def encode(piece):
        return np.array(enc.encode_ordinary(piece), dtype=np.uint16)

ids = {}
with tqdm(total=n, desc=f'tokenizing ({tokenizer})', unit='char', unit_scale=True, disable=n < 10 * CHUNK) as bar:
    for name, start, end in (('train', 0, split), ('val', split, n)):
        parts = []
        for piece in pieces(start, end):
            parts.append(encode(piece))
            bar.update(len(piece))
        ids[name] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
print(f"vocab size: {meta['vocab_size']:,}")
print(f"train has {len(ids['train']):,} tokens")
print(f"val has {len(ids['val']):,} tokens")

out_dir = dataset_dir(dataset)
meta = write_dataset(out_dir, ids['train'], ids['val'], meta, source=input)  # refuses a split of under 2 tokens
print(f"wrote {out_dir}/train.bin, val.bin and meta.pkl ({meta['dtype']} tokens)")
