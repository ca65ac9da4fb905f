"""
torch.distributed for train.py: process-group set-up under torchrun, DDP or FSDP2 wrapping, and
full (unsharded) state dicts so that checkpoints of sharded runs load anywhere.
"""

import atexit
import gc
import inspect
import os

import torch
import torch.distributed as dist

from nanogpt import ScriptError


def setup(backend, device):
    """Under torchrun (RANK set): joins the process group and returns (rank, local_rank, world_size,
    device) with this process's device; otherwise (0, 0, 1, device).
    A process on cuda:N makes GPU N its current device: else CUDA's first use by anything that takes
    the current device puts a context (about 0.5 GB) on GPU 0."""
    known = [b for b in getattr(dist.Backend, 'backend_list', ['gloo', 'nccl', 'mpi']) if b not in ('undefined', 'fake')]
    if backend not in ('', 'auto', *known):
        raise ScriptError(f"unknown backend {backend!r}; use auto (nccl on GPUs, gloo on CPUs) or one of {', '.join(known)}")
    if int(os.environ.get('RANK', -1)) == -1:
        if device.startswith('cuda:'):
            torch.cuda.set_device(device)
        return 0, 0, 1, device
    rank, local_rank, world_size = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    if backend in ('', 'auto'):
        backend = 'nccl' if device.startswith('cuda') else 'gloo'
    if backend == 'nccl' and not device.startswith('cuda'):
        raise ScriptError(f"backend=nccl connects CUDA GPUs, and this run is on {device}; use backend=gloo (or auto)")
    options = {}
    if backend == 'nccl' and 'device_id' in inspect.signature(dist.init_process_group).parameters:
        # binds the group to this GPU: NCCL then knows which GPU a barrier is for, and does not warn at
        # teardown that it guessed
        options['device_id'] = torch.device(device)
    dist.init_process_group(backend=backend, **options)
    # a rank that stops with an error leaves the group before the interpreter's exit, where gloo's threads,
    # destroyed with it, could abort the process (exit code -6 instead of the error's 1)
    atexit.register(leave)
    return rank, local_rank, world_size, device


def check_same_config(config):
    """Under torchrun: stops every process, in one line naming what differs, where they were not all
    given the same configuration (a config file that reads the environment, files that differ between
    nodes): their batches, shapes and collectives would not match, and the run would hang or fail with
    a traceback far from the cause. Nothing where there is one process."""
    if not is_distributed():
        return
    configs = [None] * dist.get_world_size()
    dist.all_gather_object(configs, {k: repr(v) for k, v in config.items()})
    differ = [k for k in sorted(set().union(*configs)) if len({c.get(k) for c in configs}) > 1]
    if differ:
        def values(k):  # rank 0's value, and the first rank that has another
            r = next(r for r, c in enumerate(configs) if c.get(k) != configs[0].get(k))
            return f"{k} is {configs[0].get(k, 'missing')} on rank 0 and {configs[r].get(k, 'missing')} on rank {r}"
        shown = '; '.join(values(k) for k in differ[:3])
        raise ScriptError(f"the processes were given different settings ({shown}{'; ...' if len(differ) > 3 else ''}); "
                          f"give every process the same config files and --key=value overrides")


def leave():
    if is_distributed():
        dist.destroy_process_group()


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor):
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def on_master(master, device, fn, *args, **kwargs):
    """fn(*args, **kwargs) on the master process alone (rank 0, which writes the run's files); its
    result there, None on the other ranks. A ScriptError it raises (an out_dir in use, a full disk)
    stops every rank together: the master says it, the others leave quietly with the same exit code,
    where they would otherwise wait for the master forever or fail with a traceback of their own."""
    error = result = None
    if master:
        try:
            result = fn(*args, **kwargs)
        except ScriptError as e:
            error = e
    if is_distributed():
        failed = torch.tensor([float(error is not None)], device=device)
        dist.all_reduce(failed)
        if failed.item() and error is None:
            raise SystemExit(1)
    if error is not None:
        raise error
    return result


def shard(model):
    """FSDP2: each transformer block its own unit, then the rest (embeddings, ln_f, the tied lm_head)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ScriptError("fsdp=True needs torch>=2.6 (torch.distributed.fsdp.fully_shard)")
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    return model


def _state_dict_options(cpu_offload):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def _unwrapped(model):
    """The FSDP module itself: torch.compile's wrapper prefixes every parameter name with '_orig_mod.',
    which torch.distributed's state-dict functions strip, so names taken from the wrapper match nothing."""
    return getattr(model, '_orig_mod', model)


def _param_names(model, optimizer):
    """The names of the optimizer's parameters in its own order: the key between the optimizer's
    numbered state (the format of optimizer.state_dict()) and torch.distributed's named one."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group['params']]


def full_state(model, optimizer):
    """(model state dict, optimizer state dict) of an FSDP-sharded model (or torch.compile's wrapper of
    one), gathered whole on the CPU (collective: every rank calls it; rank 0 gets the tensors) and in
    optimizer.state_dict()'s format."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    model = _unwrapped(model)
    options = _state_dict_options(cpu_offload=True)
    model_sd = get_model_state_dict(model, options=options)
    named = get_optimizer_state_dict(model, optimizer, options=options)
    if not named:  # ranks other than 0 get nothing back
        return model_sd, named
    names = _param_names(model, optimizer)
    index = {n: i for i, n in enumerate(names)}
    optim_sd = {
        'state': {index[n]: s for n, s in named['state'].items() if n in index},
        'param_groups': [dict(g, params=[index[n] for n in g['params']]) for g in named['param_groups']],
    }
    return model_sd, optim_sd


def load_full_state(model, optimizer, model_sd, optim_sd):
    """Loads full state dicts (as full_state returns, or from a single-device run) into an FSDP model
    (or torch.compile's wrapper of one) and its optimizer; every rank holds the full dicts and keeps its
    shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    model = _unwrapped(model)
    options = _state_dict_options(cpu_offload=False)
    set_model_state_dict(model, model_sd, options=options)
    if optimizer is not None and optim_sd is not None:
        names = _param_names(model, optimizer)
        named = {
            'state': {names[i]: s for i, s in optim_sd['state'].items()},
            'param_groups': [dict(g, params=[names[i] for i in g['params']]) for g in optim_sd['param_groups']],
        }
        set_optimizer_state_dict(model, optimizer, named, options=options)


def teardown():
    """The end of a run: every rank leaves the group together. Drop what holds the group first (the DDP
    wrapper, the optimizer): the reference cycles they are in are collected here."""
    if is_distributed():
        gc.collect()
        dist.barrier()  # rank 0 may still be writing a checkpoint: leave together, not mid-conversation
        leave()
