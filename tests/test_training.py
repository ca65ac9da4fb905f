"""When training stops as diverged: the rules, and a real GradScaler skipping steps through train_step."""

import math
from contextlib import nullcontext

import pytest
import torch

from model import GPT, GPTConfig
from nanogpt.training import divergence, train_step

NAN, INF = math.nan, math.inf


def rows(*pairs):
    return [(it, 1e-3, loss, norm) for it, (loss, norm) in enumerate(pairs)]


@pytest.mark.parametrize('pairs,grad_clip,scale,stop_at,words', [
    # no scaler (float32, bfloat16): any non-finite value stops, at the first one
    (((4.1, 0.9), (4.0, 0.8)), 1.0, None, None, None),
    (((4.1, 0.9), (4.0, INF), (NAN, NAN)), 1.0, None, 1, 'the loss is 4, the gradient norm inf'),
    (((4.1, 0.0), (NAN, 0.0)), 0.0, None, 1, 'the loss is nan, the gradient norm n/a (grad_clip=0)'),
    # float16's scaler: an overflowing gradient is a skipped step, not a divergence
    (((4.1, INF), (4.0, NAN), (3.9, 0.7)), 1.0, 2.0 ** 14, None, None),
    (((4.1, INF), (INF, INF)), 1.0, 2.0 ** 14, 1, 'the loss is inf'),
    # ... until the scale has fallen below 1: skip after skip
    (((4.1, INF), (4.1, INF)), 1.0, 0.5, 1, 'down to a loss scale of 0.5'),
    (((4.1, 0.0), (4.1, 0.0)), 0.0, 0.5, 1, 'down to a loss scale of 0.5'),  # no norm without clipping; the scale tells
])
def test_divergence_rules(pairs, grad_clip, scale, stop_at, words):
    found = divergence(rows(*pairs), grad_clip, scale)
    if stop_at is None:
        assert found is None
    else:
        row, what = found
        assert row[0] == stop_at and words in what


def test_a_real_gradscaler_skips_overflows_and_stops_only_after_skip_after_skip():
    """The scaler on the CPU, float32 gradients: a hook makes one parameter's gradient overflow. Each such
    step is skipped (the weights stay) and halves the scale; a clean step trains. divergence() lets the
    run go on until the scale, 65536 at first, has fallen below 1."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=2, n_embd=8, bias=False))
    optimizer = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), 'cpu', verbose=False)
    scaler = torch.amp.GradScaler('cpu')
    X = torch.randint(20, (2, 8))

    def step(it, overflow):
        hook = model.transformer.wpe.weight.register_hook(lambda g: g * INF) if overflow else None
        before = model.lm_head.weight.detach().clone()
        _, _, loss, norm = train_step(model, optimizer, scaler, nullcontext(), X, X, batch=lambda *_: (X, X), it=it,
                                      micro_steps=1, grad_clip=1.0)
        if hook is not None:
            hook.remove()
        assert torch.equal(model.lm_head.weight, before) == overflow  # an overflowing step is skipped
        return divergence([(it, 1e-2, loss.item(), norm.item())], 1.0, scaler.get_scale())

    assert step(0, overflow=True) is None and scaler.get_scale() == 2.0 ** 15
    assert step(1, overflow=False) is None and scaler.get_scale() == 2.0 ** 15  # it grows after 2000 clean steps
    found = [step(it, overflow=True) for it in range(2, 18)]
    assert found[:15] == [None] * 15
    (it, _, _, norm), what = found[15]
    assert it == 17 and norm == INF and 'loss scale of 0.5' in what
