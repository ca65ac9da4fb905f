"""The toolkit's Muon (model.Muon, model.orthogonalize) against torch.optim.Muon and against Muon's
definition computed here in float64: the same update, orthogonalised in bfloat16 or float32."""

import copy
import math

import pytest
import torch

from model import Muon, orthogonalize

SHAPES = [(48, 16), (16, 16), (16, 64)]  # tall (orthogonalised through its transpose), square, wide
A, B, C = 3.4445, -4.7750, 2.0315  # the quintic's coefficients (Keller Jordan's Muon)


def reference_orthogonalize(G, steps=5):
    """Muon's Newton-Schulz iteration from its definition, in float64: the wide orientation, the
    Frobenius norm scaled to 1, then X <- a X + b (X X^T) X + c (X X^T)^2 X."""
    X = G.double()
    if X.size(0) > X.size(1):
        return reference_orthogonalize(G.T, steps).T
    X = X / max(X.norm().item(), 1e-7)
    for _ in range(steps):
        gram = X @ X.T
        X = A * X + B * gram @ X + C * gram @ gram @ X
    return X


def reference_muon(param, grads, lr, momentum, weight_decay):
    """param after one Muon step per gradient, in float64: momentum as an exponential average, its
    Nesterov look-ahead orthogonalised, decoupled weight decay, the step scaled by sqrt(max(1, rows / cols))."""
    p, buf = param.double(), torch.zeros_like(param, dtype=torch.float64)
    for g in grads:
        g = g.double()
        buf = momentum * buf + (1 - momentum) * g
        update = (1 - momentum) * g + momentum * buf
        p = p * (1 - lr * weight_decay) - lr * math.sqrt(max(1.0, p.size(0) / p.size(1))) * reference_orthogonalize(update)
    return p


def muon_steps(optimizer_class, param, grads, **kwargs):
    p = torch.nn.Parameter(param.clone())
    opt = optimizer_class([p], **kwargs)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


def random_case(shape, steps=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    param = 0.1 * torch.randn(shape, generator=gen)
    # gradients of low effective rank with noise, as a network's are, each step different
    grads = [torch.randn(shape[0], 4, generator=gen) @ torch.randn(4, shape[1], generator=gen)
             + 0.1 * torch.randn(shape, generator=gen) for _ in range(steps)]
    return param, grads


@pytest.mark.parametrize('shape', SHAPES)
def test_float32_orthogonalization_is_the_definition_within_float32_rounding(shape):
    _, grads = random_case(shape)
    exact = reference_orthogonalize(grads[0])
    tolerance = 100 * torch.finfo(torch.float32).eps  # 5 steps of a quintic map amplify float32's rounding a little
    assert (orthogonalize(grads[0], dtype=torch.float32).double() - exact).abs().max() < tolerance
    # the bound is tight enough to tell the precisions apart: bfloat16 misses it
    assert (orthogonalize(grads[0], dtype=torch.bfloat16).double() - exact).abs().max() > tolerance


@pytest.mark.parametrize('shape', SHAPES)
def test_muon_steps_follow_the_definition_momentum_included(shape):
    param, grads = random_case(shape, steps=4)
    lr, momentum, wd = 0.05, 0.9, 0.1
    ours, _ = muon_steps(Muon, param, grads, lr=lr, momentum=momentum, weight_decay=wd, ns_dtype=torch.float32)
    exact = reference_muon(param, grads, lr, momentum, wd)
    assert (ours.double() - exact).abs().max() < lr * 1e-4
    # momentum matters over these steps: the definition without it is far off
    assert (reference_muon(param, grads, lr, 0.0, wd) - exact).abs().max() > lr * 1e-2


@pytest.mark.skipif(not hasattr(torch.optim, 'Muon'), reason="torch.optim.Muon needs torch>=2.9")
@pytest.mark.parametrize('shape', SHAPES)
def test_bfloat16_muon_agrees_with_torch_muon_within_bfloat16_rounding(shape):
    param, grads = random_case(shape, steps=4, seed=1)
    lr = 0.05
    kwargs = dict(lr=lr, momentum=0.95, weight_decay=0.1)
    theirs, torch_opt = muon_steps(torch.optim.Muon, param, grads, adjust_lr_fn='original', **kwargs)
    ours, _ = muon_steps(Muon, param, grads, ns_dtype=torch.bfloat16, **kwargs)
    # each step's update is lr * scale * O with |O| < 1.5, rounded to bfloat16 (8 bits): 4 steps' worth of rounding
    scale = math.sqrt(max(1.0, shape[0] / shape[1]))
    assert (ours - theirs).abs().max() <= 4 * lr * scale * 1.5 * 2 ** -8
    # and a checkpoint of torch's Muon resumes in ours: the same state, the same next step
    resumed = Muon([torch.nn.Parameter(theirs.clone())], ns_dtype=torch.bfloat16, **kwargs)
    resumed.load_state_dict(copy.deepcopy(torch_opt.state_dict()))  # the state, not the tensors torch's goes on with
    p = resumed.param_groups[0]['params'][0]
    p.grad = grads[0].clone()
    resumed.step()
    torch_opt.param_groups[0]['params'][0].grad = grads[0].clone()
    torch_opt.step()
    assert (p.detach() - torch_opt.param_groups[0]['params'][0].detach()).abs().max() <= lr * scale * 1.5 * 2 ** -8


def test_weights_of_one_shape_are_orthogonalised_together_and_each_as_alone():
    cases = [random_case(shape, steps=3, seed=seed) for seed, shape in enumerate([(16, 64), (48, 16), (16, 64), (48, 16)])]
    params = [torch.nn.Parameter(param.clone()) for param, _ in cases]
    opt = Muon(params, lr=0.05, momentum=0.9, weight_decay=0.1, ns_dtype=torch.float32)
    for step in range(3):
        for p, (_, grads) in zip(params, cases):
            p.grad = grads[step].clone()
        opt.step()
    for p, (param, grads) in zip(params, cases):
        assert (p.detach().double() - reference_muon(param, grads, 0.05, 0.9, 0.1)).abs().max() < 0.05 * 1e-4
