# evaluates the pretrained GPT-2 medium (350M parameters: n_layer=24, n_head=16, n_embd=1024) on OpenWebText
# and exits; needs data/openwebtext prepared
# $ python train.py config/eval_gpt2_medium.py
batch_size = 8
eval_iters = 500  # many batches, for a close estimate of the loss
eval_only = True
wandb_log = False
init_from = 'gpt2-medium'
