"""One optimizer step of training, shared by train.py and bench.py so that bench.py times exactly
what train.py runs; and when a run has diverged."""

import math

import torch
from torch.nn.parallel import DistributedDataParallel


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
