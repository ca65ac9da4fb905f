"""One optimizer step of training, shared by train.py and bench.py so that bench.py times exactly
what train.py runs; and for train.py, the settings it refuses before it starts, how a run is asked to
stop, and when a run has diverged."""

import math
import os
import signal
import sys

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from nanogpt import ScriptError, distributed, interrupted


def check_settings(c, world_size):
    """Stops with one line (ScriptError) at a setting of train.py's config c that cannot train under
    world_size processes, before the device, the data or the disk is touched; a cooldown longer than
    the decay window is only a warning (legitimate in a short trial of a long recipe)."""
    if c['max_iters'] < 0 or (c['max_iters'] == 0 and not c['eval_only']):
        raise ScriptError(f"max_iters must be a positive integer, got {c['max_iters']!r} (eval_only=True evaluates "
                          f"without training)")
    if c['init_from'] == 'scratch' and c['n_embd'] % c['n_head']:  # GPT() checks it too, after torchrun's set-up
        raise ScriptError(f"n_embd={c['n_embd']} is not divisible by n_head={c['n_head']}")
    if c['decay_lr'] and c['min_lr'] > c['learning_rate']:
        raise ScriptError(f"min_lr={c['min_lr']} is above learning_rate={c['learning_rate']}: the decay would raise "
                          f"the learning rate")
    window = c['lr_decay_iters'] - c['warmup_iters']
    if c['decay_lr'] and 0 < window < c['cooldown_iters'] and int(os.environ.get('RANK', 0)) == 0:
        print(f"warning: cooldown_iters={c['cooldown_iters']} is longer than the decay window after the warmup "
              f"(lr_decay_iters - warmup_iters = {window}): right after the warmup the learning rate drops from "
              f"learning_rate to where the cooldown is then; use cooldown_iters <= {window} for a constant phase at "
              f"learning_rate", file=sys.stderr)
    if c['gradient_accumulation_steps'] % world_size:
        options = ', '.join(str(world_size * k) for k in range(1, 5))
        raise ScriptError(f"gradient_accumulation_steps={c['gradient_accumulation_steps']} does not divide among "
                          f"{world_size} processes; use a multiple of {world_size} ({options}, ...)")
    if c['fsdp'] and world_size == 1:
        raise ScriptError("fsdp=True shards across processes: start train.py with torchrun --nproc_per_node=N")
    if c['fsdp'] and c['optimizer'] == 'muon':  # Muon orthogonalises whole matrices; FSDP gives each a slice
        raise ScriptError("optimizer='muon' needs whole weight matrices on every process: use it with DDP (fsdp=False)")


def set_gradient_sync(model, sync):
    """Turns the all-reduce of gradients across processes on or off, whichever wrapper model is:
    DDP (around the compiled model), or an FSDP2 module (inside torch.compile's wrapper). A single
    process's model has nothing to turn."""
    if isinstance(model, DistributedDataParallel):
        model.require_backward_grad_sync = sync  # what DDP's no_sync() context toggles
        return
    inner = getattr(model, '_orig_mod', model)
    if hasattr(inner, 'set_requires_gradient_sync'):  # torch.distributed.fsdp.fully_shard
        inner.set_requires_gradient_sync(sync)


def catch_stop_signals(announce):
    """Ctrl-C and SIGTERM (a preempted cloud job) from here on only ask the run to stop: the list
    returned gets each signal, for the training loop to finish its iteration and write a checkpoint; a
    second Ctrl-C exits at once (one line, exit code 130). announce: whether this process says so."""
    received = []

    def request_stop(signum, frame):
        if received and signum == signal.SIGINT:
            raise interrupted("interrupted again: exiting now, without a checkpoint")
        received.append(signum)
        if announce:
            print(f"\n{signal.Signals(signum).name} received: finishing this iteration, then saving a checkpoint "
                  f"(Ctrl-C again to quit at once)", flush=True)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return received


def dropout_seeder(seed, stream, first_micro_step):
    """seed_dropout(it, micro_step) for train_step: reseeds torch for the dropout masks of a micro-step
    from (seed, stream, it, first_micro_step + micro_step) (about 0.1 ms, so only where there is dropout).
    first_micro_step: this rank's first (micro-steps are numbered across the ranks)."""

    def seed_dropout(it, micro_step):
        state = np.random.SeedSequence((seed, stream, it, first_micro_step + micro_step)).generate_state(1)
        torch.manual_seed(int(state[0]))
    return seed_dropout


def train_step(model, optimizer, scaler, ctx, X, Y, *, batch, it, micro_steps, grad_clip, seed_dropout=None):
    """Iteration it: forward and backward over micro_steps micro-batches, starting with (X, Y), then
    gradient clipping and the optimizer step. batch(it, micro_step) gives a micro-step's batch; it is
    called right after each forward for the micro-step after it (after the last one: iteration
    it + 1's first), so that a GPU computes while the host fetches. seed_dropout(it, micro_step),
    where given, runs before each forward. Under DDP or FSDP gradients cross the processes on the
    last micro-step only.
    Returns the next (X, Y), the loss averaged over the micro-steps and the gradient norm before
    clipping (zero when grad_clip is 0), both as tensors on the device: reading them waits for the
    device, so the caller does that only where it prints."""
    # our own accumulator: the loss a CUDA graph (compile_mode='reduce-overhead') returns lives in the
    # graph's memory and is overwritten by the next replay
    loss_sum = torch.zeros((), device=X.device)
    for micro_step in range(micro_steps):
        if seed_dropout is not None:
            seed_dropout(it, micro_step)
        set_gradient_sync(model, micro_step == micro_steps - 1)
        with ctx:
            _, loss = model(X, Y)
            loss = loss / micro_steps
        X, Y = batch(it, micro_step + 1) if micro_step + 1 < micro_steps else batch(it + 1, 0)
        scaler.scale(loss).backward()
        loss_sum += loss.detach().float()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if hasattr(grad_norm, 'full_tensor'):
            grad_norm = grad_norm.full_tensor()  # FSDP returns a DTensor
    else:
        grad_norm = torch.zeros((), device=loss_sum.device)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return X, Y, loss_sum, grad_norm.float()


# below 1 the float16 gradients overflow even unscaled ("something is likely wrong", as torch's
# GradScaler.update says): from the initial 2**16, halved at each skip, that takes 17 skips in a row
MIN_LOSS_SCALE = 1.0


def read_device_stats(unread, stop_requested, scaler, device, world_size, grad_clip, advice):
    """Reads the (iteration, lr, loss, gradient norm) rows queued in unread, the last two still on the
    device, in one host-device sync, and empties it; stops the run with one line (ending in advice) where
    divergence says it went wrong. Returns the last iteration's loss (the mean over micro-steps and
    ranks) and whether any rank was asked to stop."""
    stats = torch.stack([torch.stack((loss, norm)) for _, _, loss, norm in unread])
    # a last row: the stop request and the GradScaler's scale, so that every rank decides alike
    last = torch.tensor([[float(stop_requested), scaler.get_scale()]], device=device)
    values = (distributed.all_reduce_sum(torch.cat((stats, last))) / world_size).tolist()
    rows = [(it, lr, loss, norm) for (it, lr, _, _), (loss, norm) in zip(unread, values)]
    if found := divergence(rows, grad_clip, values[-1][1] if scaler.is_enabled() else None):
        (it, lr, _, _), what = found
        raise ScriptError(f"iter {it}: {what} at learning rate {lr:.3g}; training stopped and {advice}")
    unread.clear()
    return values[-2][0], values[-1][0] > 0


def divergence(rows, grad_clip, loss_scale=None):
    """The first iteration at which training must stop, as (row, what went wrong in words), or None.
    rows are (iteration, lr, loss, gradient norm) as read from the device, oldest first; loss_scale is
    the float16 GradScaler's scale after the last of them, None where there is no scaler.
    A non-finite loss always stops the run; without a scaler, so does a non-finite gradient norm. With
    one, a non-finite gradient norm is routine: the scaler skips that step and halves its scale (and
    doubles it after 2000 clean steps, so a long run overflows now and then). Such a run stops only
    once the scale has fallen below MIN_LOSS_SCALE, with skip after skip."""
    for row in rows:
        _, _, loss, norm = row
        if not math.isfinite(loss) or (loss_scale is None and not math.isfinite(norm)):
            norm_text = 'n/a (grad_clip=0)' if grad_clip == 0.0 else f"{norm:.4g}"
            return row, f"the loss is {loss:.4g}, the gradient norm {norm_text}"
    if loss_scale is not None and loss_scale < MIN_LOSS_SCALE:
        return rows[-1], (f"the float16 GradScaler skipped step after step on overflowing gradients, down to a "
                          f"loss scale of {loss_scale:.3g},")
    return None
