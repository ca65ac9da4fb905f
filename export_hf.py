"""
Writes a trained checkpoint (out_dir/ckpt.pt) as a directory that Hugging Face's transformers loads as it
is, offline: AutoTokenizer, AutoModelForCausalLM and pipeline('text-generation') read it, and greedy
generation gives the text sample.py gives.
$ python export_hf.py --out_dir=out-shakespeare-char
$ python export_hf.py --out_dir=out --export_dir=my-model --push_to_hub=your-name/my-model

In it: model.safetensors and config.json in the most widely read architecture that computes the same
function (GPT-2's; GPT-NeoX's for rope; custom code, modeling_nanogpt.py over a copy of model.py, where
none does: qk_norm, logit_softcap; nanogpt/export.py says why); the tokenizer of the dataset it was
trained on (GPT-2's BPE as vocab.json, merges.txt and tokenizer.json, built offline from tiktoken's file;
a character vocabulary or the dataset's own BPE as tokenizer.json), its vocabulary cut to the tokenizer's
(GPT-2's 50304 padded ids to 50257); tokenizer_config.json, generation_config.json and a model card,
README.md. The GPT-2 form is also what this toolkit reads back with --init_from=DIR.
"""

import json
import math
import os
import re
import shutil

from configurator import configure
from nanogpt import ScriptError
from nanogpt.checkpoint import load_checkpoint, model_from_checkpoint
from nanogpt.data import EOT, model_tokenizer, open_split, split_files, token_bytes
from nanogpt.evaluation import text_bytes
from nanogpt.export import (CUSTOM_CODE, char_tokenizer_file, custom_form, generation_config, gpt2_form,
                            gpt2_tokenizer_files, hf_architecture, model_card, neox_form, tokenizer_config)
from nanogpt.files import ckpt_path, finish_swap, swap_in

# -----------------------------------------------------------------------------
out_dir = 'out'  # the checkpoint to export is out_dir/ckpt.pt
export_dir = ''  # where the export goes; empty: out_dir/hf
push_to_hub = ''  # a Hugging Face repository, user/name, to upload the export to (log in first: hf auth login)
# -----------------------------------------------------------------------------
configure(globals())
export_dir = export_dir or os.path.join(out_dir, 'hf')
finish_swap(export_dir)  # an export killed while its files were renamed into place: completed
if there := [name for name in ('config.json', 'model.safetensors') if os.path.exists(os.path.join(export_dir, name))]:
    raise ScriptError(f"{export_dir} already holds an export ({' and '.join(there)}); export into another "
                      f"--export_dir, or delete {' and '.join(there)} there first")
if push_to_hub:  # before any work: a name the hub refuses, or no login
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(push_to_hub)
    except HFValidationError as e:
        raise ScriptError(f"push_to_hub={push_to_hub!r} is not a repository name the hub takes ({e}); give user/name")
    if '/' not in push_to_hub:
        raise ScriptError(f"push_to_hub={push_to_hub!r}: give the owner too, user/name")
    if not get_token():
        raise ScriptError("push_to_hub needs a Hugging Face login: run hf auth login (or set HF_TOKEN), then export "
                          "again")

try:
    from safetensors.torch import save_file
except ImportError:
    raise ScriptError("export_hf.py needs safetensors: pip install safetensors")

# the model, rebuilt from the checkpoint (loading it checks every name and shape), and the tokenizer it
# was trained with: its dataset's, whose vocabulary and fingerprint must be the checkpoint's
checkpoint = load_checkpoint(ckpt_path(out_dir))
model = model_from_checkpoint(checkpoint, ckpt_path(out_dir))
config = model.config
meta, data_dir, where = model_tokenizer(checkpoint, config.vocab_size, "GPT-2's tokenizer (the checkpoint names no "
                                        "dataset)", "export the checkpoint of a model trained on its dataset")
table, special = token_bytes(meta, where, data_dir)
n_tokens = len(table)  # the ids the tokenizer makes: the rows exported
eot_id = next((i for i in special if table[i] == EOT.encode()), None)
kind = meta.get('tokenizer', 'char' if 'stoi' in meta else 'gpt2')

# the weights and config.json in the architecture that computes our function
architecture, why = hf_architecture(config)
form = {'GPT2LMHeadModel': gpt2_form, 'GPTNeoXForCausalLM': neox_form, 'custom': custom_form}[architecture]
tensors, hf_config = form(model, n_tokens)
hf_config.update(bos_token_id=eot_id, eos_token_id=eot_id)
custom = architecture == 'custom'

# the tokenizer's files
files = {}
if kind == 'gpt2':
    files.update(gpt2_tokenizer_files(table[:eot_id]))  # ids below <|endoftext|>: the merges' tokens
elif kind == 'char':
    files['tokenizer.json'] = char_tokenizer_file(meta['itos'])
else:
    with open(os.path.join(data_dir, meta.get('tokenizer_file', 'tokenizer.json')), 'rb') as f:
        files['tokenizer.json'] = f.read()  # token_bytes has read and checked it
files['tokenizer_config.json'] = tokenizer_config(kind, eot_id, config.block_size)
files['generation_config.json'] = generation_config(config.block_size, eot_id, custom)

# the model card: the data, the tokens trained on, val loss and bits per byte, the commands, how to load it
train_config = checkpoint.get('config') if isinstance(checkpoint.get('config'), dict) else {}
iters = checkpoint.get('iter_num')
per_iter = [train_config.get(k) for k in ('gradient_accumulation_steps', 'batch_size', 'block_size')]
tokens_trained = (f"{iters * math.prod(per_iter):,} ({iters:,} iterations of {math.prod(per_iter):,} tokens)"
                  if all(isinstance(v, int) for v in (iters, *per_iter)) else "not recorded")
val = "not recorded"
best = checkpoint.get('best_val_loss')
if isinstance(best, (int, float)) and best < 1e9:
    val = f"loss {best:.4f} (train.py's best estimate, over eval_iters={train_config.get('eval_iters', '?')} batches)"
    if data_dir and split_files(data_dir, 'val'):  # bits per byte: the same loss per byte of text
        lengths = [0 if i in special else len(b) for i, b in enumerate(table)]
        val_tokens = open_split(data_dir, 'val', meta, 1, config.vocab_size)
        if (val_bytes := text_bytes(val_tokens, lengths)):
            val += (f", {best / math.log(2) * (len(val_tokens) - 1) / val_bytes:.4f} bits per byte (that loss "
                    f"over the {val_bytes / (len(val_tokens) - 1):.2f} bytes per token of the val split)")
tokenizer_text = {'char': f"characters ({n_tokens:,} of them)", 'gpt2': f"GPT-2's BPE ({n_tokens:,} tokens)",
                  'bpe': f"a byte-level BPE trained on its text ({n_tokens:,} tokens)"}[kind]
recipe = [f'{k}={getattr(config, k)!r}' for k in ('rope', 'qk_norm', 'mlp_activation', 'tie_weights', 'logit_softcap')]
commands = checkpoint.get('commands') if isinstance(checkpoint.get('commands'), list) else None
location = push_to_hub or os.path.abspath(export_dir)
files['README.md'] = model_card(push_to_hub or os.path.basename(os.path.abspath(out_dir)), {
    'params': model.get_num_params(non_embedding=False), 'custom': custom, 'block_size': config.block_size,
    'shape': f"{config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, context {config.block_size}, "
             f"{', '.join(recipe)}",
    'architecture_line': (f"custom code (modeling_nanogpt.py; load it with trust_remote_code=True): {why}" if custom
                          else f"transformers' {architecture}"),
    'dataset': train_config.get('dataset', 'not recorded'), 'tokenizer': tokenizer_text, 'tokens_trained': tokens_trained,
    'val': val, 'location': location, 'prompt': 'Hello' if kind != 'char' else table[0].decode('utf-8', 'replace'),
    'commands': [str(c) for c in commands] if commands else
                ["# not recorded (the checkpoint is older than this toolkit's records); its config:",
                 f"# {json.dumps(train_config)[:2000]}"],
})
checkpoint = None  # free the memory

# all the files or none: written under temporary names, then renamed into place together (config.json last)
names = ['model.safetensors', *files, *(CUSTOM_CODE if custom else ()), 'config.json']
if there := [name for name in names if os.path.exists(os.path.join(export_dir, name))]:
    raise ScriptError(f"{export_dir} holds {', '.join(there)}, which the export would replace; export into another "
                      f"--export_dir, or move them away")
with swap_in(export_dir, names) as staged:
    try:
        save_file(tensors, staged['model.safetensors'], metadata={'format': 'pt'})  # transformers wants the framework
    except Exception as e:  # safetensors reports a failed write (a full disk) as its own error, '... (os error 28)'
        if code := re.search(r'os error (\d+)', str(e)):
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None
        raise
    for name, data in files.items():
        with open(staged[name], 'wb') as f:
            f.write(data)
    for name, source in (CUSTOM_CODE.items() if custom else ()):
        shutil.copyfile(source, staged[name])
    with open(staged['config.json'], 'w', encoding='utf-8') as f:
        f.write(json.dumps(hf_config, indent=2) + '\n')
print(f"architecture: {'custom code (trust_remote_code=True)' if custom else architecture}: {why}")
print(f"wrote {export_dir}: {', '.join(names)} ({model.get_num_params(non_embedding=False) / 1e6:.2f}M parameters, "
      f"vocab_size {n_tokens}{f' (of {config.vocab_size})' if n_tokens < config.vocab_size else ''}, block_size "
      f"{config.block_size})")
remote = ', trust_remote_code=True' if custom else ''
print(f"load with transformers: AutoModelForCausalLM.from_pretrained({export_dir!r}{remote})" +
      (f", or here with --init_from={export_dir}" if architecture == 'GPT2LMHeadModel' and config.tie_weights and
       config.mlp_activation == 'gelu' else ''))

if push_to_hub:
    from huggingface_hub import HfApi
    try:
        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=export_dir, commit_message=f"nanoGPT export of {out_dir}")
    except Exception as e:  # no network, a refused token, ...: the export stays on disk
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ScriptError(f"could not upload {export_dir} to the hub as {push_to_hub} ({type(e).__name__}: {reason}); "
                          f"the export is on disk: run the upload again with hf upload {push_to_hub} {export_dir}")
    print(f"uploaded to https://huggingface.co/{push_to_hub}")
