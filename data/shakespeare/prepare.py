"""
Tiny Shakespeare in GPT-2 BPE tokens (tiktoken): train.bin and val.bin (uint16) and meta.pkl in this
folder. Reads input.txt here, else the path given as the first argument, else downloads it.
$ python data/shakespeare/prepare.py [path/to/input.txt]
Offline, tiktoken needs the BPE file: set NANOGPT_GPT2_BPE to a local gpt2.tiktoken.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from dataset import GPT2_VOCAB_SIZE, gpt2_encoding, input_text, write_dataset  # noqa: E402

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
here = os.path.dirname(os.path.abspath(__file__))
text = input_text(here, sys.argv, URL)
n = len(text)
enc = gpt2_encoding()
train_ids = enc.encode_ordinary(text[:int(n * 0.9)])  # the first 90% to train on, the rest to validate
val_ids = enc.encode_ordinary(text[int(n * 0.9):])
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
write_dataset(here, train_ids, val_ids, {'vocab_size': GPT2_VOCAB_SIZE, 'tokenizer': 'gpt2'})
