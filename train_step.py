"""One optimizer step of training, shared by train.py and bench.py so that bench.py times exactly
what train.py runs."""

import torch


def train_step(model, optimizer, scaler, ctx, X, Y, next_batch, gradient_accumulation_steps, grad_clip,
               start_micro_step=None):
    """Forward and backward over gradient_accumulation_steps micro-batches, starting with (X, Y), then
    gradient clipping and the optimizer step. next_batch(micro_step) gives the batch after micro_step's
    (after the last one: the next step's first); it is called right after each forward, so that a GPU
    computes while the host fetches. start_micro_step(micro_step), where given, runs before each
    forward (train.py seeds dropout there and, under DDP or FSDP, turns gradient synchronisation on
    for the last micro-step only).
    Returns the next (X, Y), the loss averaged over the micro-steps and the gradient norm before
    clipping (zero when grad_clip is 0), both as tensors on the device: reading them waits for the
    device, so the caller does that only where it prints."""
    # our own accumulator: the loss a CUDA graph (compile_mode='reduce-overhead') returns lives in the
    # graph's memory and is overwritten by the next replay
    loss_sum = torch.zeros((), device=X.device)
    for micro_step in range(gradient_accumulation_steps):
        if start_micro_step is not None:
            start_micro_step(micro_step)
        with ctx:
            _, loss = model(X, Y)
            loss = loss / gradient_accumulation_steps
        X, Y = next_batch(micro_step)
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
