"""benchmarks/compare.py: one line and nothing run where an input is missing, and its CPU path end to end
on a few iterations, with a copy of this project standing in for upstream's checkout."""

from conftest import copy_project, run_script


def test_missing_inputs_stop_compare_with_one_line(tmp_path):
    project = copy_project(tmp_path / 'project')
    (tmp_path / 'empty').mkdir()
    cases = [
        (['--upstream=' + str(tmp_path / 'nope')], 'does not exist; clone https://github.com/karpathy/nanoGPT there'),
        (['--upstream=' + str(tmp_path / 'empty')], 'is not a nanoGPT checkout: it lacks train.py, model.py, bench.py'),
        (['--device=tpu'], "device='tpu': use cpu or cuda"),
        (['--device=cuda'], 'input.txt is missing'),  # the case below, on the GPU path
    ]
    for i, (args, expected) in enumerate(cases):
        if i == len(cases) - 1:
            (project / 'data' / 'shakespeare_char' / 'input.txt').unlink()
        proc = run_script(project, 'benchmarks/compare.py', *args, check=False)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr
        assert len(err) == 1 and err[0].startswith('error: ') and expected in err[0], err
        assert not (project / 'bench_results').exists() and not (tmp_path / 'empty' / 'data').exists()


def test_cpu_comparison_runs_both_and_prints_the_table(tmp_path):
    project = copy_project(tmp_path / 'project')
    stand_in = copy_project(tmp_path / 'upstream')
    proc = run_script(project, 'benchmarks/compare.py', f'--upstream={stand_in}', '--max_iters=3',
                      '--cpu_dtypes=float32')
    lines = proc.stdout.splitlines()
    title = lines.index('CPU: config/train_shakespeare_char_cpu.py, 3 iterations, gradients clipped at 1.0 '
                        '(medians of 1 run(s))')
    rows = [line.split(' | ') for line in lines[title + 3:title + 5]]
    assert [r[0] for r in rows] == ['| upstream nanoGPT', '| this toolkit, float32']
    assert rows[0][-2:] == ['1.00x', '1.00x |']
    assert (stand_in / 'data' / 'shakespeare_char' / 'train.bin').exists()  # upstream's data is ours
    assert 'recorded' not in proc.stdout


def test_time_to_loss_with_ablation_and_plot(tmp_path):
    """--speedrun: the recipe against upstream, each technique of the recipe turned off in turn, every
    final model scored on the whole val split, and val loss against wall time drawn."""
    project = copy_project(tmp_path / 'project')
    stand_in = copy_project(tmp_path / 'upstream')
    picture = tmp_path / 'speedrun.png'
    proc = run_script(project, 'benchmarks/compare.py', f'--upstream={stand_in}', '--max_iters=2', '--speedrun=True',
                      '--ablation=optimizer', f'--plot={picture}')
    lines = proc.stdout.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith('CPU: time to the same loss'))
    end = lines.index('', title)
    rows = [line.strip('| ').split(' | ') for line in lines[title + 3:end]]
    names = [r[0] for r in rows]
    assert names == ['upstream nanoGPT', 'this toolkit, speedrun recipe', "recipe without optimizer='muon'"]
    recipe = rows[1]
    assert recipe[4:] == ['+0.0000', '+0.0'] and rows[0][3] == '1.00x'  # each row against upstream and the recipe
    assert all(1.0 < float(r[2]) < 5.0 for r in rows)  # whole-split losses of barely trained models
    assert rows[2][2] != recipe[2] and rows[2][4] != '+0.0000'  # AdamW instead of Muon: another model
    assert picture.read_bytes().startswith(b'\x89PNG') and f'wrote {picture}' in lines
    # each round on its own, with its seed, and whether the recipe reached upstream's loss
    each = lines.index('Each round')
    rounds = [line.strip('| ').split(' | ') for line in lines[each + 3:each + 6]]
    assert [r[:3] for r in rounds] == [['upstream nanoGPT', '1', '-'], ['this toolkit, speedrun recipe', '1', '1337'],
                                       ["recipe without optimizer='muon'", '1', '1337']]
    assert [r[4] for r in rounds] == [r[2] for r in rows]  # one round: its losses are the medians
    assert "target: a whole-split val loss of at most 1.898 (upstream's own): the recipe reached it in 0 of 1 round(s)" in lines
    assert any(line.startswith('cpu: this CPU (') and 'bfloat16' in line for line in lines)
