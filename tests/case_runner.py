"""Runs many cases of the project's scripts, each in a process of its own, forked from this one after
torch and numpy are imported: what a new interpreter would spend seconds on, once per case.

A case's process runs its script as `python script args...` does: the working directory, sys.argv,
sys.path[0] (the script's folder), the environment, stdin from /dev/null, stdout and stderr to files,
and the interpreter's ending: an uncaught SystemExit prints its message (unless it is an int) and
sets the exit code, any other exception prints its traceback and exits 1, then the atexit functions
run and the output is flushed. Only the module teardown that follows in a real interpreter (seconds,
with torch loaded) is skipped. A case may also be given resource limits.

$ python case_runner.py cases.json results.json
cases.json: a list of {"cwd", "argv": [script, args...], "env", "rlimits": {"RLIMIT_AS": bytes, ...}, "umask", "timeout"}
(a case still running after timeout seconds, default 120, is killed: exit code -9)
results.json: a list of {"rc", "stdout", "stderr"}, in the same order.
"""

import atexit
import json
import os
import resource
import runpy
import shutil
import signal
import sys
import tempfile
import time
import traceback

import numpy  # noqa: F401  (imported by every script)
import torch  # noqa: F401


def run_case(case, folder):
    out, err = os.path.join(folder, 'stdout'), os.path.join(folder, 'stderr')
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        deadline = time.monotonic() + case.get('timeout', 120)
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:  # a case that should have failed at once is training instead
                os.kill(pid, signal.SIGKILL)
                done = os.waitpid(pid, 0)
                break
            time.sleep(0.02)
        status = done[1]
        with open(out, encoding='utf-8', errors='replace') as f_out, open(err, encoding='utf-8', errors='replace') as f_err:
            return {'rc': os.waitstatus_to_exitcode(status), 'stdout': f_out.read(), 'stderr': f_err.read()}
    try:  # the case's own process, which must never return into the loop over the cases
        run_script(case, out, err)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(70)  # reached only if setting up the case failed (run_script ends with os._exit)


def run_script(case, out, err):
    """From here on the process is `python script args...`."""
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        target = os.open(path, flags, 0o644)
        os.dup2(target, fd)
        os.close(target)
    for name, limit in case.get('rlimits', {}).items():
        resource.setrlimit(getattr(resource, name), (limit, limit))
    if 'umask' in case:
        os.umask(case['umask'])
    os.chdir(case['cwd'])
    os.environ.clear()
    os.environ.update(case['env'])
    script = case['argv'][0]
    sys.argv = list(case['argv'])
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as e:  # what the interpreter does with it (see sys.exit)
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # an uncaught exception: its traceback, exit code 1
        sys.excepthook(*sys.exc_info())
        code = 1
    # the rest of the interpreter's ending, without the seconds it spends tearing down torch's modules
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == '__main__':
    cases_file, results_file = sys.argv[1], sys.argv[2]
    with open(cases_file, encoding='utf-8') as f:
        cases = json.load(f)
    folder = tempfile.mkdtemp()  # not a TemporaryDirectory: its exit-time cleanup would run in every case's process
    results = [run_case(case, folder) for case in cases]
    shutil.rmtree(folder)
    with open(results_file, 'w', encoding='utf-8') as f:
        json.dump(results, f)
