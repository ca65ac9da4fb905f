"""
Scores a trained model (out_dir's checkpoint) or GPT-2's weights, beyond the eval_iters random batches
that train.py's 'val loss' averages:
- the loss on a whole split of its dataset: every token of the split, in consecutive windows of the
  model's block_size, so two runs or two recipes are compared on the same tokens;
- with --hellaswag=True, HellaSwag accuracy in completion style (GPT-2's tokens only).
$ python benchmarks/evaluate.py --out_dir=out-shakespeare-char
$ python benchmarks/evaluate.py --init_from=gpt2 --dataset=openwebtext
$ python data/hellaswag/prepare.py && python benchmarks/evaluate.py --init_from=gpt2 --hellaswag=True   # published: acc_norm 0.2955
The last line is always 'val loss X over N tokens', or for HellaSwag
'hellaswag: acc_norm X (right/examples), acc Y (right/examples), Zs'.
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's root

from configurator import configure
from nanogpt import ScriptError
from nanogpt.checkpoint import init_model
from nanogpt.data import check_vocab, dataset_dir, load_meta, open_split
from nanogpt.device import autocast, pick_device, pick_dtype
from nanogpt.evaluation import HELLASWAG_PATH, hellaswag_accuracy, hellaswag_for_model, load_hellaswag, whole_split_loss

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
dtype = 'auto'  # 'auto', 'float32', 'bfloat16' or 'float16'
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
    data_dir = dataset_dir(dataset)
    meta = load_meta(data_dir)
    check_vocab(meta, model.config.vocab_size, f"dataset {dataset}", "score it on a dataset of its own tokenizer "
                "(--dataset), as train.py trains only on such")
    data = open_split(data_dir, split, meta, model.config.block_size, model.config.vocab_size, dataset)
    loss, n_tokens = whole_split_loss(model, data, model.config.block_size, batch_size, device, ctx)
    print(f"{split} loss {loss:.4f} over {n_tokens:,} tokens")
