# fine-tunes GPT-2 XL on tiny Shakespeare (GPT-2 BPE tokens: run data/shakespeare/prepare.py first)
# $ python train.py config/finetune_shakespeare.py
import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False  # set True to follow the run in Weights & Biases
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())  # a new name for each run

dataset = 'shakespeare'
init_from = 'gpt2-xl'  # the largest GPT-2, 1558M parameters

# the dataset is small and the model overfits within a few iterations: keep only the best checkpoint
always_save_checkpoint = False

# 1 sequence * 32 micro-steps * 1024 tokens = 32,768 tokens per iteration; the whole text
# (about 300k tokens) is seen in about 9 iterations, so 20 iterations are a little over 2 epochs
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# fine-tuning: a small, constant learning rate
learning_rate = 3e-5
decay_lr = False
