"""
OpenWebText in GPT-2 BPE tokens: train.bin (about 9B tokens, 17GB) and val.bin (about 4M tokens) as
uint16, and meta.pkl, in this folder. The corpus (8,013,769 documents) comes from the Hugging Face hub
as Parquet files (about 54GB in its cache with the prepared copy), or from a local folder; it is
tokenized in num_proc worker processes, and each document is followed by <|endoftext|>.
$ pip install datasets
$ python data/openwebtext/prepare.py [--num_proc=8]
$ python data/openwebtext/prepare.py --source=path/to/folder     # local .parquet or .jsonl files, a 'text' column
Offline, tiktoken needs the BPE file: set NANOGPT_GPT2_BPE to a local gpt2.tiktoken.

The split is upstream nanoGPT's: 0.05% of the documents, shuffled with seed 2357, are the validation
split; the rest, in the corpus's order, is the training split.
"""
import os
import pickle
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import configure  # noqa: E402
from nanogpt import ScriptError  # noqa: E402
from nanogpt.corpus import check_parquet, corpus_files, ctrl_c_ends_with, first_line, worker_encoding  # noqa: E402
from nanogpt.data import PADDED_GPT2_VOCAB_SIZE, write_tokens  # noqa: E402
from nanogpt.files import atomic_write  # noqa: E402

# Where the corpus lives on the hub. datasets 4.0 and later no longer run loading scripts ("Dataset
# scripts are no longer supported", karpathy/nanoGPT#633, open when this was written), and the main
# branch of Skylion007/openwebtext has been such a script (a pull request on the hub to replace it with
# Parquet files is its discussion #22). The corpus's author pushed the same corpus as Parquet files to
# pull requests of that repository: #20 holds data/train-000NN-of-00080.parquet, the 80 shards of the
# dataset the script builds, read here with the generic 'parquet' loader of every datasets version.
# The hub's automatic conversion (refs/convert/parquet) stops at about 5GB for a dataset this large
# ('partial-train'), so it would give another corpus, and another split. The document count below is
# checked; the order of the documents, which the split also depends on, cannot be checked here.
# Once the main branch holds Parquet files: --hub_files='hf://datasets/Skylion007/openwebtext/data/*.parquet'
HUB_FILES = 'hf://datasets/Skylion007/openwebtext@refs/pr/20/data/train-*-of-00080.parquet'
DOCUMENTS = 8_013_769  # in OpenWebText; another count would give another split


def tokenize(example):
    """A document's GPT-2 tokens, then <|endoftext|> (50256), as upstream writes them; run in the
    worker processes of datasets' map."""
    encoding = worker_encoding()
    ids = encoding.encode_ordinary(example['text'])  # special tokens in the text are plain text here
    ids.append(encoding.eot_token)
    return {'ids': ids, 'len': len(ids)}


# -----------------------------------------------------------------------------
num_proc = max(1, (os.cpu_count() or 2) // 2)  # worker processes for downloading and tokenizing
source = ''  # a local folder of .parquet or .jsonl files with a 'text' column, read instead of the hub
hub_files = HUB_FILES  # the corpus's Parquet files on the hub (an hf:// path with a * pattern)
# -----------------------------------------------------------------------------

if __name__ == '__main__':
    configure(globals(), positive_ints=('num_proc',))
    here = os.path.dirname(os.path.abspath(__file__))
    with ctrl_c_ends_with(lambda: f"train.bin and val.bin in {here} are as they were; the same command starts again "
                                  f"(datasets' cache keeps what it downloaded)"):
        try:
            import datasets
        except ImportError:
            raise ScriptError("this script needs the datasets package: pip install datasets")
        if not sys.stderr.isatty():
            datasets.disable_progress_bars()  # they would surround an error line in a log
        worker_encoding()  # fails now, not after the download, if the BPE cannot be had; forked workers inherit it

        # one 'train' split of about 8M documents, in the corpus's order
        if source:
            kind, files = corpus_files(source)
            if kind == 'parquet':
                check_parquet(files)  # a corrupt file is named before anything is read
            builder, data_files, where = {'parquet': 'parquet', 'jsonl': 'json'}[kind], files, source
        else:
            builder, data_files, where = 'parquet', hub_files, hub_files
        try:
            corpus = datasets.load_dataset(builder, data_files={'train': data_files}, split='train', num_proc=num_proc)
        except Exception as e:  # offline, the hub unreachable, a file unreadable
            raise ScriptError(f"could not load the corpus from {where} ({type(e).__name__}: {first_line(e)})")
        if 'text' not in corpus.column_names:
            raise ScriptError(f"the corpus in {where} has no 'text' column (it has {', '.join(corpus.column_names)})")
        if corpus.features['text'] not in (datasets.Value('string'), datasets.Value('large_string')):
            raise ScriptError(f"the corpus in {where} has a 'text' that is not a string in every document (datasets "
                              f"reads the column as {corpus.features['text']})")
        texts = corpus.data.column('text')
        if texts.null_count:  # documents without text: JSONL lines without one, nulls in Parquet files
            import pyarrow.compute as pc
            first = pc.index(texts.is_null(), True).as_py()
            raise ScriptError(f"{texts.null_count:,} document(s) of the corpus in {where} have no text (the first: "
                              f"document {first + 1:,} in the corpus's order, counted from 1); remove them or give "
                              f"them a 'text'")
        if not source and len(corpus) != DOCUMENTS:
            raise ScriptError(f"{where} holds {len(corpus):,} documents, OpenWebText {DOCUMENTS:,}: a partial copy "
                              f"would give another split; point --hub_files at the whole corpus")
        if len(corpus) < 2:
            raise ScriptError(f"the corpus in {where} has {len(corpus)} document(s); it needs 2 to split")

        # hold out a small shuffled part for validation, as upstream nanoGPT does
        splits = corpus.train_test_split(test_size=0.0005, seed=2357, shuffle=True)
        splits['val'] = splits.pop('test')
        tokenized = splits.map(tokenize, remove_columns=splits['train'].column_names, desc='tokenizing',
                               num_proc=num_proc)

        # each split into one flat file, a contiguous shard of documents at a time so memory stays small;
        # both files are renamed into place only once both are whole
        paths = {split: os.path.join(here, f'{split}.bin') for split in ('val', 'train')}
        with atomic_write(paths['val']) as val_file, atomic_write(paths['train']) as train_file:
            for split, f in (('val', val_file), ('train', train_file)):
                docs = tokenized[split]
                n_shards = max(1, min(1024, len(docs)))
                for i in tqdm(range(n_shards), desc=f'writing {split}.bin'):
                    shard = docs.shard(num_shards=n_shards, index=i, contiguous=True).with_format('numpy')
                    if len(shard):
                        write_tokens(f, np.concatenate(shard['ids']))
        files_written = {os.path.basename(path): os.path.getsize(path) // 2 for path in paths.values()}
        for split, path in paths.items():
            print(f"{split}.bin has {files_written[os.path.basename(path)]:,} tokens")
        with atomic_write(os.path.join(here, 'meta.pkl')) as f:
            pickle.dump({'vocab_size': PADDED_GPT2_VOCAB_SIZE, 'tokenizer': 'gpt2', 'dtype': 'uint16',
                         'files': files_written}, f)
