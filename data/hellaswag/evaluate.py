"""
HellaSwag accuracy of a checkpoint or of GPT-2's weights, in completion style (the ending with the
lowest mean loss per token wins: acc_norm; the lowest summed loss: acc). See nanogpt/hellaswag.py.
$ python data/hellaswag/prepare.py                          # once: downloads the validation file
$ python data/hellaswag/evaluate.py --init_from=gpt2        # published: acc_norm 0.2955, acc 0.2859
$ python data/hellaswag/evaluate.py --out_dir=out-gpt2-fineweb
$ python data/hellaswag/evaluate.py --init_from=path/to/hf_dir --hellaswag_path=path/to/hellaswag_val.jsonl
The last line is always: hellaswag: acc_norm X (right/examples), acc Y (right/examples), Zs
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
import torch  # noqa: E402

from configurator import configure  # noqa: E402
from nanogpt import ScriptError, hellaswag  # noqa: E402
from nanogpt.checkpoint import init_model  # noqa: E402
from nanogpt.device import autocast, pick_device, pick_dtype  # noqa: E402

# -----------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (out_dir's checkpoint), a GPT-2 name ('gpt2', 'gpt2-xl', ...) or a Hugging Face GPT-2 directory
out_dir = 'out'  # ignored unless init_from is 'resume'
hellaswag_path = ''  # HellaSwag's validation JSONL; '' reads data/hellaswag/hellaswag_val.jsonl
max_examples = 0  # score only the first this many examples (0: all)
batch_examples = 8  # examples per forward pass (4 rows each)
device = 'auto'  # 'auto', 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto'  # 'auto', 'float32', 'bfloat16' or 'float16'
# -----------------------------------------------------------------------------
configure(globals(), positive_ints=('batch_examples',))
if max_examples < 0:
    raise ScriptError(f"max_examples must be 0 (all) or more, got {max_examples}")
device = pick_device(device)
dtype = pick_dtype(device, dtype)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True

hellaswag.load_examples(hellaswag_path or hellaswag.DEFAULT_PATH)  # a missing or malformed file, before the model loads
model, _ = init_model(init_from, out_dir, dropout=0.0)
encoded = hellaswag.examples_for_model(hellaswag_path, model.config.vocab_size, model.config.block_size)
encoded = encoded[:max_examples or None]
model.to(device)
t0 = time.time()
result = hellaswag.evaluate(model, encoded, device, autocast(device, dtype), batch_examples=batch_examples)
n = result['examples']
print(f"hellaswag: acc_norm {result['acc_norm']:.4f} ({result['right_norm']}/{n}), "
      f"acc {result['acc']:.4f} ({result['right']}/{n}), {time.time() - t0:.1f}s")
