# GPT-2 (124M) on OpenWebText, the run that reproduces GPT-2's loss (about 2.85) in several days
# on one node of 8 A100s:
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

# tokens per iteration: 12 sequences * 1024 tokens * 40 micro-steps (5 on each of 8 GPUs) = 491,520, about 0.5M
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

# 600k iterations of ~0.5M tokens: about 300B tokens in all
max_iters = 600000
lr_decay_iters = 600000

# evaluation and logging
eval_interval = 1000
eval_iters = 200
log_interval = 10

weight_decay = 1e-1
