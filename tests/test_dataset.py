import os
import pickle

import numpy as np
import pytest
import torch

from conftest import run_script
from nanogpt.data import (char_vocab, get_batch, get_ordered_batch, load_meta, load_tokenizer, open_split, ordered_rows,
                          row_count, write_dataset)


def test_batches_are_windows_shifted_by_one():
    data = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(data, 8, 16, (1, 2, 3))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 15, dtype=torch.int64))  # consecutive tokens


def test_batches_are_a_function_of_the_seed():
    data = np.random.default_rng(0).integers(0, 60000, 5000).astype(np.uint16)
    a, _ = get_batch(data, 4, 8, (1337, 0, 0, 5, 0))
    b, _ = get_batch(data, 4, 8, (1337, 0, 0, 5, 0))
    c, _ = get_batch(data, 4, 8, (1337, 0, 0, 5, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_vectorised_gather_equals_a_loop_over_rows():
    data = np.random.default_rng(0).integers(0, 60000, 5000).astype(np.uint16)
    x, y = get_batch(data, 6, 10, (7,))
    starts = np.random.default_rng((7,)).integers(0, len(data) - 10, size=6)
    expected_x = torch.stack([torch.from_numpy(data[i:i + 10].astype(np.int64)) for i in starts])
    expected_y = torch.stack([torch.from_numpy(data[i + 1:i + 11].astype(np.int64)) for i in starts])
    assert torch.equal(x, expected_x) and torch.equal(y, expected_y)


def test_write_dataset_picks_the_token_dtype(tmp_path):
    meta = write_dataset(tmp_path / 'a', [1, 2, 3], [4, 5], {'vocab_size': 100})
    assert meta['dtype'] == 'uint16' and (tmp_path / 'a' / 'train.bin').stat().st_size == 6
    meta = write_dataset(tmp_path / 'b', [70000, 2, 3], [4, 5], {'vocab_size': 70001})
    assert meta['dtype'] == 'uint32' and (tmp_path / 'b' / 'train.bin').stat().st_size == 12
    assert load_meta(str(tmp_path / 'b'))['dtype'] == 'uint32'
    data = open_split(str(tmp_path / 'b'), 'train', meta, 2, 70001)
    assert data.dtype == np.uint32 and int(data[0]) == 70000


def test_open_split_errors(tmp_path):
    write_dataset(tmp_path / 'd', list(range(10)), list(range(5)), {'vocab_size': 8})
    with pytest.raises(SystemExit, match='no dataset folder'):
        open_split(str(tmp_path / 'missing'), 'train', {}, 4, 10)
    with pytest.raises(SystemExit, match=r'val.bin has 5 tokens, it needs more than block_size=5'):
        open_split(str(tmp_path / 'd'), 'val', {}, 5, 10)
    with pytest.raises(SystemExit, match=r'token id 9, not below the model.s vocab_size 8'):
        open_split(str(tmp_path / 'd'), 'train', {}, 4, 8)


def test_char_tokenizer_round_trip_and_unknown_characters():
    stoi, itos = char_vocab("hello world")
    encode, decode_bytes = load_tokenizer({'stoi': stoi, 'itos': itos, 'vocab_size': len(stoi)})
    assert decode_bytes(encode("low hello")).decode() == "low hello"
    with pytest.raises(SystemExit, match=r"not in the vocabulary of this dataset: 'x', 'z'"):
        encode("hero x z")


def test_shakespeare_char_prepare_counts(project):
    folder = project / 'data' / 'shakespeare_char'
    meta = load_meta(str(folder))
    assert meta['vocab_size'] == 65 and len(meta['itos']) == 65 and meta['dtype'] == 'uint16'
    assert (folder / 'train.bin').stat().st_size == 2 * 1_003_854
    assert (folder / 'val.bin').stat().st_size == 2 * 111_540


def test_prepare_takes_another_text_and_leaves_the_shipped_one(tmp_path):
    from conftest import SHAKESPEARE_TXT, copy_project
    copy_project(tmp_path)
    folder = tmp_path / 'data' / 'shakespeare_char'
    other = tmp_path / 'other.txt'
    other.write_text('abcdefghij' * 100, encoding='utf-8')
    run_script(tmp_path, 'data/shakespeare_char/prepare.py', other)
    assert load_meta(str(folder))['vocab_size'] == 10
    assert (folder / 'train.bin').stat().st_size == 2 * 900 and (folder / 'val.bin').stat().st_size == 2 * 100
    assert (folder / 'input.txt').read_bytes() == SHAKESPEARE_TXT.read_bytes()  # not replaced by the other text

    proc = run_script(tmp_path, 'data/shakespeare_char/prepare.py', tmp_path / 'missing.txt', check=False)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip() == f"error: cannot read {tmp_path / 'missing.txt'}: [Errno 2] No such file or directory: " \
                                  f"'{tmp_path / 'missing.txt'}'"
    assert (folder / 'train.bin').stat().st_size == 2 * 900  # the dataset prepared before is still whole


def test_gpt2_tokens_that_split_a_character_decode_safely_one_at_a_time(gpt2_bpe, monkeypatch):
    import codecs
    monkeypatch.setenv('NANOGPT_GPT2_BPE', str(gpt2_bpe))
    encode, decode_bytes = load_tokenizer({'tokenizer': 'gpt2', 'vocab_size': 50304})
    text = "naïve 漢字🙂 done"
    ids = encode(text)
    pieces = [decode_bytes([i]) for i in ids]
    assert any(p.decode('utf-8', errors='replace') != p.decode('utf-8', errors='ignore') for p in pieces)  # a split
    decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')  # as sample.py streams
    streamed = ''.join(decoder.decode(p) for p in pieces) + decoder.decode(b'', final=True)
    assert streamed == text


# ----------------------------------------------------------------------------- sharded splits

def write_shards(folder, split, shards, dtype=np.uint16):
    folder.mkdir(parents=True, exist_ok=True)
    for i, tokens in enumerate(shards):
        np.asarray(tokens, dtype=dtype).tofile(folder / f'{split}_{i:03d}.bin')


def test_shards_read_as_one_split(tmp_path):
    rng = np.random.default_rng(0)
    lengths = [700, 40, 1200, 5, 300]  # one shard too short for a window, one with a single window
    shards = [rng.integers(0, 60000, n).astype(np.uint16) for n in lengths]
    write_shards(tmp_path / 'd', 'train', shards)
    data = open_split(str(tmp_path / 'd'), 'train', {}, 39, 60000)
    joined = np.concatenate(shards)
    assert len(data) == len(joined) and data.dtype == np.uint16
    assert np.array_equal(data.astype(np.int64), joined) and np.array_equal(data[650:1000], joined[650:1000])
    assert data[741] == joined[741] and data[-1] == joined[-1]

    # the reference: every window that fits in one shard, listed shard after shard, drawn uniformly
    windows = [(s, i) for s, n in enumerate(lengths) for i in range(n - 39)]
    for seed in [(1,), (1337, 0, 5, 3), (2, 2)]:
        x, y = get_batch(data, 64, 39, seed)
        picks = np.random.default_rng(seed).integers(0, len(windows), size=64)
        expected = np.stack([shards[s][i:i + 40] for s, i in (windows[k] for k in picks)]).astype(np.int64)
        assert torch.equal(x, torch.from_numpy(expected[:, :-1])) and torch.equal(y, torch.from_numpy(expected[:, 1:]))
    # over many batches each shard is chosen in proportion to its windows, and the short one never
    x, _ = get_batch(data, 20000, 39, (7,))
    first = x[:, 0].numpy()
    counts = [np.isin(first, shard[:max(n - 39, 0)]).mean() for shard, n in zip(shards, lengths)]
    expected = np.array([max(n - 39, 0) for n in lengths]) / len(windows)
    np.testing.assert_allclose(counts, expected, atol=0.02)


def test_one_shard_draws_the_batches_of_one_file(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 65, 3000).astype(np.uint16)
    write_dataset(tmp_path / 'file', tokens, tokens[:100], {'vocab_size': 65})
    write_shards(tmp_path / 'shard', 'train', [tokens])
    single = open_split(str(tmp_path / 'file'), 'train', {}, 16, 65)
    sharded = open_split(str(tmp_path / 'shard'), 'train', {}, 16, 65)
    assert isinstance(single, np.memmap) and not isinstance(sharded, np.memmap)
    for seed in [(1337, 0, 0, 0), (1337, 1, 4, 0, 3)]:
        a, b = get_batch(single, 8, 16, seed, 65), get_batch(sharded, 8, 16, seed, 65)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_sharded_split_errors(tmp_path):
    def fails(folder, split='train', block_size=4, vocab_size=100):
        with pytest.raises(SystemExit) as e:
            open_split(str(folder), split, {}, block_size, vocab_size)
        assert e.value.code.startswith('error: ') and '\n' not in e.value.code
        return e.value.code

    write_shards(tmp_path / 'gap', 'train', [range(20)] * 3)
    (tmp_path / 'gap' / 'train_001.bin').unlink()
    assert f"{tmp_path / 'gap' / 'train_001.bin'} is missing: the train shards must be numbered from 000" in fails(tmp_path / 'gap')
    write_shards(tmp_path / 'twice', 'train', [range(20)] * 2)
    (tmp_path / 'twice' / 'train_0001.bin').write_bytes(bytes(40))
    assert 'holds train_0001.bin and train_001.bin, two shards numbered 1' in fails(tmp_path / 'twice')
    write_shards(tmp_path / 'torn', 'train', [range(20)] * 2)
    with open(tmp_path / 'torn' / 'train_001.bin', 'ab') as f:
        f.write(b'\x01')  # half a token
    assert f"{tmp_path / 'torn' / 'train_001.bin'} is not a whole number of uint16 tokens" in fails(tmp_path / 'torn')
    write_shards(tmp_path / 'both', 'train', [range(20)])
    (tmp_path / 'both' / 'train.bin').write_bytes(bytes(40))
    assert 'holds both train.bin and train shards' in fails(tmp_path / 'both')
    write_shards(tmp_path / 'short', 'train', [range(4), range(3)])
    assert 'no shard of' in fails(tmp_path / 'short') and 'more than block_size=4 tokens' in fails(tmp_path / 'short')
    write_shards(tmp_path / 'ids', 'train', [range(20), range(90, 110)])
    assert f"{tmp_path / 'ids' / 'train_001.bin'} holds token id 109, not below" in fails(tmp_path / 'ids')
    assert 'val.bin does not exist (nor val_000.bin)' in fails(tmp_path / 'ids', 'val')
    (tmp_path / 'ids' / 'train_002.bin.tmp').write_bytes(bytes(7))  # an interrupted write's leftover: not a shard
    assert len(open_split(str(tmp_path / 'ids'), 'train', {}, 4, 110)) == 40


def test_ordered_rows_read_the_split_in_order_across_shards_and_epochs(tmp_path):
    write_shards(tmp_path / 'd', 'train', [np.arange(0, 30), np.arange(30, 37), np.arange(37, 70)])
    data = open_split(str(tmp_path / 'd'), 'train', {}, 8, 100)
    assert row_count(data, 8) == 8  # 69 // 8: tokens 64 to 69 are left out
    rows = ordered_rows(data, 8, 2, 9)  # rows 2 to 7, then 0 to 2 of the next epoch
    expected = np.stack([np.arange(8 * r, 8 * r + 9) for r in [2, 3, 4, 5, 6, 7, 0, 1, 2]])
    assert np.array_equal(rows, expected)  # rows 3 and 4 cross from one shard into the next
    x, y = get_ordered_batch(data, 3, 8, 21)  # rows 5, 6, 7 (21 mod 8 = 5)
    assert torch.equal(x, torch.from_numpy(expected[3:6, :-1]).long()) and torch.equal(y, torch.from_numpy(expected[3:6, 1:]).long())
    single = np.arange(50, dtype=np.uint16)
    assert np.array_equal(ordered_rows(single, 7, 6, 2), np.stack([np.arange(42, 50), np.arange(0, 8)]))


def build_nanogpt_shards(folder, streams, prefix='edufineweb'):
    """Shards as build-nanogpt's fineweb.py saves them: np.save of uint16 arrays, one numbering, val first."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, tokens in enumerate(streams):
        np.save(folder / f"{prefix}_{'val' if i == 0 else 'train'}_{i:06d}", np.asarray(tokens, dtype=np.uint16))


def test_build_nanogpt_shards_are_read_in_place(tmp_path):
    streams = [np.arange(100, 160), np.arange(0, 40), np.arange(40, 90), np.arange(90, 100)]
    build_nanogpt_shards(tmp_path / 'b', streams)
    (tmp_path / 'b' / 'notes.txt').write_text('other files are left alone')
    train = open_split(str(tmp_path / 'b'), 'train', {}, 8, 200)
    val = open_split(str(tmp_path / 'b'), 'val', {}, 8, 200)
    assert np.array_equal(np.asarray(train), np.arange(100)) and np.array_equal(np.asarray(val), np.arange(100, 160))
    # memory-mapped past each file's .npy header, not copied
    assert [os.path.basename(s.filename) for s in train.shards] == [f'edufineweb_train_00000{i}.npy' for i in (1, 2, 3)]
    x, y = get_ordered_batch(train, 2, 8, 4)
    assert torch.equal(x[1], torch.arange(40, 48)) and torch.equal(y[1], torch.arange(41, 49))
    x, _ = get_batch(train, 4, 8, (1,))  # random windows too, each in one shard
    assert all(row[0] // 40 == row[-1] // 40 or row[0] >= 40 for row in x.tolist())


def test_build_nanogpt_shards_that_do_not_fit_are_one_line(tmp_path):
    def fails(folder, split='train'):
        with pytest.raises(SystemExit) as e:
            open_split(str(folder), split, {}, 4, 100)
        assert e.value.code.startswith('error: ') and '\n' not in e.value.code
        return e.value.code

    streams = [range(20), range(20), range(20)]
    build_nanogpt_shards(tmp_path / 'gap', streams)
    (tmp_path / 'gap' / 'edufineweb_train_000001.npy').unlink()
    assert 'has no .npy shard numbered 1 (after edufineweb_val_000000.npy)' in fails(tmp_path / 'gap')
    build_nanogpt_shards(tmp_path / 'two', streams)
    build_nanogpt_shards(tmp_path / 'two', streams, prefix='other')
    assert 'holds .npy shards of 2 datasets (edufineweb, other)' in fails(tmp_path / 'two')
    build_nanogpt_shards(tmp_path / 'wide', streams)
    np.save(tmp_path / 'wide' / 'edufineweb_train_000002.npy', np.arange(20, dtype=np.int32))  # another width
    assert "edufineweb_train_000002.npy holds int32 of shape (20,), not a flat array of uint16 tokens" in fails(tmp_path / 'wide')
    build_nanogpt_shards(tmp_path / 'flat', streams)
    np.save(tmp_path / 'flat' / 'edufineweb_train_000001.npy', np.zeros((4, 5), dtype=np.uint16))
    assert 'holds uint16 of shape (4, 5), not a flat array' in fails(tmp_path / 'flat')
    build_nanogpt_shards(tmp_path / 'cut', streams)
    path = tmp_path / 'cut' / 'edufineweb_train_000002.npy'
    path.write_bytes(path.read_bytes()[:-6])
    assert f'{path} is not 20 tokens long, as its header says' in fails(tmp_path / 'cut')
    (tmp_path / 'junk').mkdir()
    (tmp_path / 'junk' / 'x_train_000000.npy').write_bytes(b'not numpy at all')
    assert 'x_train_000000.npy is not a .npy file numpy can read' in fails(tmp_path / 'junk')
    build_nanogpt_shards(tmp_path / 'mixed', streams)
    (tmp_path / 'mixed' / 'train.bin').write_bytes(bytes(40))
    assert 'holds both .npy shards (edufineweb_train_000001.npy, ...) and train .bin files' in fails(tmp_path / 'mixed')


def test_files_listed_in_meta_are_checked(tmp_path):
    """meta.pkl lists what the preparation wrote: a shard of another token width, one missing, or one that
    is not of this preparation stops the reader with one line."""
    def fails(folder, split='train'):
        with pytest.raises(SystemExit) as e:
            open_split(str(folder), split, load_meta(str(folder)), 4, 100)
        assert e.value.code.startswith('error: ') and '\n' not in e.value.code
        return e.value.code

    def prepared(name):
        write_shards(tmp_path / name, 'train', [range(20), range(20, 50)])
        write_shards(tmp_path / name, 'val', [range(10)])
        files = {'train_000.bin': 20, 'train_001.bin': 30, 'val_000.bin': 10}
        (tmp_path / name / 'meta.pkl').write_bytes(pickle.dumps({'vocab_size': 100, 'dtype': 'uint16', 'files': files}))
        return tmp_path / name

    assert len(open_split(str(prepared('ok')), 'train', load_meta(str(tmp_path / 'ok')), 4, 100)) == 50
    np.arange(20, 50, dtype=np.uint32).tofile(prepared('wide') / 'train_001.bin')  # the same tokens, twice as wide
    assert "train_001.bin holds 120 bytes where meta.pkl lists 30 uint16 tokens (60 bytes): a file of another token " \
           "width" in fails(tmp_path / 'wide')
    np.arange(20, dtype=np.uint16).tofile(prepared('extra') / 'train_002.bin')
    assert "train_002.bin is not among the files meta.pkl lists" in fails(tmp_path / 'extra')
    (prepared('missing') / 'train_001.bin').unlink()
    assert f"{tmp_path / 'missing' / 'train_001.bin'} is missing (meta.pkl lists it)" in fails(tmp_path / 'missing')
    # the single files of write_dataset are listed too
    write_dataset(tmp_path / 'w', list(range(20)), list(range(10)), {'vocab_size': 100})
    assert load_meta(str(tmp_path / 'w'))['files'] == {'train.bin': 20, 'val.bin': 10}
    np.arange(10, dtype=np.uint32).tofile(tmp_path / 'w' / 'val.bin')
    assert 'val.bin holds 40 bytes where meta.pkl lists 10 uint16 tokens (20 bytes)' in fails(tmp_path / 'w', 'val')
    (tmp_path / 'w' / 'meta.pkl').write_bytes(pickle.dumps({'vocab_size': 100, 'files': ['train.bin']}))
    with pytest.raises(SystemExit, match='lists its files in a form other than file name -> token count'):
        load_meta(str(tmp_path / 'w'))
