# The modern recipe on one GPU, on config/train_shakespeare_char.py's task: the aim is upstream's best val
# loss (1.467) in a quarter of its wall time (142 s on one H200, compile included).
# NOT MEASURED YET: no GPU was at hand when this was written (docs/recipes.md). Its settings carry
# over what the CPU recipe measured (config/speedrun_shakespeare_char_cpu.py: rope, QK-norm, ReLU squared
# and Muon pay for themselves, Muon the most), scaled to this model; the dropout stays, as this run is
# limited by overfitting. If it misses 1.467, try muon_learning_rate 0.01 or 0.04, muon_momentum 0.9 (the
# 250-iteration CPU recipe's), and max_iters 1000-1500. Muon orthogonalises in bfloat16 on this GPU, as before.
# $ python train.py config/speedrun_shakespeare_char.py

out_dir = 'out-speedrun-shakespeare-char'
eval_interval = 125
eval_at_start = False  # the untrained model's loss tells nothing and costs an evaluation's time
eval_iters = 100
log_interval = 25
always_save_checkpoint = False  # keep the best val loss: the model overfits late in the run

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'speedrun'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

rope = True
qk_norm = True
mlp_activation = 'relu2'
tie_weights = True
optimizer = 'muon'
muon_learning_rate = 0.02  # Muon for the blocks' matrices
learning_rate = 3e-3  # AdamW for the embedding and the norms
beta2 = 0.99

# a quarter of upstream's 5000 iterations: 50 of warmup, constant, then straight down to 0 over the last 600
max_iters = 1250
lr_decay_iters = 1250
warmup_iters = 50
cooldown_iters = 600
min_lr = 0.0
