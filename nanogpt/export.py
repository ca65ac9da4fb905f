"""
A trained model as a directory that the Hugging Face ecosystem loads as it is (export_hf.py): its weights
in the most widely read transformers architecture that computes the same function, or custom code where
none does; its tokenizer's files; a generation config; a model card.

Which architecture computes our function (read from transformers' modeling files):
- GPT2LMHeadModel: learned positions, pre-LayerNorm blocks (biases: ours, or zeros where bias=False),
  an MLP of exact GELU (activation_function 'gelu'; GPT-2's own 'gelu_new' is the tanh approximation)
  or ReLU squared ('relu2'), a head tied to the token embedding or its own (tie_word_embeddings).
- GPTNeoXForCausalLM, for rope: the same blocks run one after the other (use_parallel_residual=False),
  rotary embeddings on every channel of each head (rotary_pct 1.0, base 10000) in the half-split
  convention that ours uses (rotate_half), query/key/value interleaved per head in one matrix.
- None has qk_norm (a weightless RMS norm of each head's queries and keys) beside LayerNorm blocks and an
  ungated MLP (the models with a QK-norm have RMSNorm blocks and gated MLPs, or a LayerNorm QK-norm that
  subtracts the mean), nor logit soft-capping (Gemma 2's, again with RMSNorm and a gated MLP): those
  export as custom code, modeling_nanogpt.py over a copy of model.py, loaded with trust_remote_code=True.
"""

import json
import os

import torch

from model import CONV1D_WEIGHTS
from nanogpt.data import EOT, ROOT, byte_alphabet

CUSTOM_CODE = {'modeling_nanogpt.py': os.path.join(ROOT, 'nanogpt', 'modeling_nanogpt.py'),
               'nanogpt_model.py': os.path.join(ROOT, 'model.py')}


def hf_architecture(config):
    """(the transformers architecture that computes what a GPTConfig's model computes, or 'custom'; why)."""
    beyond = [k for k, off in (('qk_norm', False), ('logit_softcap', 0.0)) if getattr(config, k) != off]
    if beyond:
        return 'custom', (f"no transformers architecture has {' or '.join(beyond)} beside LayerNorm blocks and an "
                          f"ungated MLP")
    if config.rope:
        return 'GPTNeoXForCausalLM', "GPT-NeoX's blocks run in sequence compute rotary embeddings as ours do"
    return 'GPT2LMHeadModel', "GPT-2's architecture"


def cropped(tensor, n_tokens):
    """A copy of our own of tensor (safetensors refuses tensors that share memory), cut to n_tokens rows
    where it is a vocabulary's (wte, lm_head): a padded vocabulary's extra rows are no tokens."""
    return tensor.detach()[:n_tokens].clone(memory_format=torch.contiguous_format)


def gpt2_form(model, n_tokens):
    """(tensors, config.json) of model as transformers' GPT2LMHeadModel, its vocabulary cut to n_tokens."""
    config = model.config
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == 'lm_head.weight' and config.tie_weights:
            continue  # tied to wte, as transformers writes and reads it
        if name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()  # nn.Linear's (out, in) -> Conv1D's (in, out)
        tensors[name] = cropped(tensor, n_tokens) if name in ('transformer.wte.weight', 'lm_head.weight') else \
            tensor.detach().clone(memory_format=torch.contiguous_format)
    # Hugging Face GPT-2 always has biases; a bias=False model gets zero ones, which compute the same.
    # A bias has the size of its layer's output: the last dimension of a LayerNorm or Conv1D weight.
    for name in list(tensors):
        if name.endswith('.weight') and name not in ('transformer.wte.weight', 'transformer.wpe.weight',
                                                     'lm_head.weight'):
            tensors.setdefault(name[:-len('weight')] + 'bias', torch.zeros(tensors[name].shape[-1],
                                                                           dtype=tensors[name].dtype))
    hf_config = {
        'architectures': ['GPT2LMHeadModel'],
        'model_type': 'gpt2',
        'vocab_size': n_tokens,
        'n_positions': config.block_size,
        'n_embd': config.n_embd,
        'n_layer': config.n_layer,
        'n_head': config.n_head,
        'n_inner': None,  # 4 * n_embd, as ours
        'activation_function': 'relu2' if config.mlp_activation == 'relu2' else 'gelu',  # gelu: exact, as our nn.GELU()
        'layer_norm_epsilon': 1e-5,  # as our LayerNorm
        'resid_pdrop': config.dropout,
        'embd_pdrop': config.dropout,
        'attn_pdrop': config.dropout,
        'initializer_range': 0.02,
        'scale_attn_weights': True,  # 1/sqrt(head size), as ours
        'scale_attn_by_inverse_layer_idx': False,
        'reorder_and_upcast_attn': False,
        'tie_word_embeddings': config.tie_weights,
    }
    return tensors, hf_config


def neox_form(model, n_tokens):
    """(tensors, config.json) of a rope model as transformers' GPTNeoXForCausalLM, its vocabulary cut to n_tokens."""
    config = model.config
    C, H = config.n_embd, config.n_head
    sd = model.state_dict()

    def take(name, zeros=None):  # our tensor, or zeros of that size where bias=False left it out
        tensor = sd.get(name)
        return torch.zeros(zeros) if tensor is None else tensor.detach().clone(memory_format=torch.contiguous_format)

    def per_head(tensor):  # rows [q; k; v], each head after head -> [q_h; k_h; v_h] for each head h in turn
        return tensor.reshape(3, H, C // H, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape).contiguous()
    tensors = {'gpt_neox.embed_in.weight': cropped(sd['transformer.wte.weight'], n_tokens),
               # embed_out: the name of transformers 4 (transformers 5 reads it as lm_head); tied or not, it is there
               'embed_out.weight': cropped(sd['lm_head.weight'], n_tokens),
               'gpt_neox.final_layer_norm.weight': take('transformer.ln_f.weight'),
               'gpt_neox.final_layer_norm.bias': take('transformer.ln_f.bias', C)}
    for i in range(config.n_layer):
        ours, theirs = f'transformer.h.{i}.', f'gpt_neox.layers.{i}.'
        tensors.update({
            theirs + 'input_layernorm.weight': take(ours + 'ln_1.weight'),
            theirs + 'input_layernorm.bias': take(ours + 'ln_1.bias', C),
            theirs + 'post_attention_layernorm.weight': take(ours + 'ln_2.weight'),
            theirs + 'post_attention_layernorm.bias': take(ours + 'ln_2.bias', C),
            theirs + 'attention.query_key_value.weight': per_head(take(ours + 'attn.c_attn.weight')),
            theirs + 'attention.query_key_value.bias': per_head(take(ours + 'attn.c_attn.bias', 3 * C)),
            theirs + 'attention.dense.weight': take(ours + 'attn.c_proj.weight'),
            theirs + 'attention.dense.bias': take(ours + 'attn.c_proj.bias', C),
            theirs + 'mlp.dense_h_to_4h.weight': take(ours + 'mlp.c_fc.weight'),
            theirs + 'mlp.dense_h_to_4h.bias': take(ours + 'mlp.c_fc.bias', 4 * C),
            theirs + 'mlp.dense_4h_to_h.weight': take(ours + 'mlp.c_proj.weight'),
            theirs + 'mlp.dense_4h_to_h.bias': take(ours + 'mlp.c_proj.bias', C),
        })
    hf_config = {
        'architectures': ['GPTNeoXForCausalLM'],
        'model_type': 'gpt_neox',
        'vocab_size': n_tokens,
        'hidden_size': C,
        'num_hidden_layers': config.n_layer,
        'num_attention_heads': H,
        'intermediate_size': 4 * C,
        'hidden_act': config.mlp_activation,  # 'gelu' (exact) or 'relu2', both in transformers' ACT2FN
        'max_position_embeddings': config.block_size,
        'rotary_pct': 1.0,  # every channel of a head turns (transformers 5 reads these two as rope_parameters)
        'rotary_emb_base': 10000,  # model.rotary_tables' base
        'layer_norm_eps': 1e-5,
        'use_parallel_residual': False,  # x + attn(ln_1(x)), then + mlp(ln_2(...)): our blocks
        'attention_bias': True,
        'attention_dropout': config.dropout,
        'hidden_dropout': config.dropout,
        'initializer_range': 0.02,
        'tie_word_embeddings': config.tie_weights,
    }
    return tensors, hf_config


def custom_form(model, n_tokens):
    """(tensors, config.json) of model as our own code (CUSTOM_CODE), its vocabulary cut to n_tokens."""
    config = model.config
    tensors = {'gpt.' + name: cropped(t, n_tokens) if name in ('transformer.wte.weight', 'lm_head.weight') else
               t.detach().clone(memory_format=torch.contiguous_format) for name, t in model.state_dict().items()}
    fields = ('block_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias', 'rope', 'qk_norm', 'mlp_activation',
              'tie_weights', 'logit_softcap')
    hf_config = {
        'architectures': ['NanoGPTForCausalLM'],
        'model_type': 'nanogpt',
        'auto_map': {'AutoConfig': 'modeling_nanogpt.NanoGPTConfig',
                     'AutoModelForCausalLM': 'modeling_nanogpt.NanoGPTForCausalLM'},
        'vocab_size': n_tokens,
        **{k: getattr(config, k) for k in fields},
    }
    return tensors, hf_config


# ----------------------------------------------------------------------------- tokenizer files

def gpt2_merges(ranks):
    """GPT-2's merges, in order, from tiktoken's ranks ({token bytes: rank}): for each token of more than
    one byte, the two tokens whose merge makes it, found by running the merges of lower rank over its
    bytes (what is left is two tokens)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            best, i = min(pairs)
            if best >= rank:
                raise ValueError(f"the ranks cannot make token {token!r} by merging")
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        merges.append(tuple(parts))
    return merges


def gpt2_tokenizer_files(token_bytes_of):
    """vocab.json, merges.txt and tokenizer.json of GPT-2's BPE, as on the Hugging Face hub, built from the
    bytes of each id (tiktoken's decode_single_token_bytes, ids 0 to 50255) and <|endoftext|> (50256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    alphabet = byte_alphabet()

    def text(token):
        return ''.join(alphabet[b] for b in token)
    ranks = {token: i for i, token in enumerate(token_bytes_of)}
    merges = [(text(a), text(b)) for a, b in gpt2_merges(ranks)]
    vocab = {text(token): i for token, i in ranks.items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOT])
    return {'vocab.json': json.dumps(dict(vocab, **{EOT: len(vocab)}), ensure_ascii=False).encode('utf-8'),
            'merges.txt': '\n'.join(['#version: 0.2', *(f'{a} {b}' for a, b in merges)]).encode('utf-8') + b'\n',
            'tokenizer.json': tokenizer.to_str().encode('utf-8')}


def char_tokenizer_file(itos):
    """tokenizer.json of a character vocabulary: each character is a token of its own, its id itos's."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    tokenizer = Tokenizer(models.WordLevel(vocab={ch: i for i, ch in itos.items()}, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r'[\s\S]'), behavior='isolated')  # every character
    tokenizer.decoder = decoders.Fuse()  # the characters joined as they are, with no space between
    return tokenizer.to_str().encode('utf-8')


def tokenizer_config(kind, eot_id, block_size):
    """tokenizer_config.json: which class reads the files, and nothing that would change the text
    (no space added in front, no clean-up of the spaces around punctuation)."""
    config = {'tokenizer_class': 'GPT2Tokenizer' if kind == 'gpt2' else 'PreTrainedTokenizerFast',
              'model_max_length': block_size, 'clean_up_tokenization_spaces': False}
    if kind in ('gpt2', 'bpe'):
        config['add_prefix_space'] = False
    if eot_id is not None:
        config.update(bos_token=EOT, eos_token=EOT, unk_token=EOT if kind == 'gpt2' else None)
    return json.dumps(config, indent=2).encode('utf-8') + b'\n'


def generation_config(block_size, eot_id, custom):
    """generation_config.json: sample.py's defaults (temperature 0.8, top_k 200) and the model's context."""
    config = {'do_sample': True, 'temperature': 0.8, 'top_k': 200, 'max_length': block_size}
    if eot_id is not None:
        config.update(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    if custom:
        config['use_cache'] = False  # modeling_nanogpt.py recomputes the context (see there)
    return json.dumps(config, indent=2).encode('utf-8') + b'\n'


def model_card(name, facts):
    """README.md of an export: what the model is, the data and tokens it was trained on, its val loss and bits
    per byte, the commands that trained it, and how to load it. facts: a dict of what export_hf.py knows."""
    remote = ', trust_remote_code=True' if facts['custom'] else ''
    lines = [
        '---',
        'library_name: transformers',
        'pipeline_tag: text-generation',
        'tags:',
        '- nanogpt',
        *(['- custom_code'] if facts['custom'] else []),
        '---',
        '',
        f'# {name}',
        '',
        f"A GPT of {facts['params']:,} parameters ({facts['shape']}) trained with the nanoGPT toolkit, exported as "
        f"{facts['architecture_line']}.",
        '',
        '## Training',
        '',
        f"- Data: {facts['dataset']}, in {facts['tokenizer']}.",
        f"- Tokens trained on: {facts['tokens_trained']}.",
        f"- Validation: {facts['val']}.",
        '- Trained with:',
        '',
        '```sh',
        *facts['commands'],
        '```',
        '',
        '## Use',
        '',
        '```python',
        'from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline',
        f"tokenizer = AutoTokenizer.from_pretrained({facts['location']!r})",
        f"model = AutoModelForCausalLM.from_pretrained({facts['location']!r}{remote})",
        f"generate = pipeline('text-generation', model={facts['location']!r}{remote})",
        f"print(generate({facts['prompt']!r}, max_new_tokens=100)[0]['generated_text'])",
        '```',
        '',
        f"The context is {facts['block_size']} tokens: generation_config.json stops there (max_length).",
        *(["modeling_nanogpt.py runs nanogpt_model.py, a copy of the toolkit's model.py, hence "
           "trust_remote_code=True: read both before you load it."] if facts['custom'] else []),
    ]
    return ('\n'.join(lines) + '\n').encode('utf-8')
