"""
Checkpoints: out_dir/ckpt.pt written so that a kill at any moment leaves the previous one whole,
read back on the CPU with clear errors, and the random-number state that an exact resume needs.

The file is upstream nanoGPT's dict (model, optimizer, model_args, iter_num, best_val_loss, config)
plus scaler, rng and last_eval_iter; plain types only, so torch.load(weights_only=True) reads it
and checkpoints move between this toolkit and upstream in both directions.
"""

import os
import random
from dataclasses import fields

import numpy as np
import torch


def save_checkpoint(path, checkpoint):
    """torch.save to a temporary file in the same folder, flushed and fsynced, then renamed over path:
    the rename is atomic, so path always holds either the old checkpoint or the new one, whole."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + '.tmp'  # a kill -9 can leave it behind; the next save replaces it
    try:
        with open(tmp, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if hasattr(os, 'O_DIRECTORY'):  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path):
    """The checkpoint dict, on the CPU (the model moves to the device later, so resuming does not
    hold two copies in GPU memory)."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: no checkpoint at {path}; train one first, or start with init_from='scratch'")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SystemExit(f"error: {path} is truncated or corrupt and cannot be loaded ({reason}); "
                         f"delete it or point out_dir at another checkpoint")
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint or 'model_args' not in checkpoint:
        raise SystemExit(f"error: {path} is not a nanoGPT checkpoint (it lacks model or model_args)")
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
    from model import GPT, GPTConfig
    known = {f.name for f in fields(GPTConfig)}
    args = dict({k: v for k, v in checkpoint['model_args'].items() if k in known}, **overrides)
    model = GPT(GPTConfig(**args))
    try:
        model.load_state_dict(clean_state_dict(checkpoint['model']))
    except RuntimeError as e:
        raise SystemExit(f"error: {path} does not match its own model_args: {str(e).strip().splitlines()[0]}")
    return model


def rng_state():
    """Every random-number state a run draws from: torch (CPU and CUDA), numpy and Python."""
    np_state = np.random.get_state()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        'python': random.getstate(),
    }


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    if state.get('cuda') and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state['python'])
