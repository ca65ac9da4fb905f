"""
Writes a trained checkpoint (out_dir/ckpt.pt) as a Hugging Face GPT-2 directory: config.json and
model.safetensors, which transformers' GPT2LMHeadModel.from_pretrained(dir) loads as the same
function, and which this toolkit reads back with init_from=dir.
$ python export_hf.py --out_dir=out-shakespeare-char
$ python export_hf.py --out_dir=out --export_dir=my-gpt2

No tokenizer files are written: a model trained on GPT-2 BPE data uses GPT-2's tokenizer, a
character-level one needs the stoi/itos of its dataset's meta.pkl.
"""

import json
import os
import re

import torch

from configurator import configure
from model import CONV1D_WEIGHTS, beyond_gpt2
from nanogpt import ScriptError
from nanogpt.checkpoint import load_checkpoint, model_from_checkpoint
from nanogpt.data import GPT2_EOT_TOKEN
from nanogpt.files import ckpt_path, finish_swap, swap_in

# -----------------------------------------------------------------------------
out_dir = 'out'  # the checkpoint to export is out_dir/ckpt.pt
export_dir = ''  # where config.json and model.safetensors go; empty: out_dir/hf
# -----------------------------------------------------------------------------
configure(globals())
export_dir = export_dir or os.path.join(out_dir, 'hf')
finish_swap(export_dir)  # an export killed while its files were renamed into place: completed
if there := [name for name in ('config.json', 'model.safetensors') if os.path.exists(os.path.join(export_dir, name))]:
    raise ScriptError(f"{export_dir} already holds an export ({' and '.join(there)}); export into another "
                      f"--export_dir, or delete {' and '.join(there)} there first")

try:
    from safetensors.torch import save_file
except ImportError:
    raise ScriptError("export_hf.py needs safetensors: pip install safetensors")

# the model, rebuilt from the checkpoint: loading it checks every name and shape
checkpoint = load_checkpoint(ckpt_path(out_dir))
model = model_from_checkpoint(checkpoint, ckpt_path(out_dir))
config = model.config
checkpoint = None  # free the memory
differences = ', '.join(f'{k}={getattr(config, k)!r}' for k in beyond_gpt2(vars(config)))
if differences:  # Hugging Face's GPT-2 computes GPT-2's architecture and nothing else
    raise ScriptError(f"{ckpt_path(out_dir)} is a model with {differences}: not GPT-2's architecture, so it has no "
                      f"Hugging Face GPT-2 form")

# tensors under Hugging Face's names, which are ours. lm_head.weight is left out: GPT-2 ties it to
# wte.weight, and transformers writes and reads it that way. Each tensor is a contiguous copy of its
# own, since safetensors refuses tensors that share memory.
tensors = {}
for name, tensor in model.state_dict().items():
    if name == 'lm_head.weight':
        continue
    if name.endswith(CONV1D_WEIGHTS):
        tensor = tensor.t()  # nn.Linear's (out, in) -> Conv1D's (in, out)
    tensors[name] = tensor.detach().clone(memory_format=torch.contiguous_format)

# Hugging Face GPT-2 always has biases; a bias=False model gets zero ones, which compute the same.
# A bias has the size of its layer's output: the last dimension of a LayerNorm or Conv1D weight.
for name in list(tensors):
    if name.endswith('.weight') and name not in ('transformer.wte.weight', 'transformer.wpe.weight'):
        zeros = torch.zeros(tensors[name].shape[-1], dtype=tensors[name].dtype)
        tensors.setdefault(name[:-len('weight')] + 'bias', zeros)

hf_config = {
    'architectures': ['GPT2LMHeadModel'],
    'model_type': 'gpt2',
    'vocab_size': config.vocab_size,
    'n_positions': config.block_size,
    'n_embd': config.n_embd,
    'n_layer': config.n_layer,
    'n_head': config.n_head,
    'n_inner': None,  # 4 * n_embd, as ours
    'activation_function': 'gelu',  # our MLP's exact nn.GELU(); GPT-2's default gelu_new is the tanh approximation
    'layer_norm_epsilon': 1e-5,  # as our LayerNorm
    'resid_pdrop': config.dropout,
    'embd_pdrop': config.dropout,
    'attn_pdrop': config.dropout,
    'initializer_range': 0.02,
    'scale_attn_weights': True,  # 1/sqrt(head size), as ours
    'scale_attn_by_inverse_layer_idx': False,
    'reorder_and_upcast_attn': False,
    'tie_word_embeddings': True,
    # GPT-2's <|endoftext|>, only where the vocabulary holds it (not in a character-level one)
    'bos_token_id': GPT2_EOT_TOKEN if config.vocab_size > GPT2_EOT_TOKEN else None,
    'eos_token_id': GPT2_EOT_TOKEN if config.vocab_size > GPT2_EOT_TOKEN else None,
}

# both files or neither: written under temporary names, then renamed into place together (config.json last)
weights_path = os.path.join(export_dir, 'model.safetensors')
config_path = os.path.join(export_dir, 'config.json')
with swap_in(export_dir, ('model.safetensors', 'config.json')) as staged:
    try:
        save_file(tensors, staged['model.safetensors'], metadata={'format': 'pt'})  # transformers wants the framework
    except Exception as e:  # safetensors reports a failed write (a full disk) as its own error, '... (os error 28)'
        if code := re.search(r'os error (\d+)', str(e)):
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None
        raise
    with open(staged['config.json'], 'w', encoding='utf-8') as f:
        f.write(json.dumps(hf_config, indent=2) + '\n')
print(f"wrote {config_path} and {weights_path} ({model.get_num_params(non_embedding=False) / 1e6:.2f}M parameters, "
      f"vocab_size {config.vocab_size}, block_size {config.block_size})")
print(f"load with transformers' GPT2LMHeadModel.from_pretrained({export_dir!r}), or here with --init_from={export_dir}")
