"""The README and docs/ hold together: every link between them resolves (files and #anchors, by
GitHub's anchor rules), every docs page is reachable from the README and each README section points
at its reference, and each command they show runs a script that exists, with config files that exist
and only keys that script has (as its own --help lists them, through configurator.py)."""

import json
import re
import shlex
import subprocess
import sys


from conftest import REPO

PAGES = [REPO / 'README.md'] + sorted((REPO / 'docs').glob('*.md'))
FENCE = re.compile(r'^( *)```(\w*)\n(.*?)^\1```$', re.M | re.S)
CODE_SPAN = re.compile(r'`([^`\n]+)`')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def prose(text):
    """The text with its fenced code blocks blanked out (their lines kept, so line numbers hold)."""
    return FENCE.sub(lambda m: '\n' * m.group(0).count('\n'), text)


def slug(heading):
    """GitHub's anchor for a heading: the text as rendered (links to their text, code spans to their
    contents), lower-cased, everything but letters, digits, spaces, '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)
    text = re.sub(r'<[^>]+>', '', text).replace('`', '').strip().lower()
    return ''.join(c for c in text if c.isalnum() or c in ' -_').replace(' ', '-')


def anchors(path):
    """The anchors of a Markdown file's headings, numbered -1, -2, ... where a slug repeats, as GitHub does."""
    seen, result = {}, set()
    for line in prose(path.read_text(encoding='utf-8')).splitlines():
        m = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            result.add(base if n == 0 else f"{base}-{n}")
    return result


def links(path):
    """The link targets of a Markdown file outside code, with their line numbers."""
    found = []
    for i, line in enumerate(prose(path.read_text(encoding='utf-8')).splitlines(), 1):
        line = CODE_SPAN.sub('code', line)
        found += [(i, target) for target in LINK.findall(line)]
    return found


def broken_links(path):
    problems = []
    for line, target in links(path):
        if re.match(r'^[a-z]+:', target):  # https:, mailto: ... (not checked offline)
            continue
        file, _, anchor = target.partition('#')
        resolved = (path.parent / file).resolve() if file else path
        where = f"{path.relative_to(REPO)}:{line}: {target}"
        if not resolved.exists():
            problems.append(f"{where}: no such file")
        elif anchor and resolved.suffix == '.md' and anchor not in anchors(resolved):
            problems.append(f"{where}: no heading with anchor #{anchor} in {resolved.relative_to(REPO)}")
    return problems


def test_links_resolve():
    problems = [p for page in PAGES for p in broken_links(page)]
    assert not problems, '\n'.join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    readme = REPO / 'README.md'
    linked = {(readme.parent / target.partition('#')[0]).resolve() for _, target in links(readme)}
    assert not [p.name for p in PAGES[1:] if p.resolve() not in linked]


def test_each_readme_section_says_where_its_reference_is():
    sections = re.split(r'^## ', prose((REPO / 'README.md').read_text(encoding='utf-8')), flags=re.M)[1:]
    assert len(sections) >= 10
    without = [s.splitlines()[0] for s in sections if not re.search(r'\]\(docs/[\w.-]+\.md', s)]
    assert not without, f"README sections that do not say where their reference is: {without}"


def commands(path):
    """(line, argv) of each python/torchrun command shown in a Markdown file: in code blocks (shell ones,
    not Python or output) and in code spans, split at &&, ||, ; and |, with continuation lines joined."""
    text = path.read_text(encoding='utf-8')
    snippets = []
    for m in FENCE.finditer(text):
        if m.group(2) in ('', 'sh', 'bash', 'shell', 'console'):
            first = text[:m.start()].count('\n') + 2
            lines = m.group(3).splitlines()
            joined, start = '', first
            for i, line in enumerate(lines):
                if not joined:
                    start = first + i
                joined += line.rstrip()
                if joined.endswith('\\'):
                    joined = joined[:-1]
                    continue
                snippets.append((start, joined.removeprefix('$ ')))
                joined = ''
    for i, line in enumerate(prose(text).splitlines(), 1):
        snippets += [(i, span) for span in CODE_SPAN.findall(line) if re.match(r'(python3?|torchrun) ', span)]
    found = []
    for line, snippet in snippets:
        if not re.search(r'(^|\s)(python3?|torchrun) ', snippet):  # output, or other tools
            continue
        lexer = shlex.shlex(snippet, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError as e:
            raise AssertionError(f"{path.relative_to(REPO)}:{line}: {e} in {snippet!r}")
        command = []
        for word in words + [';']:
            if word and set(word) <= set('&|;'):
                if command:
                    found.append((line, command))
                command = []
            else:
                command.append(word)
    result = []
    for line, argv in found:
        while argv and re.match(r'^\w+=', argv[0]):  # VAR=value before the command
            argv = argv[1:]
        if not argv or argv[0] not in ('python', 'python3', 'torchrun'):
            continue
        scripts = [i for i, a in enumerate(argv) if a.endswith('.py') and not a.startswith('-')]
        if argv[0].startswith('python') and (len(argv) < 2 or argv[1].startswith('-')):
            continue  # python -m pytest, python -c ...
        if scripts:
            result.append((f"{path.relative_to(REPO)}:{line}", argv[scripts[0]:]))
    return result


def shown_commands():
    return [c for page in PAGES for c in commands(page)]


def script_keys(scripts):
    """{script: its config keys}, from each script's own --help (configurator's listing of its
    globals), all run in one Python process so that torch is imported once."""
    listing = r'''
import contextlib, io, json, re, runpy, sys
keys = {}
for script in sys.argv[1:]:
    sys.argv = [script, '--help']
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(script, run_name='__main__')
        except SystemExit:
            pass
    keys[script] = re.findall(r'^  --(\w+) ', out.getvalue(), re.M)
print(json.dumps(keys))
'''
    run = subprocess.run([sys.executable, '-c', listing, *scripts], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_readme_shows_commands():
    """The command parser finds what it should (a parser that found nothing would check nothing)."""
    shown = [argv for where, argv in shown_commands() if where.startswith('README.md')]
    assert ['data/shakespeare_char/prepare.py'] in shown
    assert ['train.py', 'config/train_shakespeare_char_cpu.py'] in shown
    assert ['sample.py', '--out_dir=out-shakespeare-char'] in shown
    assert any(argv[0] == 'train.py' and 'config/train_gpt2.py' in argv for argv in shown)  # under torchrun


def test_commands_name_scripts_configs_and_keys_that_exist():
    shown = shown_commands()
    missing = [f"{where}: {argv[0]} does not exist" for where, argv in shown if not (REPO / argv[0]).is_file()]
    assert not missing, '\n'.join(missing)
    configurable = sorted({argv[0] for _, argv in shown if 'configure(globals()' in (REPO / argv[0]).read_text()})
    keys = script_keys(configurable)
    assert all(keys[s] for s in configurable), keys  # each listing was read
    problems = []
    for where, argv in shown:
        script, args = argv[0], [a.strip('[]') for a in argv[1:]]  # [--optional=value]
        for arg in args:
            if arg.startswith('--'):
                key = arg[2:].partition('=')[0]
                if script not in keys:
                    problems.append(f"{where}: {script} takes no --key=value settings, got {arg}")
                elif key != 'help' and key not in keys[script]:
                    problems.append(f"{where}: {script} has no config key {key!r}")
            elif arg.endswith('.py') and script in keys and not (REPO / arg).is_file():
                problems.append(f"{where}: config file {arg} does not exist")
    assert not problems, '\n'.join(problems)

