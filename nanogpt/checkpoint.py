"""
Checkpoints: out_dir/ckpt.pt written so that a kill at any moment leaves the previous one whole, read
back on the CPU with clear errors; and the model a run or a sample starts from (init_from).

The file is upstream nanoGPT's dict (model, optimizer, model_args, iter_num, best_val_loss, config)
plus scaler and last_eval_iter; plain types only, so torch.load(weights_only=True) reads it and
checkpoints move between this toolkit and upstream in both directions.
"""

import os
from dataclasses import fields

import torch

from model import GPT, GPTConfig
from nanogpt import ScriptError
from nanogpt.files import atomic_write, ckpt_path


def save_checkpoint(path, checkpoint):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        torch.save(checkpoint, f)


def load_checkpoint(path):
    """The checkpoint dict, on the CPU (the model moves to the device later, so resuming does not
    hold two copies in GPU memory)."""
    if not os.path.isfile(path):
        raise ScriptError(f"no checkpoint at {path}; train one first, or start with init_from='scratch'")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ScriptError(f"{path} is truncated or corrupt and cannot be loaded ({reason}); "
                          f"delete it or point out_dir at another checkpoint")
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint or 'model_args' not in checkpoint:
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


def model_from_checkpoint(checkpoint, path, **overrides):
    """The GPT a checkpoint holds, built from its model_args (with overrides such as dropout; keys a
    fork of nanoGPT may add are ignored) and loaded with its weights."""
    known = {f.name for f in fields(GPTConfig)}
    args = dict({k: v for k, v in checkpoint['model_args'].items() if k in known}, **overrides)
    try:
        model = GPT(GPTConfig(**args))
        model.load_state_dict(clean_state_dict(checkpoint['model']))
    except (ValueError, RuntimeError) as e:
        raise ScriptError(f"{path} does not match its own model_args: {str(e).strip().splitlines()[0]}")
    return model


def init_model(init_from, out_dir, dropout, model_args=None):
    """The model to start from, and the checkpoint it came from ('resume'; None otherwise):
    'scratch' builds GPT(GPTConfig(**model_args)); 'resume' reads out_dir/ckpt.pt, whose shape it
    keeps; 'gpt2', 'gpt2-medium', ... or a Hugging Face GPT-2 directory loads GPT-2's weights.
    dropout is always the caller's. Scripts without model_args offer no 'scratch'."""
    try:
        if init_from == 'scratch' and model_args is not None:
            return GPT(GPTConfig(**dict(model_args, dropout=dropout))), None
        if init_from == 'resume':
            path = ckpt_path(out_dir)
            checkpoint = load_checkpoint(path)
            return model_from_checkpoint(checkpoint, path, dropout=dropout), checkpoint
        if init_from.startswith('gpt2') or os.path.isdir(init_from):
            return GPT.from_pretrained(init_from, dict(dropout=dropout)), None
    except (ValueError, ImportError) as e:  # model.py's errors, for people who import it, are ValueErrors
        raise ScriptError(str(e))
    scratch = "'scratch', " if model_args is not None else ''
    raise ScriptError(f"init_from={init_from!r}: use {scratch}'resume', a GPT-2 name (gpt2, gpt2-medium, gpt2-large, "
                      f"gpt2-xl) or a directory with config.json and model.safetensors")
