"""
The helpers that train.py, sample.py, bench.py and the other scripts share, one module per concern:

    device.py       which device and dtype, autocast, torch.compile, the GPU peak-FLOPs table behind MFU
    data.py         datasets on disk (train.bin, val.bin or their shards, meta.pkl), batches, tokenizers
                    (characters, GPT-2's BPE, a byte-level BPE trained on the data) and their fingerprints
    corpus.py       large text corpora for the prepare scripts: Parquet/JSONL folders, tokenizing workers, shards
    evaluation.py   a model measured: its loss on a whole split, HellaSwag (benchmarks/evaluate.py, train.py)
    files.py        files that are never half-written, folders swapped whole, a run's out_dir and its lock
    checkpoint.py   checkpoints: save, load, and the model to start from (init_from)
    export.py       a model and its tokenizer in the forms transformers reads (export_hf.py); beside it,
                    modeling_nanogpt.py, the custom code of exports that no transformers architecture computes
    distributed.py  torchrun: process group, DDP or FSDP2, full state dicts of sharded models
    training.py     one optimizer step, as train.py runs it and bench.py times it; when a run diverged

Every mistake a user can make ends the script with ScriptError: one line, 'error: ...', exit code 1;
Ctrl-C with one line and exit code 130 (exit_on_ctrl_c).
"""

import os
import signal
import sys


def one_line(text):
    """text as one printable line: line breaks become spaces and other control characters (and the
    undecodable bytes of a file name) their escapes, so that a message never spills binary or breaks."""
    text = ' '.join(part.strip() for part in str(text).splitlines() if part.strip())
    return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ScriptError(SystemExit):
    """Stops the script with one line 'error: message' on stderr and exit code 1, no traceback. Under
    torchrun only the first process of each node says it: the others meet the same error and leave
    with the same exit code, quietly, so the line is not repeated once per GPU."""

    def __init__(self, message):
        super().__init__(f"error: {one_line(message)}" if os.environ.get('LOCAL_RANK', '0') == '0' else 1)


def interrupted(message="interrupted (Ctrl-C)"):
    """The SystemExit that ends a script on Ctrl-C: it says one line 'error: message' (on the first process
    of each node, as ScriptError) and leaves with exit code 130 (128 + SIGINT, as a shell reports a process
    that Ctrl-C ended), no traceback. Blocks such as files.atomic_write clean up as it passes."""
    if os.environ.get('LOCAL_RANK', '0') == '0':
        print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return SystemExit(128 + signal.SIGINT)


def _raise_interrupted(signum, frame):
    raise interrupted()


def exit_on_ctrl_c():
    """From here on, Ctrl-C (SIGINT) ends the script with interrupted() instead of a KeyboardInterrupt's
    traceback."""
    signal.signal(signal.SIGINT, _raise_interrupted)
