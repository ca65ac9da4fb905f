import math

import pytest
import torch

import model as model_module
from conftest import tiny
from model import sample_next_token

UPSTREAM_NAMES = {
    'transformer.wte.weight', 'transformer.wpe.weight', 'transformer.ln_f.weight', 'lm_head.weight',
    *(f'transformer.h.{i}.{name}' for i in range(2) for name in (
        'ln_1.weight', 'attn.c_attn.weight', 'attn.c_proj.weight', 'ln_2.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')),
}


def test_shapes_and_upstream_parameter_names():
    model = tiny()
    idx = torch.randint(50, (3, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 10, 50) and loss.dim() == 0
    logits, loss = model(idx)
    assert logits.shape == (3, 1, 50) and loss is None
    assert set(model.state_dict()) == UPSTREAM_NAMES
    assert model.lm_head.weight is model.transformer.wte.weight  # tied


def test_bad_shape_is_a_value_error():
    with pytest.raises(ValueError, match='n_embd=30 is not divisible by n_head=4'):
        tiny(n_embd=30, n_head=4)


def test_bias_parameters_exist_only_with_bias():
    names = set(tiny(bias=True).state_dict())
    assert 'transformer.h.0.attn.c_attn.bias' in names and 'transformer.ln_f.bias' in names
    assert not any(n.endswith('.bias') for n in tiny(bias=False).state_dict())


def test_gpt2_initialisation():
    model = tiny(n_layer=4, n_embd=64, vocab_size=500, block_size=64)
    std = 0.02 / math.sqrt(2 * 4)
    assert abs(model.transformer.h[0].mlp.c_proj.weight.std().item() - std) < 0.2 * std
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002


def test_loss_at_init_is_near_ln_vocab():
    model = tiny(vocab_size=65)
    idx = torch.randint(65, (8, 16))
    _, loss = model(idx, torch.randint(65, (8, 16)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_one_batch_overfits():
    model = tiny()
    x, y = torch.randint(50, (4, 16)), torch.randint(50, (4, 16))
    opt = model.configure_optimizers(0.0, 3e-3, (0.9, 0.99), 'cpu', verbose=False)
    first = None
    for _ in range(150):
        _, loss = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_optimizer_decays_only_2d_tensors():
    model = tiny(bias=True)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu', verbose=False)
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and all(p.dim() >= 2 for p in decay['params'])
    assert no_decay['weight_decay'] == 0.0 and all(p.dim() < 2 for p in no_decay['params'])
    assert len(decay['params']) + len(no_decay['params']) == len(list(model.parameters()))


def test_num_params_and_flops_per_token():
    model = tiny()
    total = sum(p.numel() for p in model.parameters())
    assert model.get_num_params(non_embedding=False) == total
    n = total - 16 * 16  # without the position embeddings
    assert model.get_num_params() == n
    # 6N + 12 * layers * heads * head size * sequence length
    assert model.flops_per_token(16) == 6 * n + 12 * 2 * 2 * 8 * 16
    assert model.flops_per_token(8) == 6 * n + 12 * 2 * 2 * 8 * 8


def test_plain_attention_matches_scaled_dot_product_attention(monkeypatch):
    model = tiny()
    idx = torch.randint(50, (2, 16))
    expected, _ = model(idx, idx)
    monkeypatch.setattr(model_module, 'plain_attention_is_faster', lambda q, kv_len: True)
    got, _ = model(idx, idx)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('T', [16, 520])  # CPU bfloat16 attention takes the plain path up to 512 positions
def test_cpu_bfloat16_autocast_attention_matches_float32(T):
    model = tiny(block_size=T)
    idx = torch.randint(50, (2, T))
    expected, expected_loss = model(idx, idx)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got, loss = model(idx, idx)
        loss.backward()
    torch.testing.assert_close(got.float(), expected, atol=0.03, rtol=0.03)
    assert abs(loss.item() - expected_loss.item()) < 0.01
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_crop_block_size():
    model = tiny()
    model.crop_block_size(8)
    assert model.transformer.wpe.weight.shape == (8, 16) and model.config.block_size == 8
    logits, _ = model(torch.randint(50, (1, 8)))
    assert logits.shape == (1, 1, 50)
    with pytest.raises(AssertionError):
        model(torch.randint(50, (1, 9)))


def test_greedy_generation_is_deterministic_and_matches_argmax():
    model = tiny().eval()
    idx = torch.randint(50, (2, 3))
    a = model.generate(idx, 20, temperature=0)
    b = model.generate(idx, 20, temperature=0)
    assert torch.equal(a, b) and a.shape == (2, 23)
    # each greedy token is the argmax of the model's prediction for the sequence before it
    logits, _ = model(a[:, :10])
    assert torch.equal(a[:, 10], logits[:, -1].argmax(-1))


@pytest.mark.parametrize('temperature,top_k,top_p', [(0, None, None), (1.0, None, None), (0.8, 5, None), (1.0, None, 0.9)])
def test_kv_cache_gives_the_same_tokens(temperature, top_k, top_p):
    model = tiny(block_size=16).eval()
    idx = torch.randint(50, (2, 5))
    outputs = []
    for kv_cache in (True, False):
        torch.manual_seed(42)
        outputs.append(model.generate(idx, 30, temperature, top_k, top_p, kv_cache=kv_cache))  # outgrows block_size
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize('plain', [False, True])
def test_kv_cache_logits_match_full_forward(monkeypatch, plain):
    from model import KVCache
    monkeypatch.setattr(model_module, 'plain_attention_is_faster', lambda q, kv_len: plain)
    model = tiny().eval()
    idx = torch.randint(50, (2, 12))
    cache = KVCache(model.config, 2, 'cpu', torch.float32)
    with torch.no_grad():
        model(idx[:, :5], kv_cache=cache)
        cached_logits, _ = model(idx[:, 5:7], kv_cache=cache)  # two positions at once, with a past
        cached_last, _ = model(idx[:, 7:8], kv_cache=cache)
        full, _ = model(idx[:, :8], idx[:, :8])
    torch.testing.assert_close(cached_logits[:, -1], full[:, 6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached_last[:, -1], full[:, 7], atol=1e-5, rtol=1e-5)


def test_top_p_keeps_the_nucleus_only():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps the first two, top_p=0.85 the first three
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = torch.cat([sample_next_token(logits, 1.0, None, 0.7) for _ in range(2000)])
    assert set(draws.flatten().tolist()) == {0, 1}
    share = (draws == 0).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.04  # renormalised over the nucleus
    draws = torch.cat([sample_next_token(logits, 1.0, None, 0.85) for _ in range(2000)])
    assert set(draws.flatten().tolist()) == {0, 1, 2}
    assert set(sample_next_token(logits.repeat(50, 1), 1.0, None, 0.01).flatten().tolist()) == {0}
    draws = torch.cat([sample_next_token(logits, 1.0, None, 1.0) for _ in range(2000)])
    assert set(draws.flatten().tolist()) == {0, 1, 2, 3}


def test_top_k_and_greedy():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert sample_next_token(logits, 0).item() == 1
    torch.manual_seed(0)
    draws = torch.cat([sample_next_token(logits, 1.0, 2) for _ in range(500)])
    assert set(draws.flatten().tolist()) == {1, 2}


def test_cpu_bfloat16_autocast_runs_attention_in_float32_and_stays_close():
    model = tiny()
    idx = torch.randint(50, (2, 16))
    expected, _ = model(idx, idx)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
        loss.backward()
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), expected, atol=0.05, rtol=0.05)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_generation_caches_in_the_compute_dtype_and_decodes_without_cudnn_attention():
    """What each forward of generate_tokens sees: the cache's dtype (autocast's, not the float32
    weights'), and whether cuDNN's attention, which re-plans for every key length, may run."""
    model = tiny().eval()
    seen = []

    def look(module, args, kwargs):
        seen.append((kwargs['kv_cache'].layers[0][0].dtype, torch.backends.cuda.cudnn_sdp_enabled(),
                     torch.backends.cuda.flash_sdp_enabled()))
    hook = model.register_forward_pre_hook(look, with_kwargs=True)
    idx = torch.randint(50, (2, 3))
    list(model.generate_tokens(idx, 3))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        list(model.generate_tokens(idx, 3))
    hook.remove()
    assert seen == [(torch.float32, False, True)] * 3 + [(torch.bfloat16, False, True)] * 3
    assert torch.backends.cuda.cudnn_sdp_enabled()  # as it was, once generation is done
