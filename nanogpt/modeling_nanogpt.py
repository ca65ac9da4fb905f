"""
The custom code of a nanoGPT export whose architecture no transformers model computes (qk_norm,
logit_softcap): export_hf.py copies this file into the export as modeling_nanogpt.py, beside
nanogpt_model.py, a copy of the model.py that trained it, so that the export computes exactly what
the toolkit computes. transformers loads it with trust_remote_code=True; the toolkit never imports it.

Generation recomputes the whole context at each token (the export's generation_config.json says
use_cache=False): transformers' key/value caches are not our model's. A context longer than block_size
is cut to its last block_size tokens, as sample.py does.
"""

import torch
from torch.nn import functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .nanogpt_model import GPT, GPTConfig, rotary_tables

# GPTConfig's fields that shape the model (zero_init_proj is only a starting point)
MODEL_KEYS = ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias', 'rope', 'qk_norm',
              'mlp_activation', 'tie_weights', 'logit_softcap')


class NanoGPTConfig(PretrainedConfig):
    model_type = 'nanogpt'

    def __init__(self, block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=True,
                 rope=False, qk_norm=False, mlp_activation='gelu', tie_weights=True, logit_softcap=0.0, **kwargs):
        self.block_size, self.vocab_size, self.n_layer, self.n_head, self.n_embd = (block_size, vocab_size, n_layer,
                                                                                    n_head, n_embd)
        self.dropout, self.bias, self.rope, self.qk_norm = dropout, bias, rope, qk_norm
        self.mlp_activation, self.tie_weights, self.logit_softcap = mlp_activation, tie_weights, logit_softcap
        # the names transformers looks for; GPT ties its own head and embedding (tie_weights)
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = n_embd, n_layer, n_head
        self.max_position_embeddings = block_size
        kwargs['tie_word_embeddings'] = False
        super().__init__(**kwargs)


class NanoGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = NanoGPTConfig
    base_model_prefix = 'gpt'
    _no_split_modules = ['Block']

    def __init__(self, config):
        super().__init__(config)
        self.gpt = GPT(GPTConfig(**{k: getattr(config, k) for k in MODEL_KEYS}))
        self.post_init()

    def _init_weights(self, module):
        """Every weight comes from model.safetensors; what transformers cannot load are the rotary tables,
        which are not saved (a function of the shape): made again here."""
        if isinstance(module, GPT) and module.config.rope:
            cos, sin = rotary_tables(module.config.block_size, module.config.n_embd // module.config.n_head)
            module.rope_cos.copy_(cos)
            module.rope_sin.copy_(sin)

    def get_input_embeddings(self):
        return self.gpt.transformer.wte

    def get_output_embeddings(self):
        return self.gpt.lm_head

    def forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep=0, **kwargs):
        """Logits of every position (of the last only, with logits_to_keep=1, as generate asks); with labels,
        the mean next-token loss, as transformers' causal LMs compute it (labels shifted by one inside,
        -100 ignored). attention_mask is not used: no padding (one sequence, or a batch of equal lengths)."""
        idx = input_ids[:, -self.config.block_size:]
        if logits_to_keep == 1 and labels is None:
            logits, _ = self.gpt(idx)  # the last position only
        else:
            logits, _ = self.gpt(idx, targets=torch.full_like(idx, -1))  # every position (targets ignored)
        loss = None
        if labels is not None:
            labels = labels[:, -idx.size(1):]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
