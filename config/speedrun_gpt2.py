# The modern recipe for GPT-2 (124M) on FineWeb-Edu: the same model size as config/train_gpt2_fineweb.py
# (10B tokens), aiming at its final val loss in about a third of the tokens.
# NOT MEASURED YET: no GPU was at hand when this was written (docs/recipes.md). The techniques are
# those of the GPT-2 speedruns (KellerJordan/modded-nanogpt), as far as this toolkit has them: rotary
# embeddings, QK-norm, ReLU squared, an untied zero-initialised head and projections, soft-capped logits,
# Muon for the blocks' matrices, a constant learning rate and then a straight line down.
# $ python data/fineweb_edu/prepare.py && python data/hellaswag/prepare.py
# $ torchrun --standalone --nproc_per_node=8 train.py config/speedrun_gpt2.py

out_dir = 'out-speedrun-gpt2'
dataset = 'fineweb_edu'
wandb_log = False
wandb_project = 'fineweb'
wandb_run_name = 'speedrun-gpt2-124M'

n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
bias = False
dropout = 0.0

rope = True
qk_norm = True
mlp_activation = 'relu2'
tie_weights = False
logit_softcap = 15.0
zero_init_proj = True
optimizer = 'muon'
muon_learning_rate = 0.05  # Muon for the blocks' matrices
muon_momentum = 0.95
learning_rate = 8e-3  # AdamW for the embedding, the head and the norms
beta1 = 0.8
beta2 = 0.95
weight_decay = 0.0
grad_clip = 1.0

# 524,288 tokens per iteration, as config/train_gpt2_fineweb.py; 6,000 iterations are 3.1B tokens
batch_size = 32
gradient_accumulation_steps = 16
max_iters = 6000
lr_decay_iters = 6000
warmup_iters = 100
cooldown_iters = 2400
min_lr = 0.0

eval_interval = 250
eval_iters = 40
hellaswag_interval = 500
log_interval = 10
