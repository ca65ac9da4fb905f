"""
OpenWebText in GPT-2 BPE tokens: train.bin (about 9B tokens, 17GB) and val.bin (about 4M tokens) as
uint16, and meta.pkl, in this folder. Downloads the corpus from the Hugging Face hub (about 54GB in
its cache) and tokenizes it with tiktoken in num_proc worker processes.
$ pip install datasets
$ python data/openwebtext/prepare.py [--num_proc=8]
Offline, tiktoken needs the BPE file: set NANOGPT_GPT2_BPE to a local gpt2.tiktoken.
"""
import os
import pickle
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import configure  # noqa: E402
from nanogpt import ScriptError  # noqa: E402

# The tokenizer of each worker process, made on its first document. Workers get tokenize() by
# pickling; a module-level function that builds its own encoding travels light and works the same
# whether the workers are forked (Linux) or spawned (macOS, Windows).
_enc = None


def tokenize(example):
    global _enc
    if _enc is None:
        from nanogpt.data import gpt2_encoding
        _enc = gpt2_encoding()
    ids = _enc.encode_ordinary(example['text'])  # special tokens in the text are plain text here
    ids.append(_enc.eot_token)  # <|endoftext|> (50256) closes each document
    return {'ids': ids, 'len': len(ids)}


# -----------------------------------------------------------------------------
num_proc = max(1, (os.cpu_count() or 2) // 2)  # worker processes for downloading and tokenizing
# -----------------------------------------------------------------------------

if __name__ == '__main__':
    configure(globals())
    if not isinstance(num_proc, int) or num_proc < 1:
        raise ScriptError(f"num_proc must be a positive integer, got {num_proc!r}")
    try:
        import datasets
    except ImportError:
        raise ScriptError("this script needs the datasets package: pip install datasets")
    # nanogpt.data imports torch (seconds), so only now
    from nanogpt.data import PADDED_GPT2_VOCAB_SIZE, gpt2_encoding
    gpt2_encoding()  # fail now, not after the download, if the BPE cannot be had
    here = os.path.dirname(os.path.abspath(__file__))

    # one 'train' split of about 8M documents; hold out a small shuffled part for validation
    try:
        corpus = datasets.load_dataset('openwebtext', num_proc=num_proc)
    except (ConnectionError, OSError) as e:  # offline, or the hub is unreachable
        raise ScriptError(f"could not load openwebtext from the Hugging Face hub ({type(e).__name__}: {e})")
    splits = corpus['train'].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    splits['val'] = splits.pop('test')
    tokenized = splits.map(tokenize, remove_columns=['text'], desc='tokenizing', num_proc=num_proc)

    # each split into one flat file, a contiguous shard of documents at a time so memory stays small
    for split, docs in tokenized.items():
        total = int(np.sum(docs.with_format('numpy')['len'], dtype=np.uint64))
        path = os.path.join(here, f'{split}.bin')
        tokens = np.memmap(path + '.tmp', dtype=np.uint16, mode='w+', shape=(total,))
        n_shards = max(1, min(1024, len(docs)))
        pos = 0
        try:
            for i in tqdm(range(n_shards), desc=f'writing {split}.bin'):
                shard = docs.shard(num_shards=n_shards, index=i, contiguous=True).with_format('numpy')
                if len(shard):
                    ids = np.concatenate(shard['ids'])
                    tokens[pos:pos + len(ids)] = ids
                    pos += len(ids)
            tokens.flush()
        except BaseException:  # interrupted: no many-GB partial file left behind
            del tokens
            os.remove(path + '.tmp')
            raise
        del tokens
        os.replace(path + '.tmp', path)  # only a complete file gets the real name
        print(f"{split}.bin has {total:,} tokens")

    with open(os.path.join(here, 'meta.pkl.tmp'), 'wb') as f:
        pickle.dump({'vocab_size': PADDED_GPT2_VOCAB_SIZE, 'tokenizer': 'gpt2', 'dtype': 'uint16'}, f)
    os.replace(os.path.join(here, 'meta.pkl.tmp'), os.path.join(here, 'meta.pkl'))
