"""
Tiny Shakespeare in GPT-2 BPE tokens (tiktoken): train.bin and val.bin (uint16) and meta.pkl in this
folder, from the copy of the text shipped in data/shakespeare_char/input.txt, or from the text file given.
$ python data/shakespeare/prepare.py [path/to/other.txt]
Offline, tiktoken needs the BPE file: set NANOGPT_GPT2_BPE to a local gpt2.tiktoken.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from nanogpt.data import PADDED_GPT2_VOCAB_SIZE, SHAKESPEARE_TXT, gpt2_encoding, read_text, write_dataset  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
source = sys.argv[1] if len(sys.argv) > 1 else SHAKESPEARE_TXT
text = read_text(source)
n = len(text)
enc = gpt2_encoding()
train_ids = enc.encode_ordinary(text[:int(n * 0.9)])  # the first 90% to train on, the rest to validate
val_ids = enc.encode_ordinary(text[int(n * 0.9):])
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
write_dataset(here, train_ids, val_ids, {'vocab_size': PADDED_GPT2_VOCAB_SIZE, 'tokenizer': 'gpt2'}, source=source)
