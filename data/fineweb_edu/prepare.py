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
$ python data/fineweb_edu/prepare.py --source=path/to/fineweb-edu/sample/10BT   # a subset of a local copy of the hub's

The hub's files are downloaded into the Hugging Face cache first (sample-10BT: about 30GB there, and
20GB of shards here); --streaming=True reads them as it goes instead, for the subsets too large for
the disk. Interrupted (Ctrl-C, a lost connection, a full disk), the same command continues after the
last complete shard: each shard is written whole or not at all. Offline, tiktoken needs the BPE file:
set NANOGPT_GPT2_BPE to a local gpt2.tiktoken. meta.pkl lists the shards with their token counts once
the last is written; train.py checks the shards against it.
"""
import importlib.util
import multiprocessing
import os
import pickle
import sys
import time
from contextlib import ExitStack

from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import configure  # noqa: E402
from nanogpt import ScriptError  # noqa: E402
from nanogpt.corpus import (batch_texts, check_parquet, cores, corpus_files, ctrl_c_ends_with,  # noqa: E402
                            existing_shards, gpt2_documents, hub_subsets, ignore_ctrl_c, read_texts, resume_point,
                            shard_name, worker_encoding)
from nanogpt.data import GPT2_EOT_TOKEN, PADDED_GPT2_VOCAB_SIZE, dataset_dir, load_meta, write_tokens  # noqa: E402
from nanogpt.files import atomic_write  # noqa: E402

SUBSETS = ('sample-10BT', 'sample-100BT', 'sample-350BT', 'default')  # 'default' is the whole corpus, ~1.3T tokens

# -----------------------------------------------------------------------------
subset = 'sample-10BT'  # the hub's subset: 'sample-10BT', 'sample-100BT', 'sample-350BT' or 'default' (all of it)
repo = 'HuggingFaceFW/fineweb-edu'  # the hub dataset, or a local copy of it in the hub's layout
streaming = False  # read the hub's files as they download instead of caching them first (less disk; a resumed run reads the done part again)
source = ''  # a local folder of .parquet or .jsonl files with a 'text' column, read instead of the hub
dataset = 'fineweb_edu'  # the shards go to data/<dataset>/, or to this folder where it is a path
shard_tokens = 100_000_000  # tokens per shard; the first shard is the validation split
num_proc = cores()  # tokenizing worker processes: one per core (this process reads the corpus and writes the shards)
# -----------------------------------------------------------------------------


def hub_texts(skip):
    """The texts of the hub's subset in the hub's order, the first `skip` passed over. Run in the pool's
    thread: datasets is imported after the workers have forked, which then stay lean."""
    import datasets
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()  # they would surround an error line in a log
    try:
        docs = datasets.load_dataset(repo, name=subset, split='train', streaming=streaming,
                                     **({} if streaming else {'num_proc': num_proc}))
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        raise ScriptError(f"could not load {repo} ({subset}) ({type(e).__name__}: {reason}); offline, give "
                          f"--source=DIR or --repo=a local copy")
    if streaming:
        yield from (row['text'] for row in docs.skip(skip))
    elif docs.cache_files:  # datasets' Arrow files, read as streams: memory-mapped, the pages read would stay resident
        import pyarrow as pa

        def batches():
            for cache in docs.cache_files:
                with pa.OSFile(cache['filename']) as f:
                    yield from pa.ipc.open_stream(f)
        yield from batch_texts(batches(), skip)
    else:
        yield from batch_texts(docs.select_columns(['text']).data.to_batches(), skip)


def interrupted():
    """What Ctrl-C leaves, for its line: the complete shards, from which the same command continues."""
    done = existing_shards(out_dir) if os.path.isdir(out_dir) else []
    return f"{len(done)} complete shards in {out_dir}; the same command continues from there"


if __name__ == '__main__':
    configure(globals(), positive_ints=('shard_tokens', 'num_proc'))
    out_dir = dataset_dir(dataset)
    with ctrl_c_ends_with(interrupted):
        if not source and subset not in SUBSETS:
            raise ScriptError(f"unknown subset {subset!r}; use one of {', '.join(SUBSETS)}")
        origin = os.path.abspath(source) if source else f"{repo} {subset}"
        if source:  # every file checked before anything is written
            kind, files = corpus_files(source)
            if len(subsets := hub_subsets(source, files)) > 1:
                raise ScriptError(f"{source} holds {len(subsets)} subsets of the hub's FineWeb-Edu "
                                  f"({', '.join(subsets)}), which would be mixed; give the folder of one, e.g. "
                                  f"--source={os.path.join(source, subsets[-1])}")
            if kind == 'parquet':
                check_parquet(files)
        else:
            if importlib.util.find_spec('datasets') is None:
                raise ScriptError("reading FineWeb-Edu from the hub needs the datasets package: pip install datasets "
                                  "(or give --source=DIR, a folder of .parquet or .jsonl files)")
        worker_encoding()  # fails now, not in the workers, if the BPE cannot be had; forked workers inherit it

        # what an earlier run left: its settings in meta.pkl, its complete shards
        meta = load_meta(out_dir) if os.path.isdir(out_dir) else {}
        done = existing_shards(out_dir) if os.path.isdir(out_dir) else []
        if done and not meta:
            raise ScriptError(f"{out_dir} holds shards but no meta.pkl; move them away, or prepare into another "
                              f"--dataset")
        if meta and (meta.get('source'), meta.get('shard_tokens')) != (origin, shard_tokens):
            raise ScriptError(f"{out_dir} holds shards of {meta.get('source')} with shard_tokens="
                              f"{meta.get('shard_tokens')}; run with those to continue, or prepare into another "
                              f"--dataset")
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

        index = len(done)
        if not done or sizes[-1] == shard_tokens:  # else the last shard is short: the corpus was read to its end
            skip, drop = resume_point(done, GPT2_EOT_TOKEN) if done else (0, 0)
            if done:
                print(f"continuing after {len(done)} complete shards: passing over {skip:,} documents")
            texts = read_texts(kind, files, skip) if source else hub_texts(skip)
            filled = 0  # tokens in the shard being written
            t0 = time.time()
            # a progress bar on a terminal; a line per shard either way, for logs
            bar = tqdm(desc=f'tokenizing into {out_dir}', unit='tok', unit_scale=True, initial=index * shard_tokens,
                       disable=None)
            # each document's tokens go straight into the shard's file (at a temporary name, renamed into place
            # when full: a shard is there whole or not at all), so a shard is never held in memory
            with multiprocessing.Pool(num_proc, initializer=ignore_ctrl_c) as pool, ExitStack() as open_shard:
                for i, tokens in enumerate(gpt2_documents(pool, texts, source or f"{repo} ({subset})")):
                    if i == 0:
                        tokens = tokens[drop:]  # the part an earlier run wrote already
                    while len(tokens):
                        if filled == 0:
                            shard = open_shard.enter_context(atomic_write(os.path.join(out_dir, shard_name(index))))
                        take = min(len(tokens), shard_tokens - filled)
                        write_tokens(shard, tokens[:take])
                        filled += take
                        tokens = tokens[take:]
                        bar.update(take)
                        if filled == shard_tokens:
                            open_shard.close()  # synced and renamed into place
                            index, filled = index + 1, 0
                            tqdm.write(f"wrote {shard_name(index - 1)}: {index * shard_tokens:,} tokens so far, "
                                       f"{(index - len(done)) * shard_tokens / (time.time() - t0):,.0f} tokens/s")
                open_shard.close()  # the last shard, shorter
            if filled:
                index += 1
            bar.close()
            print(f"tokenized in {time.time() - t0:.0f}s")
        shards = existing_shards(out_dir)[:index]
        val_tokens = os.path.getsize(shards[0]) // 2 if shards else 0
        if index < 2:
            raise ScriptError(f"the corpus has {val_tokens:,} tokens, all of them in val_000.bin: nothing to train on; "
                              f"use a smaller shard_tokens")
        train_tokens = sum(os.path.getsize(p) for p in shards[1:]) // 2
        # what was written, which train.py checks the shards against
        files_written = {os.path.basename(p): os.path.getsize(p) // 2 for p in shards}
        meta.update(complete=True, train_tokens=train_tokens, val_tokens=val_tokens, files=files_written)
        with atomic_write(os.path.join(out_dir, 'meta.pkl')) as f:
            pickle.dump(meta, f)
        print(f"wrote {out_dir}: val_000.bin ({val_tokens:,} tokens), train_000.bin to {shard_name(index - 1)} "
              f"({train_tokens:,} tokens), meta.pkl")
