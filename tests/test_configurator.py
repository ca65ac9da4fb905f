import pytest

from configurator import configure


def defaults():
    return {'__file__': 'train.py', 'batch_size': 12, 'learning_rate': 6e-4, 'compile': True, 'out_dir': 'out',
            'wandb_run_name': 'gpt2', 'top_k': None, 'math': __import__('math')}


def test_overrides_parse_literals_and_update_globals():
    g = defaults()
    config = configure(g, ['--batch_size=32', '--learning_rate=1e-3', '--out_dir=out-x'], verbose=False)
    assert g['batch_size'] == 32 and g['learning_rate'] == 1e-3 and g['out_dir'] == 'out-x'
    assert config == {'batch_size': 32, 'learning_rate': 1e-3, 'compile': True, 'out_dir': 'out-x',
                      'wandb_run_name': 'gpt2', 'top_k': None}


def test_unknown_key_names_the_closest_ones():
    with pytest.raises(SystemExit, match=r"unknown config key 'batchsize'.*did you mean batch_size"):
        configure(defaults(), ['--batchsize=3'], verbose=False)


def test_unknown_key_in_a_config_file(tmp_path):
    path = tmp_path / 'c.py'
    path.write_text("batch_size = 4\nlearnin_rate = 1e-3\n")
    with pytest.raises(SystemExit, match=r"unknown config key 'learnin_rate' in .*c.py.*learning_rate"):
        configure(defaults(), [str(path)], verbose=False)


@pytest.mark.parametrize('arg,message', [
    ('--batch_size=3.5', "batch_size expects int, got float 3.5"),
    ('--batch_size=3.0', "batch_size expects int, got float 3.0"),  # an int key takes ints only
    ('--batch_size=abc', "batch_size expects int, got str 'abc'"),
    ('--batch_size=True', "batch_size expects int, got bool True"),  # booleans are not numbers
    ('--learning_rate=True', "learning_rate expects float, got bool True"),
    ('--learning_rate=1e-3x', "learning_rate expects float, got str '1e-3x'"),
    ('--compile=2', "compile expects bool, got int 2"),
    ('--out_dir=None', "out_dir needs a value, not None (on the command line)"),  # None only where it is the default
    ('--batch_size=None', "batch_size needs a value, not None"),
])
def test_wrong_type_is_an_error(arg, message):
    with pytest.raises(SystemExit) as e:
        configure(defaults(), [arg], verbose=False)
    assert str(e.value).startswith('error: ' + message), str(e.value)


def test_int_for_float_and_anything_for_a_none_default():
    g = defaults()
    configure(g, ['--learning_rate=1', '--top_k=5'], verbose=False)
    assert g['learning_rate'] == 1.0 and isinstance(g['learning_rate'], float)
    assert g['top_k'] == 5
    g = defaults()
    configure(g, ['--top_k=None'], verbose=False)
    assert g['top_k'] is None


def test_positive_ints_are_checked_after_every_override(tmp_path):
    path = tmp_path / 'c.py'
    path.write_text("batch_size = 0\n")
    configure(defaults(), [str(path), '--batch_size=2'], verbose=False, positive_ints=('batch_size',))  # fixed later on
    for bad in ('0', '-3'):
        with pytest.raises(SystemExit, match=rf"^error: batch_size must be a positive integer, got {bad}$"):
            configure(defaults(), [f'--batch_size={bad}'], verbose=False, positive_ints=('batch_size',))
    g = defaults()
    with pytest.raises(SystemExit):
        configure(g, [str(path)], verbose=False, positive_ints=('batch_size',))
    assert g['batch_size'] == 12  # the script's globals are left alone


@pytest.mark.parametrize('text,value', [('false', False), ('False', False), ('0', False), ('true', True),
                                        ('True', True), ('1', True)])
def test_booleans(text, value):
    g = defaults()
    configure(g, [f'--compile={text}'], verbose=False)
    assert g['compile'] is value


def test_boolean_rejects_other_values():
    with pytest.raises(SystemExit, match=r"compile expects bool"):
        configure(defaults(), ['--compile=2'], verbose=False)


def test_values_may_contain_equals_and_strings_stay_strings():
    g = defaults()
    configure(g, ['--out_dir=a=b', '--wandb_run_name=2024'], verbose=False)
    assert g['out_dir'] == 'a=b' and g['wandb_run_name'] == '2024'


def test_config_file_then_overrides_in_order(tmp_path):
    path = tmp_path / 'c.py'
    path.write_text("import math\nbatch_size = 4\nlearning_rate = batch_size * 1e-4\n_helper = 3\n")
    g = defaults()
    config = configure(g, [str(path), '--batch_size=8'], verbose=False)
    assert config['batch_size'] == 8 and config['learning_rate'] == pytest.approx(4e-4)
    config = configure(defaults(), ['--batch_size=8', str(path)], verbose=False)
    assert config['batch_size'] == 4


def test_config_file_type_checked(tmp_path):
    path = tmp_path / 'c.py'
    path.write_text("batch_size = '4'\n")
    with pytest.raises(SystemExit, match=r"batch_size expects int, got str '4' \(in .*c.py\)"):
        configure(defaults(), [str(path)], verbose=False)


def test_missing_and_failing_config_files(tmp_path):
    with pytest.raises(SystemExit, match=r"config file .*nope.py not found"):
        configure(defaults(), [str(tmp_path / 'nope.py')], verbose=False)
    path = tmp_path / 'bad.py'
    path.write_text("batch_size = 4\nx = 1 / 0\n")
    with pytest.raises(SystemExit, match=r"config file .*bad.py failed at line 2: ZeroDivisionError"):
        configure(defaults(), [str(path)], verbose=False)
    path.write_text("batch_size = = 4\n")
    with pytest.raises(SystemExit, match=r"bad.py failed at line 1: SyntaxError"):
        configure(defaults(), [str(path)], verbose=False)


def test_malformed_arguments():
    with pytest.raises(SystemExit, match=r"--compile needs a value"):
        configure(defaults(), ['--compile'], verbose=False)
    with pytest.raises(SystemExit, match=r"written --key=value"):
        configure(defaults(), ['batch_size=3'], verbose=False)


def test_help_lists_every_key_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        configure(defaults(), ['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in ('batch_size', 'learning_rate', 'compile', 'out_dir', 'wandb_run_name', 'top_k'):
        assert f'--{key}' in out
    assert 'math' not in out.split('keys')[1]
