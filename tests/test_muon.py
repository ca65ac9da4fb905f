"""The toolkit's own optimizers for optimizer='muon': Muon (model.Muon, model.orthogonalize) against
torch.optim.Muon and against Muon's definition computed here in float64 (the same update, orthogonalised
in bfloat16 or float32), and AdamW (model.AdamW) against torch.optim.AdamW."""

import copy
import math
import re

import pytest
import torch

from conftest import TINY, run_script
from model import AdamW, Muon, orthogonalize

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


def adamw_steps(optimizer, params, steps=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        optimizer.step()


def test_adamw_is_torchs_update_and_state():
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(8, 4, generator=gen), torch.randn(4, generator=gen)]
    groups = lambda params: [{'params': params[:1], 'weight_decay': 0.1}, {'params': params[1:], 'weight_decay': 0.0}]
    ours, theirs, fused = ([torch.nn.Parameter(t.clone()) for t in start] for _ in range(3))
    opt = AdamW(groups(ours), lr=1e-2, betas=(0.9, 0.99))
    torch_opt = torch.optim.AdamW(groups(theirs), lr=1e-2, betas=(0.9, 0.99), foreach=False)
    fused_opt = torch.optim.AdamW(groups(fused), lr=1e-2, betas=(0.9, 0.99), fused=True)
    for optimizer, params in ((opt, ours), (torch_opt, theirs), (fused_opt, fused)):
        adamw_steps(optimizer, params)
    for a, b, c in zip(ours, theirs, fused):
        assert torch.equal(a, b)  # torch's single-tensor path, operation for operation
        torch.testing.assert_close(a, c, rtol=0, atol=1e-6)  # its fused kernel rounds otherwise, slightly
    # the state in torch's layout, both ways: each resumes the other's run where it stopped
    assert opt.state_dict()['state'].keys() == torch_opt.state_dict()['state'].keys() == {0, 1}
    resumed = AdamW(groups([torch.nn.Parameter(p.detach().clone()) for p in fused]), lr=1e-2, betas=(0.9, 0.99))
    resumed.load_state_dict(copy.deepcopy(fused_opt.state_dict()))
    adamw_steps(resumed, [p for g in resumed.param_groups for p in g['params']], steps=2, seed=1)
    adamw_steps(fused_opt, fused, steps=2, seed=1)
    for a, b in zip((p for g in resumed.param_groups for p in g['params']), fused):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    back = torch.optim.AdamW(groups([torch.nn.Parameter(p.detach().clone()) for p in ours]), lr=1e-2,
                             betas=(0.9, 0.99), foreach=False)
    back.load_state_dict(copy.deepcopy(opt.state_dict()))
    adamw_steps(back, [p for g in back.param_groups for p in g['params']], steps=2, seed=1)
    adamw_steps(opt, ours, steps=2, seed=1)
    for a, b in zip(ours, (p for g in back.param_groups for p in g['params'])):
        assert torch.equal(a, b)


def test_a_muon_run_does_not_import_torch_dynamo(project, tmp_path):
    # torch.optim's optimizers import torch._dynamo when first used: 1.5 s of a CPU speedrun's 14
    proc = run_script(project, '-X', 'importtime', 'train.py', 'config/train_shakespeare_char.py', *TINY,
                      '--optimizer=muon', '--max_iters=3', '--eval_interval=2', f'--out_dir={tmp_path / "out"}')
    imported = [line.split('|')[-1].strip() for line in proc.stderr.splitlines() if line.startswith('import time:')]
    assert 'torch.nn' in imported and 'torch._dynamo' not in imported  # the import log, and nothing of dynamo
    # the checkpoint holds both optimizers' states, and a resume loads them and goes on. (A resume does import
    # torch._dynamo: its check of the checkpoint's shapes builds the model on the meta device, where torch's
    # normal_ goes through a function wrapped to keep dynamo out.)
    ckpt = torch.load(tmp_path / 'out' / 'ckpt.pt', map_location='cpu', weights_only=True)
    muon_state, adamw_state = ckpt['optimizer']['muon'], ckpt['optimizer']['adamw']
    assert muon_state['state'] and all('momentum_buffer' in s for s in muon_state['state'].values())
    assert adamw_state['state'] and all({'exp_avg', 'exp_avg_sq'} <= set(s) for s in adamw_state['state'].values())
    proc = run_script(project, 'train.py', 'config/train_shakespeare_char.py', *TINY, '--optimizer=muon',
                      '--max_iters=4', '--eval_interval=2', '--init_from=resume', f'--out_dir={tmp_path / "out"}')
    assert re.search(r'^iter 3: loss ', proc.stdout, re.M) and not re.search(r'^iter [0-2]: ', proc.stdout, re.M)
