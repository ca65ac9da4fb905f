"""
Checkpoints: out_dir/ckpt.pt written so that a kill at any moment leaves the previous one whole, read
back on the CPU with clear errors; and the model a run or a sample starts from (init_from).

The file is upstream nanoGPT's dict (model, optimizer, model_args, iter_num, best_val_loss, config)
plus scaler and last_eval_iter; plain types only, so torch.load(weights_only=True) reads it and
checkpoints move between this toolkit and upstream in both directions.
"""

import json
import os
import pickle
import re
from contextlib import nullcontext
from dataclasses import fields

import torch

from model import GPT, GPT2_SHAPES, GPTConfig, beyond_gpt2
from nanogpt import ScriptError
from nanogpt.data import GPT2_VOCAB_SIZE, check_vocab
from nanogpt.files import atomic_write, ckpt_path


def save_checkpoint(path, checkpoint):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path, missing_hint="train one first, or point --out_dir at the folder that holds one"):
    """The checkpoint dict, on the CPU (the model moves to the device later, so resuming does not
    hold two copies in GPU memory). Only tensors and plain data load (weights_only): a file that
    holds other objects is refused as such, since unpickling them could run code."""
    if not os.path.isfile(path):
        raise ScriptError(f"no checkpoint at {path}; {missing_hint}")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if 'Weights only load failed' not in str(e):
            raise ScriptError(f"{path} is truncated or corrupt and cannot be loaded ({e}); "
                              f"delete it or point out_dir at another checkpoint")
        found = re.search(r'WeightsUnpickler error: (.*?)(?: Please use|$)', str(e), re.M)
        raise ScriptError(f"{path} holds more than tensors and plain data ({found.group(1) if found else 'objects'}), "
                          f"so it is not loaded: unpickling it could run code. Checkpoints of this toolkit and of "
                          f"upstream nanoGPT never do; load it with torch.load(weights_only=False) yourself only if "
                          f"you trust its source")
    except Exception as e:
        reason = str(e).strip() or type(e).__name__
        raise ScriptError(f"{path} is truncated or corrupt and cannot be loaded ({reason}); "
                          f"delete it or point out_dir at another checkpoint")
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint \
            or not isinstance(checkpoint.get('model_args'), dict):
        raise ScriptError(f"{path} is not a nanoGPT checkpoint (it lacks model or model_args)")
    return checkpoint


def clean_state_dict(state_dict):
    """Model weights with the '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes removed and
    the causal-mask buffers of older checkpoints dropped."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith(('_orig_mod.', 'module.')):
            k = k.split('.', 1)[1]
        if k.endswith('.attn.bias') and v.dim() == 4:
            continue
        out[k] = v
    return out


def known_model_args(model_args):
    """model_args without the keys GPTConfig does not have (a fork of nanoGPT may add some)."""
    known = {f.name for f in fields(GPTConfig)}
    return {k: v for k, v in model_args.items() if k in known}


def model_from_checkpoint(checkpoint, path, meta=False, **overrides):
    """The GPT a checkpoint holds, built from its model_args (with overrides such as dropout; keys a
    fork of nanoGPT may add are ignored) and loaded with its weights. meta: built on the meta device
    and given the checkpoint's tensors as they are, to check that they fit model_args without
    allocating anything (not a model to train: tied weights are no longer tied)."""
    args = dict(known_model_args(checkpoint['model_args']), **overrides)
    wrong = [k for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size')
             if isinstance(args.get(k), bool) or not isinstance(args.get(k), int) or args[k] <= 0]
    if wrong or not isinstance(args.get('bias', False), bool):
        raise ScriptError(f"{path} is not a nanoGPT checkpoint (its model_args have no sensible "
                          f"{', '.join(wrong) or 'bias'})")
    try:
        with torch.device('meta') if meta else nullcontext():
            model = GPT(GPTConfig(**args))
        model.load_state_dict(clean_state_dict(checkpoint['model']), assign=meta)
    except (ValueError, RuntimeError, TypeError, AttributeError) as e:
        # load_state_dict's first line is only 'Error(s) in loading state_dict for GPT:'; the next says which
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        raise ScriptError(f"{path} does not match its own model_args: {' '.join(lines[:2])}")
    return model


# what a resumed or pretrained model keeps, whatever is configured: its shape and its architecture
SHAPE_KEYS = ('n_layer', 'n_head', 'n_embd', 'bias', 'rope', 'qk_norm', 'mlp_activation', 'tie_weights', 'logit_softcap')


def planned_model(init_from, out_dir, model_args=None):
    """The model_args that init_from will give, found without building the model (so that the data
    and the memory can be checked first), or None where only loading tells (an unreadable
    directory); and for 'resume' the checkpoint, to pass on to init_model."""
    if init_from == 'resume':
        path = ckpt_path(out_dir)
        checkpoint = load_checkpoint(path, "train one first, or start with --init_from=scratch")
        model_from_checkpoint(checkpoint, path, meta=True)  # the weights fit the shape
        return known_model_args(checkpoint['model_args']), checkpoint
    pretrained = init_from in GPT2_SHAPES or (init_from != 'scratch' and os.path.isdir(init_from))
    if pretrained and (differences := ', '.join(f'{k}={model_args[k]!r}' for k in beyond_gpt2(model_args or {}))):
        raise ScriptError(f"init_from={init_from} loads GPT-2's architecture, which has no {differences}; "
                          f"leave those keys at their defaults to start from GPT-2")
    if init_from in GPT2_SHAPES:
        n_layer, n_head, n_embd = GPT2_SHAPES[init_from]
        return dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=1024, bias=True,
                    vocab_size=GPT2_VOCAB_SIZE), None
    if init_from != 'scratch' and os.path.isdir(init_from):
        try:
            with open(os.path.join(init_from, 'config.json'), encoding='utf-8') as f:
                hf = json.load(f)
            return dict(n_layer=hf['n_layer'], n_head=hf['n_head'], n_embd=hf['n_embd'], block_size=hf['n_positions'],
                        bias=True, vocab_size=hf['vocab_size']), None
        except (OSError, ValueError, KeyError, TypeError):
            return None, None  # GPT.from_pretrained says what is wrong with it
    if init_from == 'scratch' and model_args is not None:
        return model_args, None
    raise unknown_init_from(init_from, scratch=model_args is not None)


def unknown_init_from(init_from, scratch):
    options = "'scratch', 'resume'" if scratch else "'resume'"  # scripts without a model shape have no scratch
    return ScriptError(f"init_from={init_from!r}: use {options}, a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) "
                       f"or a directory with config.json and model.safetensors")


def shape_warning(config, model_args):
    """A warning line naming the shape and architecture keys of config that differ from model_args,
    which a resumed run keeps (its checkpoint's); None where they agree."""
    differ = [k for k in SHAPE_KEYS if k in config and k in model_args and config[k] != model_args[k]]
    if not differ:
        return None
    return (f"warning: the resumed model keeps the checkpoint's {', '.join(f'{k}={model_args[k]!r}' for k in differ)}, "
            f"not {', '.join(f'{k}={config[k]!r}' for k in differ)} as configured")


def check_start(model_args, checkpoint, block_size, meta, dataset, optimizer='adamw'):
    """Stops when a resumed (checkpoint) or pretrained model, of shape model_args, cannot train on
    this data at this block_size with this optimizer: a larger block_size (no positions learned past
    its own), a smaller one on a resume (the optimizer state has the checkpoint's shape), another
    vocabulary, another optimizer than the one whose state a resume loads."""
    size = model_args['block_size']
    source = 'checkpoint' if checkpoint is not None else 'pretrained model'
    if block_size > size:
        raise ScriptError(f"block_size={block_size} is larger than the {source}'s {size}; use block_size <= {size}")
    if checkpoint is not None and block_size < size:
        raise ScriptError(f"block_size={block_size} is smaller than the checkpoint's {size}, and a resumed run keeps "
                          f"its block_size (its optimizer state has that shape); use block_size={size}")
    if checkpoint is not None:
        config = checkpoint.get('config') if isinstance(checkpoint.get('config'), dict) else {}
        saved = config.get('optimizer', 'adamw')  # upstream's checkpoints: AdamW
        if saved != optimizer:
            raise ScriptError(f"the checkpoint was trained with optimizer={saved!r}, whose state it holds; resume with "
                              f"--optimizer={saved}")
        hint = f"resume with the dataset it was trained on ({config.get('dataset', '?')})"
    else:
        hint = "GPT-2 reads GPT-2's BPE tokens: prepare the text with data/prepare.py --tokenizer=gpt2"
    check_vocab(meta, model_args['vocab_size'], f"dataset {dataset}", hint)


def init_model(init_from, out_dir, dropout, model_args=None, checkpoint=None):
    """The model to start from, and the checkpoint it came from ('resume'; None otherwise):
    'scratch' builds GPT(GPTConfig(**model_args)); 'resume' reads out_dir/ckpt.pt (or takes the
    checkpoint given, as planned_model read it), whose shape it keeps; 'gpt2', 'gpt2-medium', ... or
    a Hugging Face GPT-2 directory loads GPT-2's weights. dropout is always the caller's. Scripts
    without model_args offer no 'scratch'."""
    try:
        if init_from == 'scratch' and model_args is not None:
            return GPT(GPTConfig(**dict(model_args, dropout=dropout))), None
        if init_from == 'resume':
            path = ckpt_path(out_dir)
            checkpoint = checkpoint or load_checkpoint(path)
            return model_from_checkpoint(checkpoint, path, dropout=dropout), checkpoint
        if init_from.startswith('gpt2') or os.path.isdir(init_from):
            return GPT.from_pretrained(init_from, dict(dropout=dropout)), None
    except (ValueError, ImportError) as e:  # model.py's errors, for people who import it, are ValueErrors
        raise ScriptError(str(e))
    raise unknown_init_from(init_from, scratch=model_args is not None)
