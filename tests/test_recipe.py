"""The modern recipe's keys (rope, qk_norm, mlp_activation, tie_weights, logit_softcap, zero_init_proj,
optimizer='muon'): each does what it says in the model, and the scripts carry them through
checkpoints, resume, sampling with the KV cache, DDP, bench.py's MFU and the whole-split score."""

import math
import re

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import model as model_module
from conftest import TINY, iter_lines, run_script, tiny, torchrun
from model import GPTConfig, MuonAndAdamW
from nanogpt.evaluation import whole_split_loss
from nanogpt.files import read_metrics

RECIPE = dict(rope=True, qk_norm=True, mlp_activation='relu2', tie_weights=False, logit_softcap=10.0, zero_init_proj=True)
RECIPE_ARGS = [f'--{k}={v}' for k, v in RECIPE.items()] + ['--optimizer=muon', '--muon_learning_rate=0.05']


def perturbed(model):
    """The model with every parameter moved off its initial value, so zero-initialised parts count."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_defaults_are_gpt2():
    config = GPTConfig()
    assert (config.rope, config.qk_norm, config.mlp_activation, config.tie_weights, config.logit_softcap,
            config.zero_init_proj) == (False, False, 'gelu', True, 0.0, False)
    assert model_module.beyond_gpt2(vars(config)) == []
    assert sorted(model_module.beyond_gpt2(RECIPE)) == ['logit_softcap', 'mlp_activation', 'qk_norm', 'rope', 'tie_weights']


def test_rope_replaces_the_position_embeddings(monkeypatch):
    model = perturbed(tiny(rope=True))
    assert 'transformer.wpe.weight' not in model.state_dict() and 'rope_cos' not in model.state_dict()
    # attention scores depend on relative positions only: the same 4 tokens at positions 0-3 and 8-11
    # give the same scores, which learned absolute positions would not
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 12, 8), torch.randn(1, 1, 12, 8)
    q[..., 8:, :], k[..., 8:, :] = q[..., :4, :], k[..., :4, :]
    cos, sin = model_module.rotary_tables(12, 8)
    qr, kr = model_module.rotate(q, cos, sin), model_module.rotate(k, cos, sin)
    scores = qr @ kr.transpose(-2, -1)
    torch.testing.assert_close(scores[..., 8:, 8:], scores[..., :4, :4], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(scores[..., 8:, :4], scores[..., :4, :4], atol=1e-3)  # and they do depend on them
    idx = torch.randint(50, (2, 16))
    rotated = model(idx, idx)[0]
    monkeypatch.setattr(model_module, 'rotate', lambda x, cos, sin: x)
    assert not torch.allclose(model(idx, idx)[0], rotated, atol=1e-3)  # the model does turn its queries and keys


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    idx = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(0))
    for qk_norm in (True, False):
        model = tiny(qk_norm=qk_norm).eval()
        before = model(idx, idx)[0]
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_attn.weight[:32] *= 5.0  # the query and key rows, not the values
        after = model(idx, idx)[0]
        assert torch.allclose(before, after, atol=1e-5) == qk_norm


def test_relu2_mlp():
    model = tiny(mlp_activation='relu2')
    mlp = model.transformer.h[0].mlp
    x = torch.randn(3, 16)
    torch.testing.assert_close(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2))
    with pytest.raises(ValueError, match="mlp_activation='swish'"):
        tiny(mlp_activation='swish')


def test_untied_head_counts_as_a_matmul_and_the_embedding_does_not():
    tied, untied = tiny(), tiny(tie_weights=False)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert 'lm_head.weight' in untied.state_dict() and 'transformer.wte.weight' in untied.state_dict()
    # non-embedding parameters: the blocks, ln_f and the head (50 x 16), never the lookups
    blocks = sum(p.numel() for p in untied.transformer.h.parameters()) + 16
    assert untied.get_num_params() == blocks + 50 * 16 == tied.get_num_params()
    assert untied.get_num_params(non_embedding=False) == blocks + 2 * 50 * 16 + 16 * 16
    rope = tiny(rope=True, tie_weights=False)
    assert rope.flops_per_token(16) == 6 * (blocks + 50 * 16) + 12 * 2 * 2 * 8 * 16


def test_logit_softcap_bounds_the_logits():
    model = perturbed(tiny(logit_softcap=2.0))
    with torch.no_grad():
        model.lm_head.weight.mul_(100.0)  # logits far beyond the cap
    idx = torch.randint(50, (2, 16))
    logits, _ = model(idx, idx)
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9
    model.config.logit_softcap = 0.0
    assert model(idx, idx)[0].abs().max() > 20.0  # what the cap took down
    with pytest.raises(ValueError, match='logit_softcap'):
        tiny(logit_softcap=-1.0)


def test_zero_init_proj_starts_each_block_as_the_identity_and_predicts_uniformly():
    model = tiny(zero_init_proj=True, tie_weights=False)
    for name, p in model.named_parameters():
        assert (p.abs().sum() == 0) == (name.endswith('c_proj.weight') or name == 'lm_head.weight'), name
    idx = torch.randint(50, (2, 16))
    _, loss = model(idx, idx)
    assert loss.item() == pytest.approx(math.log(50), abs=1e-6)
    tied = tiny(zero_init_proj=True)  # a tied head is the embedding: it stays random
    assert tied.lm_head.weight.abs().sum() > 0


@pytest.mark.parametrize('plain', [False, True])
def test_kv_cache_gives_the_uncached_tokens_with_every_technique(monkeypatch, plain):
    monkeypatch.setattr(model_module, 'plain_attention_is_faster', lambda q, kv_len: plain)
    model = perturbed(tiny(**RECIPE)).eval()
    idx = torch.randint(50, (2, 5))
    outputs = []
    for kv_cache in (True, False):
        torch.manual_seed(42)
        outputs.append(model.generate(idx, 30, 1.0, None, None, kv_cache=kv_cache))  # outgrows block_size 16
    assert torch.equal(outputs[0], outputs[1])


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = tiny(**RECIPE, bias=True)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu', verbose=False, optimizer='muon',
                                     muon_learning_rate=0.05)
    assert isinstance(opt, MuonAndAdamW)
    named = dict(model.named_parameters())
    muon = {n for n, p in named.items() if any(p is q for q in opt.muon.param_groups[0]['params'])}
    assert muon == {n for n in named if n.startswith('transformer.h.') and n.endswith('.weight') and named[n].dim() == 2}
    assert len(muon) == 2 * 4  # c_attn, c_proj, c_fc, mlp.c_proj per block
    adamw = [p for g in opt.adamw.param_groups for p in g['params']]
    assert len(adamw) + len(muon) == len(named) and not any(p is named[n] for p in adamw for n in muon)
    assert opt.muon.param_groups[0]['lr_scale'] == pytest.approx(50.0)  # the schedule scales both alike
    assert all('lr_scale' not in g for g in opt.adamw.param_groups)  # AdamW's groups stay upstream's format


def test_muon_trains_through_a_grad_scaler_and_its_state_round_trips():
    model = perturbed(tiny(**RECIPE))
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), 'cpu', verbose=False, optimizer='muon')
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 10)  # enabled, as float16 training has it
    x, y = torch.randint(50, (4, 16)), torch.randint(50, (4, 16))
    losses = []
    for _ in range(30):
        _, loss = model(x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    state = opt.state_dict()
    fresh = model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), 'cpu', verbose=False, optimizer='muon')
    fresh.load_state_dict(state)
    m0 = next(iter(opt.muon.state.values()))['momentum_buffer']
    assert torch.equal(next(iter(fresh.muon.state.values()))['momentum_buffer'], m0)
    with pytest.raises(ValueError, match='not Muon and AdamW'):
        fresh.load_state_dict(model.configure_optimizers(0.0, 1e-2, (0.9, 0.95), 'cpu', verbose=False).state_dict())


def test_whole_split_loss_is_every_token_once():
    model = perturbed(tiny()).eval()
    data = np.random.default_rng(0).integers(0, 50, 16 * 5 + 7).astype(np.uint16)  # 5 windows and a short one
    loss, n = whole_split_loss(model, data, 16, 2, 'cpu', torch.autocast('cpu', enabled=False))
    assert n == len(data) - 1
    tokens = torch.from_numpy(data.astype(np.int64))
    total = 0.0
    for start in range(0, len(data) - 1, 16):  # window by window, token by token
        x = tokens[start:min(start + 16, len(data) - 1)]
        y = tokens[start + 1:start + 1 + len(x)]
        logits, _ = model(x[None], y[None])
        total += F.cross_entropy(logits[0], y, reduction='sum').item()
    assert loss == pytest.approx(total / n, abs=1e-6)


def test_recipe_end_to_end(project, tmp_path):
    """train.py with every technique: it learns, resumes exactly, samples with and without the KV
    cache alike, scores with benchmarks/evaluate.py, and two DDP ranks agree with one process."""
    common = ['train.py', 'config/train_shakespeare_char.py', *TINY, *RECIPE_ARGS, '--learning_rate=1e-2',
              '--warmup_iters=2', '--eval_interval=10', '--lr_decay_iters=30', '--cooldown_iters=10',
              '--always_save_checkpoint=True']
    straight = run_script(project, *common, f'--out_dir={tmp_path}/a', '--max_iters=30').stdout
    run_script(project, *common, f'--out_dir={tmp_path}/b', '--max_iters=20')
    resumed = run_script(project, *common, f'--out_dir={tmp_path}/b', '--max_iters=30', '--init_from=resume').stdout
    a = {int(m.group(1)): m.group(2) for m in iter_lines(straight)}
    assert len(a) == 30 and float(a[29]) < float(a[0]) - 0.5  # it learns
    assert {int(m.group(1)): m.group(2) for m in iter_lines(resumed)} == {i: a[i] for i in range(20, 30)}
    # the schedule: warmup over 2 iterations, constant, then straight down to min_lr over the last 10
    lrs = [(r['iter'], r['lr']) for r in read_metrics(tmp_path / 'a' / 'metrics.jsonl') if 'loss' in r]
    min_lr = 1e-4  # config/train_shakespeare_char.py's
    expected = [1e-2 * (it + 1) / 3 if it < 2 else min_lr + min(1.0, (30 - it) / 10) * (1e-2 - min_lr) for it, _ in lrs]
    assert [lr for _, lr in lrs] == pytest.approx(expected, rel=1e-12) and len(lrs) == 30
    ckpt = torch.load(tmp_path / 'a' / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert {k: ckpt['model_args'][k] for k in RECIPE} == RECIPE
    assert set(ckpt['optimizer']) == {'muon', 'adamw'} and ckpt['config']['optimizer'] == 'muon'
    adamw_lr, muon_lr = (ckpt['optimizer'][k]['param_groups'][0]['lr'] for k in ('adamw', 'muon'))
    assert adamw_lr > 0 and muon_lr == pytest.approx(adamw_lr * 0.05 / 1e-2)  # one schedule, two learning rates

    texts = []
    for kv_cache in (True, False):
        proc = run_script(project, 'sample.py', f'--out_dir={tmp_path}/a', '--num_samples=1', '--max_new_tokens=40',
                          '--device=cpu', '--temperature=0', f'--kv_cache={kv_cache}')
        texts.append(''.join(l for l in proc.stdout.splitlines(True) if not l.startswith('Overriding')))
    assert texts[0] == texts[1] and len(texts[0].splitlines()[-1]) > 0

    proc = run_script(project, 'benchmarks/evaluate.py', f'--out_dir={tmp_path}/a', '--device=cpu')
    m = re.match(r'^val loss (\d+\.\d{4}) over 111,539 tokens, \d\.\d{4} bits per byte over 111,539 bytes$',
                 proc.stdout.strip().splitlines()[-1])
    assert m and abs(float(m.group(1)) - float(a[29])) < 0.5

    # two DDP ranks equal one process with two micro-steps, Muon's updates included. Two iterations:
    # in the first only the zero-initialised head has a gradient
    one = ['train.py', 'config/train_shakespeare_char.py', *TINY, *RECIPE_ARGS, '--max_iters=2', '--eval_interval=2',
           '--gradient_accumulation_steps=2', '--learning_rate=1e-2', '--warmup_iters=0', '--always_save_checkpoint=True']
    torchrun(project, *one, f'--out_dir={tmp_path}/ddp')
    run_script(project, *one, f'--out_dir={tmp_path}/single')
    ddp = torch.load(tmp_path / 'ddp' / 'ckpt.pt', map_location='cpu', weights_only=True)['model']
    single = torch.load(tmp_path / 'single' / 'ckpt.pt', map_location='cpu', weights_only=True)['model']
    assert single['transformer.h.0.mlp.c_proj.weight'].abs().max() > 0  # zero at the start: Muon's second step moved it
    for k, v in single.items():
        torch.testing.assert_close(ddp[k], v, atol=1e-5, rtol=1e-4)


def test_recipe_refusals(project, tmp_path, monkeypatch):
    def error_of(*args):
        proc = run_script(project, *args, check=False)
        assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr
        return lines[0]

    train = ['train.py', 'config/train_shakespeare_char.py', *TINY, f'--out_dir={tmp_path}/out', '--max_iters=2']
    run_script(project, *train, '--eval_interval=2', '--rope=True')
    assert "resume with --optimizer=adamw" in error_of(*train, '--init_from=resume', '--max_iters=4', '--optimizer=muon')
    proc = run_script(project, *train[:-1], '--init_from=resume', '--max_iters=4', '--eval_interval=2', '--rope=False',
                      '--qk_norm=True')
    assert proc.stderr.strip() == ("warning: the resumed model keeps the checkpoint's rope=True, qk_norm=False, not "
                                   "rope=False, qk_norm=True as configured")
    saved = torch.load(tmp_path / 'out' / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert saved['iter_num'] == 4 and saved['config']['rope'] is True and saved['config']['qk_norm'] is False
    proc = torchrun(project, *train[:-2], f'--out_dir={tmp_path}/fsdp', '--fsdp=True', '--optimizer=muon',
                    '--gradient_accumulation_steps=2', check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("error: optimizer='muon' needs whole weight matrices on every process") == 1


def test_bench_counts_the_flops_of_the_model_it_runs(project):
    args = ['bench.py', '--device=cpu', '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32',
            '--batch_size=4', '--dataset=shakespeare_char', '--burnin=1', '--num_steps=3', '--peak_flops=1e11',
            '--tie_weights=False', '--rope=True', '--optimizer=muon']
    last = run_script(project, *args).stdout.strip().splitlines()[-1]
    m = re.match(r'^time per iteration: (\d+\.\d{2})ms, MFU: (\d+\.\d{2})%, (\d+) tokens/s$', last)
    assert m, last
    # counted here from the shape: the blocks (12 C^2 each, no biases), ln_f, and the untied head 65 x C
    C, L, T = 32, 2, 32
    n = L * (12 * C * C + 2 * C) + C + 65 * C
    expected = (6 * n + 12 * L * 2 * (C // 2) * T) * 4 * T / (float(m.group(1)) / 1000) / 1e11 * 100
    assert float(m.group(2)) == pytest.approx(expected, rel=0.01, abs=0.01)


def reference_forward(model, idx, targets):
    """The model's logits and loss computed here from each technique's definition, with its weights but
    none of model.py's code: rotary embeddings (RoFormer, Su et al. 2021: each pair of a head's channels,
    here channel j and channel j + head_size/2, read as one complex number, is multiplied by e^(i p theta_j)
    at position p, theta_j = 10000^(-2j/head_size)), QK-norm (each head's query and key divided by its root
    mean square, the values untouched), ReLU squared, and soft-capping (logits c * tanh(logits / c), the
    loss taken on those)."""
    cfg, sd = model.config, {k: v.detach() for k, v in model.state_dict().items()}
    B, T = idx.shape
    C, H = cfg.n_embd, cfg.n_head
    hs = C // H

    def layer_norm(x, name):
        return F.layer_norm(x, (C,), sd[f'{name}.weight'], sd.get(f'{name}.bias'), 1e-5)

    def linear(x, name):
        y = x @ sd[f'{name}.weight'].T
        return y + sd[f'{name}.bias'] if f'{name}.bias' in sd else y

    def rotated(t):  # (B, H, T, hs)
        theta = 10000.0 ** (-2 * torch.arange(hs // 2, dtype=torch.float64) / hs)
        turn = torch.polar(torch.ones(T, hs // 2, dtype=torch.float64), torch.arange(T)[:, None] * theta)
        z = torch.complex(t[..., :hs // 2].double(), t[..., hs // 2:].double()) * turn
        return torch.cat((z.real, z.imag), dim=-1).float()

    def rms_normed(t):
        return t / torch.sqrt(t.pow(2).mean(dim=-1, keepdim=True) + torch.finfo(t.dtype).eps)

    x = sd['transformer.wte.weight'][idx]
    if not cfg.rope:
        x = x + sd['transformer.wpe.weight'][:T]
    for i in range(cfg.n_layer):
        block = f'transformer.h.{i}'
        q, k, v = (t.view(B, T, H, hs).transpose(1, 2)
                   for t in linear(layer_norm(x, f'{block}.ln_1'), f'{block}.attn.c_attn').split(C, dim=-1))
        if cfg.qk_norm:
            q, k = rms_normed(q), rms_normed(k)
        if cfg.rope:
            q, k = rotated(q), rotated(k)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(hs)).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(),
                                                                      float('-inf'))
        x = x + linear((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, C), f'{block}.attn.c_proj')
        h = linear(layer_norm(x, f'{block}.ln_2'), f'{block}.mlp.c_fc')
        h = F.relu(h) ** 2 if cfg.mlp_activation == 'relu2' else 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + linear(h, f'{block}.mlp.c_proj')
    logits = layer_norm(x, 'transformer.ln_f') @ sd['lm_head.weight'].T
    if cfg.logit_softcap:
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


@pytest.mark.parametrize('technique', [dict(rope=True), dict(qk_norm=True), dict(logit_softcap=3.0), RECIPE])
def test_each_technique_computes_its_definition(technique):
    """Not only that a key reaches the model: the model computes, to float32 rounding, what the reference
    written from the definitions computes, with weights far from their initial values (soft-capping: logits
    well beyond the cap, so that leaving it out anywhere would show)."""
    model = perturbed(tiny(**technique)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    idx = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(50, (2, 16), generator=torch.Generator().manual_seed(2))
    logits, loss = model(idx, targets)
    want_logits, want_loss = reference_forward(model, idx, targets)
    assert want_logits.abs().max() > 2 * technique.get('logit_softcap', 10.0) / 3  # the cap, where there is one, is met
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5)
