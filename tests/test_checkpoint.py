import os

import pytest
import torch

from conftest import tiny
from model import GPT, GPTConfig
from nanogpt.checkpoint import clean_state_dict, load_checkpoint, save_checkpoint


def test_round_trip_gives_identical_logits(tmp_path):
    model = tiny()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu', verbose=False)
    x = torch.randint(50, (2, 16))
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    path = tmp_path / 'ckpt.pt'
    save_checkpoint(str(path), {'model': model.state_dict(), 'optimizer': opt.state_dict(),
                                'model_args': dict(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16,
                                                   bias=False, dropout=0.0),
                                'iter_num': 7, 'best_val_loss': 1.5, 'config': {'a': 1}})
    assert os.listdir(tmp_path) == ['ckpt.pt']  # no temporary file left
    ckpt = torch.load(path, map_location='cpu', weights_only=True)  # plain types only
    restored = GPT(GPTConfig(**ckpt['model_args']))
    restored.load_state_dict(clean_state_dict(load_checkpoint(str(path))['model']))
    assert torch.equal(restored(x)[0], model(x)[0])
    assert ckpt['iter_num'] == 7 and ckpt['best_val_loss'] == 1.5


def test_prefixes_are_stripped_and_mask_buffers_dropped():
    sd = {'_orig_mod.lm_head.weight': torch.zeros(1), 'module._orig_mod.transformer.wte.weight': torch.zeros(1),
          'transformer.h.0.attn.bias': torch.zeros(1, 1, 4, 4)}
    assert set(clean_state_dict(sd)) == {'lm_head.weight', 'transformer.wte.weight'}


def test_failed_save_leaves_the_old_checkpoint(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    save_checkpoint(path, {'model': {'w': torch.ones(2)}, 'model_args': {}})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        save_checkpoint(path, {'model': {'w': torch.zeros(2)}, 'model_args': {}, 'x': Unpicklable()})
    assert os.listdir(tmp_path) == ['ckpt.pt']
    assert torch.equal(load_checkpoint(path)['model']['w'], torch.ones(2))


def test_missing_truncated_and_foreign_checkpoints(tmp_path):
    with pytest.raises(SystemExit, match='no checkpoint at'):
        load_checkpoint(str(tmp_path / 'ckpt.pt'))
    path = tmp_path / 'ckpt.pt'
    save_checkpoint(str(path), {'model': {'w': torch.ones(1000)}, 'model_args': {}})
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(SystemExit, match='truncated or corrupt'):
        load_checkpoint(str(path))
    torch.save({'weights': 1}, path)
    with pytest.raises(SystemExit, match='not a nanoGPT checkpoint'):
        load_checkpoint(str(path))
