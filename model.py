"""
The GPT language model, all of it in this one file.

Parameter names follow upstream nanoGPT (and so GPT-2's layout), so checkpoints move between the two.
References: OpenAI's GPT-2 (https://github.com/openai/gpt-2/blob/master/src/model.py) and the
Hugging Face GPT-2 layout, which GPT.from_pretrained reads without the transformers package.
"""

import inspect
import json
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nn.LayerNorm has no bias=False on older torch)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


def rms_norm(x):
    """x divided by its root mean square over the last dimension (no learned scale)."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(block_size, head_size, base=10000.0):
    """cos and sin of the rotary position embedding's angles (RoFormer, Su et al. 2021): position p
    turns the i-th pair of a head's channels by p * base^(-2i/head_size). Shape (block_size, head_size / 2)."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    """Rotary position embedding of queries or keys x (B, nh, T, hs) at the positions of cos and sin (T, hs / 2):
    the two halves of each head are the two coordinates of hs / 2 planes, each turned by its angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def plain_attention_is_faster(q, kv_len):
    """torch's fused attention is several times slower in bfloat16 than in float32 on a CPU; up to 512
    positions the plain path, on bfloat16 batched matmuls, is faster than either (about 2x, measured
    on a Zen 4 CPU with torch 2.13). Everywhere else the fused kernels win."""
    return q.device.type == 'cpu' and q.dtype == torch.bfloat16 and kv_len <= 512


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm

    def forward(self, x, layer_cache=None, rotary=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.qk_norm:  # attention logits bounded by the head size, whatever the weights grow to
            q, k = rms_norm(q), rms_norm(k)
        if rotary is not None:  # positions enter here, as angles, rather than as embeddings added to x
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        start = 0
        if layer_cache is not None:
            # generation: keep this step's keys and values, attend over every position so far
            k_buf, v_buf, start = layer_cache
            k_buf[:, :, start:start + T] = k
            v_buf[:, :, start:start + T] = v
            k, v = k_buf[:, :, :start + T], v_buf[:, :, :start + T]
        # the new queries sit at positions start..start+T-1 and may see keys up to their own position
        causal = start == 0 and T > 1
        mask = None
        if start > 0 and T > 1:
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        if plain_attention_is_faster(q, k.size(2)):
            # attention written out: scores, causal mask, softmax, weighted sum of the values
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            if causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                att = att.masked_fill(~mask, float('-inf'))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v
        else:
            # fused attention kernels (flash attention on a GPU)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.relu2 = config.mlp_activation == 'relu2'
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.c_fc(x)
        x = F.relu(x).square() if self.relu2 else self.gelu(x)  # ReLU squared (So et al. 2021, Primer)
        return self.dropout(self.c_proj(x))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, layer_cache=None, rotary=None):
        x = x + self.attn(self.ln_1(x), layer_cache, rotary)
        x = x + self.mlp(self.ln_2(x))
        return x


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257, padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # bias in Linears and LayerNorms, as GPT-2; False is a little better and faster
    # the modern recipe (docs/recipes.md); every default is GPT-2's own
    rope: bool = False  # rotary position embeddings in attention, instead of learned ones added to the input (wpe)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys
    mlp_activation: str = 'gelu'  # 'gelu', or 'relu2': ReLU squared
    tie_weights: bool = True  # lm_head shares its weights with the token embedding (wte)
    logit_softcap: float = 0.0  # logits become softcap * tanh(logits / softcap); 0 is off
    zero_init_proj: bool = False  # the projections into the residual stream (and an untied lm_head) start at zero


MLP_ACTIVATIONS = ('gelu', 'relu2')
GPT2_ARCHITECTURE = dict(rope=False, qk_norm=False, mlp_activation='gelu', tie_weights=True, logit_softcap=0.0)


def beyond_gpt2(model_args):
    """The keys of model_args (a dict of GPTConfig's fields) in which it differs from GPT-2's
    architecture, which GPT-2's weights and the Hugging Face GPT-2 layout assume. zero_init_proj is
    only a starting point, and not one of them."""
    return [k for k, v in GPT2_ARCHITECTURE.items() if model_args.get(k, v) != v]


def check_config(config):
    """ValueError for a GPTConfig no model can be built from."""
    if config.n_embd % config.n_head:
        raise ValueError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
    if config.mlp_activation not in MLP_ACTIVATIONS:
        raise ValueError(f"mlp_activation={config.mlp_activation!r}: use {' or '.join(map(repr, MLP_ACTIVATIONS))}")
    if not config.logit_softcap >= 0:
        raise ValueError(f"logit_softcap must be 0 (off) or positive, got {config.logit_softcap}")
    if config.rope and (config.n_embd // config.n_head) % 2:
        raise ValueError(f"rope=True turns pairs of channels: the head size n_embd/n_head={config.n_embd // config.n_head} must be even")
    if config.qk_norm and not hasattr(F, 'rms_norm'):
        raise ValueError("qk_norm=True needs torch>=2.4 (torch.nn.functional.rms_norm)")


class KVCache:
    """Keys and values of every position generated so far, one pair of buffers per layer."""

    def __init__(self, config, batch_size, device, dtype):
        shape = (batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.layers = [(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))
                       for _ in range(config.n_layer)]
        self.length = 0  # positions filled


def compute_dtype(device, weights_dtype):
    """The dtype the keys and values come out in: autocast's where it is on for this device (a float32
    cache would take twice the memory, and attention would cast all of it at every token), else the
    weights'."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except (TypeError, AttributeError):  # torch < 2.4 cannot be asked per device: the weights' dtype
        pass
    return weights_dtype


def decoding_attention():
    """Attention kernels for generation: any that are on except cuDNN's, which builds an execution plan
    for each new key length (reportedly tens of ms each), while decoding grows the key length by one
    per token; torch >= 2.11 prefers cuDNN on Hopper. Elsewhere than CUDA this changes nothing."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3, which prefers no cuDNN attention anyway
        return nullcontext()
    kernels = [kernel for kernel, enabled in ((SDPBackend.FLASH_ATTENTION, torch.backends.cuda.flash_sdp_enabled()),
                                              (SDPBackend.EFFICIENT_ATTENTION, torch.backends.cuda.mem_efficient_sdp_enabled()),
                                              (SDPBackend.MATH, torch.backends.cuda.math_sdp_enabled())) if enabled]
    return sdpa_kernel(kernels) if kernels else nullcontext()  # none: the user chose cuDNN alone


# Hugging Face GPT-2 checkpoints store these as Conv1D weights: (in, out) instead of Linear's (out, in)
CONV1D_WEIGHTS = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# GPT-2's sizes (124M, 350M, 774M and 1558M parameters): n_layer, n_head, n_embd; each has 1024 positions,
# biases and 50257 tokens. from_pretrained reads them from config.json; a script planning memory before
# it loads anything reads them here
GPT2_SHAPES = {'gpt2': (12, 12, 768), 'gpt2-medium': (24, 16, 1024), 'gpt2-large': (36, 20, 1280),
               'gpt2-xl': (48, 25, 1600)}


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        check_config(config)  # the one check every way of building a model passes through
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **({} if config.rope else {'wpe': nn.Embedding(config.block_size, config.n_embd)}),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying (Press & Wolf, 2017)
        if config.rope:  # not parameters, and not saved: a function of the shape
            cos, sin = rotary_tables(config.block_size, config.n_embd // config.n_head)
            self.register_buffer('rope_cos', cos, persistent=False)
            self.register_buffer('rope_sin', sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by the depth
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.zero_init_proj:  # each block starts as the identity, the untied head at uniform predictions
            for name, p in self.named_parameters():
                if name.endswith('c_proj.weight') or (name == 'lm_head.weight' and not config.tie_weights):
                    torch.nn.init.zeros_(p)

    def get_num_params(self, non_embedding=True):
        """Parameter count. non_embedding leaves out the embeddings, which are looked up rather than
        multiplied: the position embeddings, and the token embeddings unless they are also the
        weights of lm_head (tie_weights)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if 'wpe' in self.transformer:
                n_params -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n_params -= self.transformer.wte.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, kv_cache=None):
        """Returns (logits, loss). Without targets only the last position's logits are computed."""
        b, t = idx.size()
        start = kv_cache.length if kv_cache is not None else 0
        assert start + t <= self.config.block_size, \
            f"cannot forward a sequence of length {start + t}, block size is only {self.config.block_size}"
        x = self.transformer.wte(idx)
        rotary = None
        if self.config.rope:
            rotary = (self.rope_cos[start:start + t], self.rope_sin[start:start + t])
        else:
            x = x + self.transformer.wpe(torch.arange(start, start + t, dtype=torch.long, device=idx.device))
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if kv_cache is None else (*kv_cache.layers[i], start), rotary)
        x = self.transformer.ln_f(x)
        if kv_cache is not None:
            kv_cache.length += t
        if targets is None:
            x = x[:, [-1], :]  # only the last position's logits, keeping the time dimension
        logits = self.lm_head(x)
        if self.config.logit_softcap:  # in float32: tanh saturates early in bfloat16
            logits = self.config.logit_softcap * torch.tanh(logits.float() / self.config.logit_softcap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Model surgery for a smaller context, e.g. GPT-2's 1024 down to 256."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if self.config.rope:
            self.rope_cos, self.rope_sin = self.rope_cos[:block_size], self.rope_sin[:block_size]
        else:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6N for the matmuls forward and backward plus 12*L*H*Q*T for
        attention (PaLM, appendix B), N the parameters of the matmuls (get_num_params()), T the trained
        sequence length. Rotary embeddings, norms, activations and soft-capping are elementwise: left out."""
        cfg = self.config
        L, H, Q = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head
        return 6 * self.get_num_params() + 12 * L * H * Q * seq_len

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """GPT-2 weights from a Hugging Face GPT-2 directory (config.json + model.safetensors), or
        one of 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' through huggingface_hub's cache.
        Only dropout can be overridden; the rest is the checkpoint's. Bad arguments and files raise
        ValueError, a missing package ImportError."""
        override_args = override_args or {}
        unknown = [k for k in override_args if k != 'dropout']
        if unknown:
            raise ValueError(f"from_pretrained can only override dropout, not {', '.join(unknown)}")
        if os.path.isdir(name_or_path):
            config_path, weights_path = hf_directory_files(name_or_path)
        elif name_or_path in GPT2_SHAPES:
            config_path, weights_path = (download_gpt2(name_or_path, f) for f in ('config.json', 'model.safetensors'))
        else:
            raise ValueError(f"{name_or_path!r} is neither a directory with config.json and model.safetensors "
                             f"nor one of {', '.join(GPT2_SHAPES)}")
        config_args = read_hf_config(config_path)
        config_args['bias'] = True  # GPT-2 checkpoints always have biases
        config_args['dropout'] = override_args.get('dropout', 0.0)
        print(f"loading GPT-2 weights from {weights_path}")
        model = cls(GPTConfig(**config_args))
        model.load_state_dict(hf_to_nanogpt(read_safetensors(weights_path), model.state_dict()))
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, verbose=True, optimizer='adamw',
                             muon_learning_rate=0.02, muon_momentum=0.95, muon_ns_dtype=torch.bfloat16):
        """AdamW with weight decay on the 2-D tensors (matmul weights, embeddings) only; the fused
        kernel where this torch has one for the device. optimizer='muon' hands the 2-D weights inside
        the blocks to Muon instead, at muon_learning_rate (with the same weight decay), orthogonalising
        in muon_ns_dtype, and keeps AdamW for the embeddings, lm_head, norms and biases (this file's
        AdamW, which computes what torch's does, without importing torch._dynamo)."""
        if optimizer not in ('adamw', 'muon'):
            raise ValueError(f"optimizer={optimizer!r}: use 'adamw' or 'muon'")
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        muon = [p for n, p in params if optimizer == 'muon' and p.dim() == 2 and n.startswith('transformer.h.')]
        muon_ids = {id(p) for p in muon}
        decay = [p for n, p in params if p.dim() >= 2 and id(p) not in muon_ids]
        no_decay = [p for n, p in params if p.dim() < 2]
        groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
        if verbose:
            if muon:
                print(f"num Muon parameter tensors: {len(muon)}, with {sum(p.numel() for p in muon):,} parameters")
            print(f"num decayed parameter tensors: {len(decay)}, with {sum(p.numel() for p in decay):,} parameters")
            print(f"num non-decayed parameter tensors: {len(no_decay)}, with {sum(p.numel() for p in no_decay):,} parameters")
        if not muon:
            fused = 'fused' in inspect.signature(torch.optim.AdamW).parameters and device_type in ('cuda', 'cpu')
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({'fused': True} if fused else {}))
        # lr_scale: train.py's schedule sets each group's lr to the scheduled learning_rate times it
        return MuonAndAdamW(Muon([{'params': muon, 'lr_scale': muon_learning_rate / learning_rate}],
                                 lr=muon_learning_rate, weight_decay=weight_decay, momentum=muon_momentum,
                                 ns_dtype=muon_ns_dtype), AdamW(groups, lr=learning_rate, betas=betas))

    @torch.no_grad()
    def generate_tokens(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, kv_cache=True,
                        n_tokens=None):
        """Yields one (b, 1) tensor of new tokens at a time, each conditioned on idx and those before it.
        With kv_cache each step feeds only the newest token; once the sequence outgrows block_size the
        cache is rebuilt from the last block_size tokens at each step, as the uncached path sees them.
        n_tokens: only ids below it are drawn (a padded vocabulary's extra ids stand for no token)."""
        block_size = self.config.block_size
        dtype = compute_dtype(idx.device, self.lm_head.weight.dtype)
        cache = KVCache(self.config, idx.size(0), idx.device, dtype) if kv_cache else None
        for _ in range(max_new_tokens):
            if cache is not None and 0 < cache.length < block_size:
                context = idx[:, -1:]
            else:
                if cache is not None:
                    cache.length = 0
                context = idx[:, -block_size:]
            with decoding_attention():
                logits, _ = self(context, kv_cache=cache)
            idx_next = sample_next_token(logits[:, -1, :n_tokens], temperature, top_k, top_p)
            idx = torch.cat((idx, idx_next), dim=1)
            yield idx_next

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, kv_cache=True):
        """idx (b, t) of token ids, extended by max_new_tokens tokens. temperature 0 is greedy."""
        new = list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, kv_cache))
        return torch.cat([idx] + new, dim=1)


def orthogonalize(G, steps=5, dtype=torch.bfloat16, eps=1e-7):
    """G (a matrix, or a stack of matrices of one shape) with its singular values pushed toward 1 (an
    approximate U V^T of G's SVD, far cheaper): G scaled to a Frobenius norm of 1, so that no singular
    value exceeds 1, then steps of the quintic Newton-Schulz iteration X <- aX + (bA + cA^2)X, A = XX^T,
    whose coefficients raise small singular values fast and leave the rest between about 0.7 and 1.13
    (Keller Jordan's Muon; the same coefficients, steps and normalisation as torch.optim.Muon). In
    dtype: bfloat16 where the device computes it natively, float32 elsewhere (emulated bfloat16 is
    about 20x slower on such a CPU)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(dtype).reshape(-1, *G.shape[-2:])  # a stack: one batched product for all its matrices
    tall = G.size(-2) > G.size(-1)
    if tall:  # XX^T is then the smaller of the two Gram matrices
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    return (X.mT if tall else X).reshape(G.shape)


class Optimizer:
    """What training uses of torch.optim.Optimizer, for the optimizers written here: param_groups,
    state, zero_grad, and state_dict and load_state_dict in torch's format (so the states of torch's
    Muon and AdamW load here). Not torch's class itself: its first use imports torch._dynamo, about
    1.5 s of the CPU speedrun's 14, in a run that compiles nothing."""

    def __init__(self, params, defaults):
        params = list(params)
        groups = params if isinstance(params[0], dict) else [{'params': params}]
        self.param_groups = [{**defaults, **group, 'params': list(group['params'])} for group in groups]
        self.state = {}  # parameter -> its state

    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            for p in group['params']:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def state_dict(self):
        """torch's layout: the parameters by their index in the groups, the state's tensors themselves."""
        index = {id(p): i for i, p in enumerate(p for group in self.param_groups for p in group['params'])}
        return {'state': {index[id(p)]: state for p, state in self.state.items()},
                'param_groups': [{**group, 'params': [index[id(p)] for p in group['params']]}
                                 for group in self.param_groups]}

    def load_state_dict(self, state_dict):
        """A copy of the saved state, each tensor on its parameter's device (and in its dtype, but for
        AdamW's step count, which stays a float32 on the CPU), and the saved groups' settings."""
        saved = state_dict['param_groups']
        if [len(g['params']) for g in saved] != [len(g['params']) for g in self.param_groups]:
            raise ValueError("the saved optimizer state has other parameter groups than this optimizer")
        params = {i: p for old, new in zip(saved, self.param_groups) for i, p in zip(old['params'], new['params'])}
        self.state = {params[i]: {k: (v.to('cpu', torch.float32) if k == 'step' else v.to(params[i])).clone()
                                  for k, v in state.items()} for i, state in state_dict['state'].items()}
        for group, old in zip(self.param_groups, saved):
            group.update({k: v for k, v in old.items() if k != 'params'})


class AdamW(Optimizer):
    """torch.optim.AdamW's update, as its single-tensor path computes it: decoupled weight decay, the
    moments' exponential averages, bias-corrected, and torch's state (step, exp_avg, exp_avg_sq)."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (beta1, beta2) = group['lr'], group['betas']
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.state.setdefault(p, {})
                if not state:
                    state.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(p),
                                 exp_avg_sq=torch.zeros_like(p))
                state['step'] += 1
                step = state['step'].item()  # on the CPU: no wait for the device
                p.mul_(1 - lr * group['weight_decay'])
                state['exp_avg'].lerp_(p.grad, 1 - beta1)
                state['exp_avg_sq'].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = (state['exp_avg_sq'].sqrt() / math.sqrt(1 - beta2 ** step)).add_(group['eps'])
                p.addcdiv_(state['exp_avg'], denom, value=-lr / (1 - beta1 ** step))


class Muon(Optimizer):
    """Muon (Keller Jordan, 2024) for 2-D weights: Nesterov momentum, each update orthogonalised
    (orthogonalize, in ns_dtype), decoupled weight decay, and the step scaled by sqrt(max(1, rows /
    cols)). The update is torch.optim.Muon's with adjust_lr_fn='original', and so is the state
    ('momentum_buffer' per weight), so checkpoints saved with torch's Muon resume here; torch's
    orthogonalises in bfloat16 whatever the device, which a CPU without native bfloat16 emulates slowly.
    The weights of one shape (the same layer of every block) are orthogonalised together, as one stack."""

    def __init__(self, params, lr, momentum=0.95, weight_decay=0.0, nesterov=True, ns_steps=5, ns_dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                      ns_steps=ns_steps))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum = group['lr'], group['momentum']
            by_shape = {}
            for p in group['params']:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for params in by_shape.values():
                updates = []
                for p in params:
                    state = self.state.setdefault(p, {})
                    if 'momentum_buffer' not in state:
                        state['momentum_buffer'] = torch.zeros_like(p.grad)
                    buf = state['momentum_buffer']
                    buf.lerp_(p.grad, 1 - momentum)  # an average of the gradients, weighted toward the recent
                    updates.append(p.grad.lerp(buf, momentum) if group['nesterov'] else buf)
                updates = orthogonalize(torch.stack(updates), group['ns_steps'], self.ns_dtype)
                for p, update in zip(params, updates):
                    p.mul_(1 - lr * group['weight_decay'])
                    p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)


class MuonAndAdamW:
    """Muon and AdamW stepped as one optimizer, with the parts of torch.optim.Optimizer that training
    uses: param_groups (both optimizers'), step, zero_grad, state_dict and load_state_dict (which
    GradScaler's step and unscale_ work through too)."""

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):  # a property: load_state_dict replaces the optimizers' group lists
        return self.muon.param_groups + self.adamw.param_groups

    def step(self, closure=None):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {'muon': self.muon.state_dict(), 'adamw': self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        if set(state_dict) != {'muon', 'adamw'}:
            raise ValueError("this optimizer state is not Muon and AdamW's: resume with the optimizer it was saved with")
        self.muon.load_state_dict(state_dict['muon'])
        self.adamw.load_state_dict(state_dict['adamw'])


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None):
    """One token per row of logits (b, vocab): greedy at temperature 0, else sampled from the
    softmax at that temperature, restricted to the top_k tokens and to the smallest set whose
    probability reaches top_p (nucleus sampling)."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits.float()
    # the largest logit taken out first (softmax does not change): a tiny temperature then makes the others
    # -inf and the largest 0, where it would make every logit infinite, and the probabilities NaN
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k > 0:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the ones ranked above it already reach top_p; the first always stays
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float('-inf'))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1)


def download_gpt2(name, filename):
    """Path of one file of a GPT-2 size (config.json, model.safetensors), from huggingface_hub's cache or the hub."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ImportError("loading pretrained GPT-2 needs huggingface_hub: pip install huggingface_hub safetensors")
    try:
        return hf_hub_download(repo_id=f"openai-community/{name}", filename=filename)
    except Exception as e:
        raise ValueError(f"could not get {name}'s {filename} from the Hugging Face hub ({type(e).__name__}); "
                         f"offline, pass init_from=a directory holding config.json and model.safetensors")


def hf_directory_files(path):
    """config.json and model.safetensors of a Hugging Face GPT-2 directory; ValueError where one is missing."""
    files = tuple(os.path.join(path, name) for name in ('config.json', 'model.safetensors'))
    for file in files:
        if not os.path.isfile(file):
            raise ValueError(f"{path} is not a Hugging Face GPT-2 directory: {os.path.basename(file)} is missing")
    return files


def read_hf_config(config_path):
    """GPTConfig's n_layer, n_head, n_embd, block_size and vocab_size from a Hugging Face GPT-2 config.json;
    ValueError where it has no sensible ones."""
    try:
        with open(config_path) as f:
            hf = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: brackets nested thousands deep
        raise ValueError(f"cannot read {config_path}: {e}")
    keys = dict(n_layer='n_layer', n_head='n_head', n_embd='n_embd', block_size='n_positions', vocab_size='vocab_size')
    if missing := [hf_key for hf_key in keys.values() if not isinstance(hf, dict) or hf_key not in hf]:
        raise ValueError(f"{config_path} lacks {missing[0]}, which a GPT-2 config.json has")
    config_args = {key: hf[hf_key] for key, hf_key in keys.items()}
    if wrong := [keys[k] for k, v in config_args.items() if type(v) is not int or not 0 < v < 2**31]:
        raise ValueError(f"{config_path} has no sensible {', '.join(wrong)} (a positive integer below 2**31)")
    beyond = [what for what, found in (('ReLU squared', hf.get('activation_function') == 'relu2'),
                                       ('an untied head', hf.get('tie_word_embeddings') is False)) if found]
    if beyond:  # export_hf.py writes the recipe's MLP and head in GPT-2's form too
        raise ValueError(f"{config_path} is a GPT-2 with {' and '.join(beyond)}, not GPT-2's architecture, which "
                         f"this loader reads; load it with transformers, or resume from its checkpoint")
    return config_args


def read_safetensors(path):
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError("reading model.safetensors needs safetensors: pip install safetensors")
    try:
        return load_file(path)
    except Exception as e:
        raise ValueError(f"cannot read {path}: {e}")


def hf_to_nanogpt(hf_sd, sd):
    """Hugging Face GPT-2 tensors (with or without the 'transformer.' prefix) renamed and shaped
    as the nanoGPT state dict sd; every name and shape checked."""
    out = {}
    for k, v in hf_sd.items():
        if k.endswith('.attn.bias') or k.endswith('.attn.masked_bias'):
            continue  # causal-mask buffers, not weights
        name = k if k.startswith('transformer.') or k.startswith('lm_head.') else 'transformer.' + k
        if name not in sd:
            raise ValueError(f"unexpected tensor {k} in the pretrained weights")
        if name.endswith(CONV1D_WEIGHTS) and v.dim() == 2:  # other shapes fail the check below
            v = v.t()
        if v.shape != sd[name].shape:
            raise ValueError(f"pretrained tensor {k} has shape {tuple(v.shape)}, the model expects {tuple(sd[name].shape)}")
        out[name] = v
    out.setdefault('lm_head.weight', out.get('transformer.wte.weight'))  # tied; many files store it once
    missing = [k for k in sd if k not in out or out[k] is None]
    if missing:
        raise ValueError(f"the pretrained weights lack {', '.join(missing[:3])}")
    return out
