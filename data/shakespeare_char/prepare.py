"""
Tiny Shakespeare as characters: train.bin and val.bin (uint16 ids) and meta.pkl (vocab_size, stoi,
itos) in this folder. Reads input.txt here, else the path given as the first argument, else downloads it.
$ python data/shakespeare_char/prepare.py [path/to/input.txt]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from dataset import char_vocab, input_text, write_dataset  # noqa: E402

URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
here = os.path.dirname(os.path.abspath(__file__))
text = input_text(here, sys.argv, URL)
print(f"length of dataset in characters: {len(text):,}")

stoi, itos = char_vocab(text)
print(f"all the unique characters: {''.join(itos.values())!r}")
print(f"vocab size: {len(stoi):,}")

n = len(text)
train_ids = [stoi[c] for c in text[:int(n * 0.9)]]  # the first 90% to train on, the rest to validate
val_ids = [stoi[c] for c in text[int(n * 0.9):]]
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
write_dataset(here, train_ids, val_ids, {'vocab_size': len(stoi), 'itos': itos, 'stoi': stoi, 'tokenizer': 'char'})
