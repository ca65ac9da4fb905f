# evaluates the pretrained base GPT-2 (124M parameters: n_layer=12, n_head=12, n_embd=768) on OpenWebText
# and exits; needs data/openwebtext prepared
# $ python train.py config/eval_gpt2.py
batch_size = 8
eval_iters = 500  # many batches, for a close estimate of the loss
eval_only = True
wandb_log = False
init_from = 'gpt2'
