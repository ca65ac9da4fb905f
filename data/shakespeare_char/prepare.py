"""
Tiny Shakespeare as characters: train.bin and val.bin (uint16 ids) and meta.pkl (vocab_size, stoi,
itos) in this folder, from the copy of the text shipped here (input.txt), or from the text file given.
$ python data/shakespeare_char/prepare.py [path/to/other.txt]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from nanogpt.data import SHAKESPEARE_TXT, char_vocab, read_text, write_dataset  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
source = sys.argv[1] if len(sys.argv) > 1 else SHAKESPEARE_TXT
text = read_text(source)
print(f"length of dataset in characters: {len(text):,}")

stoi, itos = char_vocab(text)
print(f"all the unique characters: {''.join(itos.values())!r}")
print(f"vocab size: {len(stoi):,}")

n = len(text)
train_ids = [stoi[c] for c in text[:int(n * 0.9)]]  # the first 90% to train on, the rest to validate
val_ids = [stoi[c] for c in text[int(n * 0.9):]]
print(f"train has {len(train_ids):,} tokens")
print(f"val has {len(val_ids):,} tokens")
write_dataset(here, train_ids, val_ids, {'vocab_size': len(stoi), 'itos': itos, 'stoi': stoi, 'tokenizer': 'char'},
              source=source)
