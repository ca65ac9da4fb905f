"""The learning-rate schedule of train.py: linear warmup, then cosine decay down to min_lr."""

import math


def get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    # 1) linear warmup, already above zero at it=0 so the first step is not wasted
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) after the decay, stay at min_lr
    if it > lr_decay_iters or lr_decay_iters <= warmup_iters:
        return min_lr
    # 3) in between, cosine from learning_rate down to min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)
