"""
Checkpoints: out_dir/ckpt.pt written so that a kill at any moment leaves the previous one whole, read
back on the CPU with clear errors; and the model a run or a sample starts from (init_from).

The file is upstream nanoGPT's dict (model, optimizer, model_args, iter_num, best_val_loss, config)
plus scaler and last_eval_iter; plain types only, so torch.load(weights_only=True) reads it and
checkpoints move between this toolkit and upstream in both directions.
"""

import math
import os
import pickle
import re
import shlex
import sys
import zipfile
from contextlib import nullcontext
from dataclasses import fields

import torch

from model import GPT, GPT2_SHAPES, GPTConfig, beyond_gpt2, hf_directory_files, read_hf_config
from nanogpt import ScriptError
from nanogpt.data import GPT2_VOCAB_SIZE, MAX_DIMENSION, check_fingerprint, check_vocab, short
from nanogpt.files import atomic_write, ckpt_path, pickle_bounds_error


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
    if reason := checkpoint_pickle_error(path):  # before torch.load builds anything from it
        raise ScriptError(f"{path} is not a nanoGPT checkpoint ({reason}); it is not loaded")
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
    if problem := checkpoint_entry_error(checkpoint):
        raise ScriptError(f"{path} cannot be used: {problem}; point out_dir at another checkpoint")
    return checkpoint


CHECKPOINT_PICKLE_MAX_BYTES = 1 << 30  # the pickle of a checkpoint's structure (its tensors are stored beside it)


def checkpoint_pickle_error(path):
    """Why the pickle inside the checkpoint at path would take unbounded time or memory to load
    (files.pickle_bounds_error), or None (also where it is not a checkpoint file at all: torch.load
    says so). torch's zip archive holds it as <name>/data.pkl; its legacy format as the fourth of
    the pickles at the file's start (a magic number, a version, system information, the checkpoint)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.filename.endswith('data.pkl'):
                        if info.file_size > CHECKPOINT_PICKLE_MAX_BYTES:
                            return f"its {info.filename} is {info.file_size:,} bytes"
                        with archive.open(info) as f:
                            if reason := pickle_bounds_error(f):
                                return reason
            return None
        with open(path, 'rb') as f:
            for _ in range(4):
                if reason := pickle_bounds_error(f):
                    return reason
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError, NotImplementedError):
        pass  # torch.load tells what is wrong with it
    return None


def _finite_error(value, where):
    """The first tensor in value (a tensor, or dicts and lists of them) with a NaN or an infinity, named, or None."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return where
    elif isinstance(value, dict):
        for k, v in value.items():
            if found := _finite_error(v, f"{where}[{short(k, 40)}]"):
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if found := _finite_error(v, f"{where}[{i}]"):
                return found
    return None


def optimizer_state_like(value):
    """Whether value has the form of torch's optimizer.state_dict(), or of a dict of such (optimizers
    stepped as one, as Muon and AdamW): what loading it into an optimizer reads without checking."""
    if isinstance(value, dict) and 'param_groups' in value:
        return isinstance(value.get('state'), dict) and all(isinstance(s, dict) for s in value['state'].values()) \
            and isinstance(value['param_groups'], list) \
            and all(isinstance(g, dict) and isinstance(g.get('params'), list) for g in value['param_groups'])
    return isinstance(value, dict) and len(value) > 0 and all(optimizer_state_like(v) for v in value.values())


def checkpoint_entry_error(checkpoint):
    """What is wrong with the entries of a loaded checkpoint dict that the scripts read (wrong types,
    weights that are not finite), in words, or None. Entries upstream's checkpoints lack may be absent;
    the optimizer state, which only a resume reads, is checked by planned_model."""
    model = checkpoint['model']
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        return "its model is not a dict of named tensors"
    if found := _finite_error(model, 'model'):
        return (f"its weights are not all finite (NaN or infinity in {found}): it was saved from a run that had "
                f"diverged")
    rules = {  # entry: (test, what it must be)
        'iter_num': (lambda v: type(v) is int and 0 <= v < 2**63, 'an integer from 0'),
        'last_eval_iter': (lambda v: v is None or (type(v) is int and 0 <= v < 2**63), 'None or an integer from 0'),
        'best_val_loss': (lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                                     or isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point())
                          and not math.isnan(float(v)), 'a number'),
        'config': (lambda v: isinstance(v, dict), 'a dict (the run\'s configuration)'),
        'scaler': (lambda v: v is None or isinstance(v, dict), 'None or a dict (a GradScaler state)'),
        'train_row': (lambda v: type(v) is int and v >= 0, 'a row number (an integer from 0)'),
    }
    for key, (test, what) in rules.items():
        if key in checkpoint and not test(checkpoint[key]):
            return f"its {key} is {short(checkpoint[key])}, not {what}"
    return None


def load_optimizer_state(checkpoint, path, optimizer, scaler, fsdp_model=None):
    """A resume's optimizer and GradScaler states from checkpoint (under FSDP onto fsdp_model's shards,
    from the full state dicts saved), with the hyperparameters optimizer was built with (learning rates
    and Muon's lr_scale, betas, weight decay, momentum) put back after it, as the state dict brings the
    checkpoint's: a resumed run keeps the moments and step counts, and takes the settings configured
    now. A state that does not fit the optimizer is one line."""
    configured = [{k: v for k, v in group.items() if k != 'params'} for group in optimizer.param_groups]
    try:
        if fsdp_model is not None:
            from nanogpt.distributed import load_full_state
            load_full_state(fsdp_model, optimizer, clean_state_dict(checkpoint['model']), checkpoint['optimizer'])
        else:
            optimizer.load_state_dict(checkpoint['optimizer'])
        if checkpoint.get('scaler'):
            scaler.load_state_dict(checkpoint['scaler'])
    except Exception as e:  # torch's load_state_dict checks little: a state of another form fails anywhere
        raise ScriptError(f"{path} holds an optimizer state that this optimizer cannot load ({type(e).__name__}: "
                          f"{short(str(e), 200)}); point out_dir at another checkpoint")
    for group, settings in zip(optimizer.param_groups, configured):
        group.update(settings)


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
             if isinstance(args.get(k), bool) or not isinstance(args.get(k), int) or not 0 < args[k] <= MAX_DIMENSION]
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
    and the memory can be checked first, and a bad checkpoint or directory refused before anything is
    written); and for 'resume' the checkpoint, to pass on to init_model."""
    if init_from == 'resume':
        path = ckpt_path(out_dir)
        checkpoint = load_checkpoint(path, "train one first, or start with --init_from=scratch")
        model_from_checkpoint(checkpoint, path, meta=True)  # the weights fit the shape
        if missing := [k for k in ('optimizer', 'iter_num', 'best_val_loss') if k not in checkpoint]:
            raise ScriptError(f"{path} lacks {' and '.join(missing)}, which a resume needs (sample.py and export_hf.py "
                              f"can still read it); start with --init_from=scratch, or from another checkpoint")
        if not optimizer_state_like(checkpoint['optimizer']):
            raise ScriptError(f"{path} cannot be resumed: its optimizer is {short(checkpoint['optimizer'])}, not an "
                              f"optimizer state (a dict of state and param_groups); point out_dir at another checkpoint")
        if found := _finite_error(checkpoint['optimizer'], 'optimizer'):
            raise ScriptError(f"{path} cannot be resumed: its optimizer state is not all finite (NaN or infinity in "
                              f"{found}); point out_dir at another checkpoint")
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
        try:  # what GPT.from_pretrained reads, read first: a bad directory is refused before anything is written
            return dict(read_hf_config(hf_directory_files(init_from)[0]), bias=True), None
        except ValueError as e:
            raise ScriptError(str(e))
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


def check_start(model_args, checkpoint, block_size, meta, dataset, optimizer='adamw', fingerprint=None):
    """Stops when a resumed (checkpoint) or pretrained model, of shape model_args, cannot train on
    this data at this block_size with this optimizer: a larger block_size (no positions learned past
    its own), a smaller one on a resume (the optimizer state has the checkpoint's shape), another
    vocabulary, another optimizer than the one whose state a resume loads, another tokenizer than the
    dataset's (fingerprint, as tokenizer_fingerprint gives it)."""
    size = model_args['block_size']
    source = 'checkpoint' if checkpoint is not None else 'pretrained model'
    if block_size > size:
        raise ScriptError(f"block_size={block_size} is larger than the {source}'s {size}; use block_size <= {size}")
    if checkpoint is not None and block_size < size:
        raise ScriptError(f"block_size={block_size} is smaller than the checkpoint's {size}, and a resumed run keeps "
                          f"its block_size (its optimizer state has that shape); use block_size={size}")
    if checkpoint is not None:
        config = checkpoint.get('config') if isinstance(checkpoint.get('config'), dict) else {}
        saved, trained_on = (config.get(k, default) for k, default in (('optimizer', 'adamw'), ('dataset', '?')))
        if saved != optimizer:  # upstream's checkpoints (no 'optimizer'): AdamW
            raise ScriptError(f"the checkpoint was trained with optimizer={short(saved)}, whose state it holds; resume "
                              f"with --optimizer={saved if isinstance(saved, str) else short(saved)}")
        trained_on = trained_on if isinstance(trained_on, str) else short(trained_on)
        hint = f"resume with the dataset it was trained on ({trained_on})"
    else:
        hint = "GPT-2 reads GPT-2's BPE tokens: prepare the text with data/prepare.py --tokenizer=gpt2"
    check_vocab(meta, model_args['vocab_size'], f"dataset {dataset}", hint)
    check_fingerprint(checkpoint, fingerprint, f"dataset {dataset}", "its ids would stand for other text: resume with "
                      "the dataset as it was prepared for this run")


def command_lines(checkpoint, world_size):
    """The command lines that trained a run, for the model card of an export: the checkpoint's (where it
    resumes one) and this process's."""
    this = shlex.join(['python', *sys.argv]) + (f" (under torchrun, {world_size} processes)" if world_size > 1 else '')
    before = checkpoint.get('commands') if checkpoint is not None else None
    return [c for c in before if isinstance(c, str)] + [this] if isinstance(before, list) else [this]


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
