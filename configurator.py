"""
The poor man's configurator, hardened. A script keeps its configuration as plain module globals
with their defaults, then calls

    config = configure(globals(), positive_ints=('batch_size', ...))

which applies, in the order given on the command line, config files (Python that assigns keys) and
--key=value overrides, writes the results back into the script's globals and returns them as a dict
(the config that is logged and saved). For example:

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=false

Every mistake is one line and a non-zero exit: an unknown key (with the closest known ones), a value
of the wrong type (an int is fine for a float; None only where the default is None), a key declared
positive_ints that is not a positive int, a value outside its key's RULES (a learning rate that is
not above 0, a beta of 1, a seed numpy cannot take, ...), a missing config file, a config file that
raises. --help lists every key with its default.
"""

import ast
import difflib
import math
import os
import re
import sys
import types

from nanogpt import ScriptError

CONFIG_TYPES = (bool, int, float, str, type(None))

# The values a key may take, for the keys that scripts share, checked wherever a script has the key:
# key -> (test, what the value must be). NaN fails every test.
RULES = {
    'learning_rate': (lambda v: 0 < v < math.inf, 'a finite number above 0'),
    'min_lr': (lambda v: 0 <= v < math.inf, 'a finite number, 0 or more'),
    'beta1': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'beta2': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'weight_decay': (lambda v: 0 <= v < math.inf, 'a finite number, 0 or more'),
    'grad_clip': (lambda v: 0 <= v < math.inf, 'a finite number, 0 or more (0 turns clipping off)'),
    'warmup_iters': (lambda v: v >= 0, '0 or more'),
    'lr_decay_iters': (lambda v: v >= 0, '0 or more'),
    'dropout': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'seed': (lambda v: 0 <= v < 2**64, 'an integer from 0 to 2**64 - 1 (what numpy and torch take)'),
    'peak_flops': (lambda v: 0 <= v < math.inf, '0 (look the GPU up) or the peak FLOP/s'),
    'burnin': (lambda v: v >= 0, '0 or more'),
    'hellaswag_interval': (lambda v: v >= 0, '0 (never) or more'),
    'temperature': (lambda v: 0 <= v <= 100, 'from 0 (greedy) to 100 (beyond, every token is about as likely)'),
    'top_k': (lambda v: v > 0, 'a positive integer (at least the vocabulary size keeps every token)'),
    'top_p': (lambda v: 0 < v <= 1, 'in (0, 1]'),
    'max_new_tokens': (lambda v: 0 <= v <= 1_000_000, 'from 0 to 1,000,000'),
    'val_fraction': (lambda v: 0 < v < 1, 'between 0 and 1 (exclusive)'),
    'cooldown_iters': (lambda v: v >= 0, '0 (the cosine) or more'),
    'logit_softcap': (lambda v: 0 <= v < math.inf, '0 (off) or a finite number above 0'),
    'muon_learning_rate': (lambda v: 0 < v < math.inf, 'a finite number above 0'),
    'muon_momentum': (lambda v: 0 <= v < 1, 'in [0, 1)'),
    'optimizer': (lambda v: v in ('adamw', 'muon'), "'adamw' or 'muon'"),
    'mlp_activation': (lambda v: v in ('gelu', 'relu2'), "'gelu' or 'relu2'"),
    'compile_mode': (lambda v: v in ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'),
                     "'default', 'reduce-overhead', 'max-autotune' or 'max-autotune-no-cudagraphs'"),
    'split': (lambda v: v in ('train', 'val'), "'train' or 'val'"),
    'data_order': (lambda v: v in ('random', 'sequential'), "'random' or 'sequential'"),
}
TRUE_WORDS, FALSE_WORDS = ('true', 'yes', 'on', '1'), ('false', 'no', 'off', '0')


def config_keys(g):
    """The config of a script: its public globals of plain types, in order of definition, except
    UPPER_CASE constants (which scripts import, such as GPT2_VOCAB_SIZE)."""
    return {k: v for k, v in g.items() if not k.startswith('_') and not k.isupper() and isinstance(v, CONFIG_TYPES)}


def closest(key, known):
    matches = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(matches)}?" if matches else "; --help lists the keys"


def check_value(key, value, default, where):
    """value converted to the type of default, or an error naming the key. Accepted: the same type,
    int for float, anything for a key whose default is None, and for booleans also 0/1 and the words
    true/false (any case). None is a value only where it is the default."""
    if default is None:
        return value
    if value is None:
        raise ScriptError(f"{key} needs a value, not None ({where})")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
            return value.lower() in TRUE_WORDS
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > 1000:  # every int here must also convert to a float (up to about 1e308)
                raise ScriptError(f"{key} is an integer of {value.bit_length():,} bits, too large for this toolkit "
                                  f"({where})")
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ScriptError(f"{key} is an integer of {value.bit_length():,} bits, too large for this toolkit "
                                  f"({where})")
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    raise ScriptError(f"{key} expects {type(default).__name__}, got {type(value).__name__} {shown(value)} ({where})")


def shown(value, limit=80):
    """value's repr for a message, cut to limit characters, in bounded time whatever a config file assigned (an
    integer of thousands of digits, a list nested in itself)."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"<{value.bit_length():,} bits>"
    text = repr(value) if isinstance(value, (str, int, float, type(None))) else f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + '...'



def parse_override(raw, default):
    """The value of --key=raw: a Python literal where it is one, else the text itself. For keys
    whose default is a string the text is kept as written ('--wandb_run_name=2024' is a name)."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw
    if isinstance(default, str) and value is not None and not isinstance(value, str):
        return raw
    return value


def run_config_file(path, config):
    """The assignments of a config file, executed with the current config visible to it."""
    try:
        with open(path, encoding='utf-8') as f:
            source = f.read()
    except FileNotFoundError:
        raise ScriptError(f"config file {path} not found")
    except (OSError, UnicodeDecodeError) as e:
        raise ScriptError(f"cannot read config file {path}: {e}")
    namespace = dict(config)
    try:
        exec(compile(source, path, 'exec'), namespace)
    except SystemExit:  # a ScriptError of its own, or exit()
        raise
    except BaseException as e:
        line = ''
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == path:
                line = f" at line {tb.tb_lineno}"
            tb = tb.tb_next
        if isinstance(e, SyntaxError):
            line = f" at line {e.lineno}"
        raise ScriptError(f"config file {path} failed{line}: {type(e).__name__}: {e}")
    return source, {k: v for k, v in namespace.items()
                    if not k.startswith('_') and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def key_comments(script_path):
    """'key = value  # comment' lines of the script, for --help."""
    comments = {}
    try:
        with open(script_path, encoding='utf-8') as f:
            for line in f:
                m = re.match(r'^(\w+)\s*=.*?#\s*(.+)$', line)
                if m:
                    comments.setdefault(m.group(1), m.group(2).strip())
    except (OSError, TypeError):
        pass
    return comments


def print_help(script, defaults):
    comments = key_comments(script)
    width = max(len(k) for k in defaults) + 2
    lines = [f"usage: python {os.path.basename(script or 'script.py')} [config/file.py ...] [--key=value ...]",
             "config files and overrides apply in the order given; keys and their defaults:"]
    lines += [f"  --{k.ljust(width)} {v!r}" + (f"  # {comments[k]}" if k in comments else '') for k, v in defaults.items()]
    try:
        print('\n'.join(lines), flush=True)
    except BrokenPipeError:  # python train.py --help | head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def configure(g, argv=None, verbose=True, positive_ints=()):
    """Applies config files and --key=value overrides from argv (default sys.argv[1:]) to the
    config globals of g, checks that the keys named in positive_ints are positive ints and that
    every key with RULES follows them, and returns the final config as a dict."""
    argv = sys.argv[1:] if argv is None else argv
    config = config_keys(g)
    defaults = dict(config)
    if any(a in ('-h', '--help') for a in argv):
        print_help(g.get('__file__'), defaults)
        raise SystemExit(0)
    for arg in argv:
        if arg.startswith('--'):
            key, eq, raw = arg[2:].partition('=')
            if key not in config:
                raise ScriptError(f"unknown config key {key!r} on the command line{closest(key, config)}")
            if not eq:
                raise ScriptError(f"{arg} needs a value: --{key}=VALUE")
            value = check_value(key, parse_override(raw, defaults[key]), defaults[key], 'on the command line')
            if verbose:
                print(f"Overriding: {key} = {value!r}")
            config[key] = value
        elif '=' in arg and not arg.endswith('.py'):
            raise ScriptError(f"{arg!r}: overrides are written --key=value")
        else:
            source, assigned = run_config_file(arg, config)
            for key, value in assigned.items():
                if key not in config:
                    raise ScriptError(f"unknown config key {key!r} in {arg}{closest(key, config)}")
                config[key] = check_value(key, value, defaults[key], f"in {arg}")
            if verbose:
                print(f"Overriding config with {arg}:")
                print(source.rstrip())
    for key in positive_ints:
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] <= 0:
            raise ScriptError(f"{key} must be a positive integer, got {shown(config[key])}")
    for key, (test, requirement) in RULES.items():
        if key in config and config[key] is not None and not test(config[key]):
            raise ScriptError(f"{key} must be {requirement}, got {shown(config[key])}")
    g.update(config)
    return config
