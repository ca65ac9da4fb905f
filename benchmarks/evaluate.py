"""
Scores a trained model (out_dir's checkpoint) or GPT-2's weights, beyond the eval_iters random batches
that train.py's 'val loss' averages:
- the loss on a whole split of its dataset: every token of the split, in consecutive windows of the
  model's block_size, so two runs or two recipes are compared on the same tokens;
- bits per byte beside it, which compare models with different tokenizers on the same text: the
  nats of all the scored tokens (every token but the first) / ln 2 / the UTF-8 bytes of the text those
  tokens stand for (<|endoftext|> stands for none);
- with --hellaswag=True, HellaSwag accuracy in completion style (GPT-2's tokens only).
$ python benchmarks/evaluate.py --out_dir=out-shakespeare-char
$ python benchmarks/evaluate.py --init_from=gpt2 --dataset=openwebtext
$ python data/hellaswag/prepare.py && python benchmarks/evaluate.py --init_from=gpt2 --hellaswag=True   # published: acc_norm 0.2955
The last line is always 'val loss X over N tokens, Y bits per byte over B bytes' ('bits per byte n/a'
where the dataset names no tokenizer), or for HellaSwag
'hellaswag: acc_norm X (right/examples), acc Y (right/examples), Zs'.
"""

import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's root

from configurator import configure
from nanogpt import ScriptError
from nanogpt.checkpoint import init_model
from nanogpt.data import (check_fingerprint, check_vocab, dataset_dir, load_meta, open_split, token_bytes,
                          tokenizer_fingerprint)
from nanogpt.device import autocast, pick_device, pick_dtype
from nanogpt.evaluation import (HELLASWAG_PATH, hellaswag_accuracy, hellaswag_for_model, load_hellaswag, text_bytes,
                                whole_split_loss)

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (out_dir's checkpoint), a GPT-2 name ('gpt2', ...) or a Hugging Face GPT-2 directory
out_dir = 'out'  # ignored unless init_from is 'resume'
dataset = ''  # the dataset to score on; '' means the one the checkpoint was trained on
split = 'val'  # 'val' or 'train'
hellaswag = False  # score HellaSwag instead of the loss
hellaswag_path = ''  # HellaSwag's validation JSONL; '' reads data/hellaswag/hellaswag_val.jsonl (data/hellaswag/prepare.py)
max_examples = 0  # HellaSwag: score only the first this many examples (0: all)
batch_size = 64  # rows per forward pass (HellaSwag: 4 rows per example)
device = 'auto'  # 'auto', 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto'  # 'auto', 'fast' (bfloat16 also on a CPU that has it natively), 'float32', 'bfloat16' or 'float16'
# -----------------------------------------------------------------------------
configure(globals(), positive_ints=('batch_size',))
if max_examples < 0:
    raise ScriptError(f"max_examples must be 0 (all) or more, got {max_examples}")
device = pick_device(device)
dtype = pick_dtype(device, dtype)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ctx = autocast(device, dtype)

if hellaswag:
    load_hellaswag(hellaswag_path or HELLASWAG_PATH)  # a missing or malformed file, before the model loads
model, checkpoint = init_model(init_from, out_dir, dropout=0.0)
model.eval().to(device)
if hellaswag:
    examples = hellaswag_for_model(hellaswag_path, model.config.vocab_size, model.config.block_size)
    t0 = time.time()
    result = hellaswag_accuracy(model, examples[:max_examples or None], device, ctx, batch_examples=max(1, batch_size // 4))
    n = result['examples']
    print(f"hellaswag: acc_norm {result['acc_norm']:.4f} ({result['right_norm']}/{n}), "
          f"acc {result['acc']:.4f} ({result['right']}/{n}), {time.time() - t0:.1f}s")
else:
    dataset = dataset or (checkpoint or {}).get('config', {}).get('dataset', '')
    if not dataset:
        raise ScriptError("which dataset? give --dataset=NAME (the model comes without one)")
    data_dir, where = dataset_dir(dataset), f"dataset {dataset}"
    meta = load_meta(data_dir)
    check_vocab(meta, model.config.vocab_size, where, "score it on a dataset of the tokens it was trained on")
    fingerprint = tokenizer_fingerprint(meta, data_dir)  # None: the dataset names no tokenizer
    check_fingerprint(checkpoint, fingerprint, where, "its ids stand for other text there; score it on a dataset of "
                      "the tokenizer it was trained with")
    data = open_split(data_dir, split, meta, model.config.block_size, model.config.vocab_size, dataset)
    loss, n_tokens = whole_split_loss(model, data, model.config.block_size, batch_size, device, ctx)
    bpb = 'bits per byte n/a (the dataset names no tokenizer)'
    if fingerprint is not None:
        table, special = token_bytes(meta, where, data_dir)
        n_bytes = text_bytes(data, [0 if i in special else len(b) for i, b in enumerate(table)])
        bpb = f"{loss * n_tokens / math.log(2) / n_bytes:.4f} bits per byte over {n_bytes:,} bytes" if n_bytes else \
            'bits per byte n/a (the scored tokens stand for no text)'
    print(f"{split} loss {loss:.4f} over {n_tokens:,} tokens, {bpb}")
