"""
FineWeb-Edu (HuggingFaceFW/fineweb-edu) in GPT-2 BPE tokens, as shards of shard_tokens tokens in
data/fineweb_edu/: val_000.bin, the first shard, is the validation split (as build-nanogpt takes it),
then train_000.bin, train_001.bin, ... (the last one shorter), and meta.pkl. Each document is
<|endoftext|> followed by its tokens; shards cut the stream of documents wherever one is full.
train.py reads the shards as one train split and one val split (--dataset=fineweb_edu).

$ pip install datasets
$ python data/fineweb_edu/prepare.py                                   # sample-10BT: ~10B tokens, ~100 shards
$ python data/fineweb_edu/prepare.py --subset=sample-100BT --dataset=fineweb_edu100B
$ python data/fineweb_edu/prepare.py --source=path/to/folder            # local .parquet or .jsonl, a 'text' column

The hub's files are downloaded into the Hugging Face cache first (sample-10BT: about 30GB there, and
20GB of shards here); --streaming=True reads them as it goes instead, for the subsets too large for
the disk. Interrupted (Ctrl-C, a lost connection, a full disk), the same command continues after the
last complete shard: each shard is written whole or not at all. Offline, tiktoken needs the BPE file:
set NANOGPT_GPT2_BPE to a local gpt2.tiktoken.
"""
import multiprocessing
import os
import pickle
import sys
import time

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import configure  # noqa: E402
from nanogpt import ScriptError  # noqa: E402

SUBSETS = ('sample-10BT', 'sample-100BT', 'sample-350BT', 'default')  # 'default' is the whole corpus, ~1.3T tokens

# -----------------------------------------------------------------------------
subset = 'sample-10BT'  # the hub's subset: 'sample-10BT', 'sample-100BT', 'sample-350BT' or 'default' (all of it)
repo = 'HuggingFaceFW/fineweb-edu'  # the hub dataset, or a local copy of it in the hub's layout
streaming = False  # read the hub's files as they download instead of caching them first (less disk; a resumed run reads the done part again)
source = ''  # a local folder of .parquet or .jsonl files with a 'text' column, read instead of the hub
dataset = 'fineweb_edu'  # the shards go to data/<dataset>/, or to this folder where it is a path
shard_tokens = 100_000_000  # tokens per shard; the first shard is the validation split
num_proc = max(1, (os.cpu_count() or 2) - 2)  # tokenizing worker processes
# -----------------------------------------------------------------------------


def hub_texts(datasets, skip):
    """The texts of the hub's subset in the hub's order, the first `skip` passed over."""
    try:
        docs = datasets.load_dataset(repo, name=subset, split='train', streaming=streaming,
                                     **({} if streaming else {'num_proc': num_proc}))
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        raise ScriptError(f"could not load {repo} ({subset}) ({type(e).__name__}: {reason}); offline, give "
                          f"--source=DIR or --repo=a local copy")
    if streaming:
        yield from (row['text'] for row in docs.skip(skip))
    else:
        for batch in docs.select_columns(['text']).select(range(skip, len(docs))).iter(batch_size=1024):
            yield from batch['text']


if __name__ == '__main__':
    configure(globals(), positive_ints=('shard_tokens', 'num_proc'))
    if not source and subset not in SUBSETS:
        raise ScriptError(f"unknown subset {subset!r}; use one of {', '.join(SUBSETS)}")
    # nanogpt.data imports torch (seconds), so only now
    from nanogpt.corpus import (check_parquet, corpus_files, existing_shards, gpt2_documents, read_texts,
                                resume_point, shard_name)
    from nanogpt.data import (GPT2_EOT_TOKEN, PADDED_GPT2_VOCAB_SIZE, dataset_dir, gpt2_encoding, load_meta,
                              write_tokens)
    from nanogpt.files import atomic_write

    origin = os.path.abspath(source) if source else f"{repo} {subset}"
    if source:  # every file checked before anything is written
        kind, files = corpus_files(source)
        if kind == 'parquet':
            check_parquet(files)
    else:
        try:
            import datasets
        except ImportError:
            raise ScriptError("reading FineWeb-Edu from the hub needs the datasets package: pip install datasets "
                              "(or give --source=DIR, a folder of .parquet or .jsonl files)")
        if not sys.stderr.isatty():
            datasets.disable_progress_bars()  # they would surround an error line in a log
    gpt2_encoding()  # fail now, not in the workers, if the BPE cannot be had
    out_dir = dataset_dir(dataset)

    # what an earlier run left: its settings in meta.pkl, its complete shards
    meta = load_meta(out_dir) if os.path.isdir(out_dir) else {}
    done = existing_shards(out_dir) if os.path.isdir(out_dir) else []
    if done and not meta:
        raise ScriptError(f"{out_dir} holds shards but no meta.pkl; move them away, or prepare into another "
                          f"--dataset")
    if meta and (meta.get('source'), meta.get('shard_tokens')) != (origin, shard_tokens):
        raise ScriptError(f"{out_dir} holds shards of {meta.get('source')} with shard_tokens={meta.get('shard_tokens')}; "
                          f"run with those to continue, or prepare into another --dataset")
    if meta.get('complete'):
        print(f"{out_dir} is prepared already ({meta['train_tokens']:,} train and {meta['val_tokens']:,} val "
              f"tokens); delete it to prepare it again")
        sys.exit(0)
    sizes = [os.path.getsize(p) // 2 for p in done]
    for path, size in zip(done[:-1], sizes[:-1]):
        if size != shard_tokens:
            raise ScriptError(f"{path} holds {size:,} tokens, not shard_tokens={shard_tokens:,}; move it and the "
                              f"shards after it away, and run again to write them anew")
    meta = {'vocab_size': PADDED_GPT2_VOCAB_SIZE, 'tokenizer': 'gpt2', 'dtype': 'uint16', 'source': origin,
            'shard_tokens': shard_tokens, 'complete': False}
    os.makedirs(out_dir, exist_ok=True)
    with atomic_write(os.path.join(out_dir, 'meta.pkl')) as f:
        pickle.dump(meta, f)

    def write_shard(index, tokens):
        with atomic_write(os.path.join(out_dir, shard_name(index))) as f:
            write_tokens(f, tokens)

    index = len(done)
    if not done or sizes[-1] == shard_tokens:  # else the last shard is short: the corpus was read to its end
        skip, drop = resume_point(done, GPT2_EOT_TOKEN) if done else (0, 0)
        if done:
            print(f"continuing after {len(done)} complete shards: passing over {skip:,} documents")
        texts = read_texts(kind, files, skip) if source else hub_texts(datasets, skip)
        shard = np.empty(shard_tokens, dtype=np.uint16)
        filled = 0
        t0 = time.time()
        # a progress bar on a terminal; a line per shard either way, for logs
        bar = tqdm(desc=f'tokenizing into {out_dir}', unit='tok', unit_scale=True, initial=index * shard_tokens,
                   disable=None)
        try:
            with multiprocessing.Pool(num_proc) as pool:
                for i, tokens in enumerate(gpt2_documents(pool, texts, source or f"{repo} ({subset})")):
                    if i == 0:
                        tokens = tokens[drop:]  # the part an earlier run wrote already
                    while len(tokens):
                        take = min(len(tokens), shard_tokens - filled)
                        shard[filled:filled + take] = tokens[:take]
                        filled += take
                        tokens = tokens[take:]
                        bar.update(take)
                        if filled == shard_tokens:
                            write_shard(index, shard)
                            index, filled = index + 1, 0
                            tqdm.write(f"wrote {shard_name(index - 1)}: {index * shard_tokens:,} tokens so far, "
                                       f"{(index - len(done)) * shard_tokens / (time.time() - t0):,.0f} tokens/s")
            if filled:
                write_shard(index, shard[:filled])
                index += 1
        except KeyboardInterrupt:
            raise ScriptError(f"interrupted: {index} complete shards in {out_dir}; the same command continues from "
                              f"there")
        bar.close()
        print(f"tokenized in {time.time() - t0:.0f}s")
    shards = existing_shards(out_dir)[:index]
    val_tokens = os.path.getsize(shards[0]) // 2 if shards else 0
    if index < 2:
        raise ScriptError(f"the corpus has {val_tokens:,} tokens, all of them in val_000.bin: nothing to train on; "
                          f"use a smaller shard_tokens")
    train_tokens = sum(os.path.getsize(p) for p in shards[1:]) // 2
    meta.update(complete=True, train_tokens=train_tokens, val_tokens=val_tokens)
    with atomic_write(os.path.join(out_dir, 'meta.pkl')) as f:
        pickle.dump(meta, f)
    print(f"wrote {out_dir}: val_000.bin ({val_tokens:,} tokens), train_000.bin to {shard_name(index - 1)} "
          f"({train_tokens:,} tokens), meta.pkl")
