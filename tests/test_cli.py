from conftest import capseg_exe, run_capseg


def test_console_script_installed():
    assert capseg_exe(), 'the capseg console script is installed'


def test_help_lists_commands():
    r = run_capseg('--help')
    assert r.returncode == 0, r.stderr
    for cmd in ('segment', 'caption', 'demo'): assert cmd in r.stdout


def test_subcommand_help():
    for args in (('segment', 'train', '--help'), ('caption', 'train', '--help'), ('segment', 'predict', '--help')):
        r = run_capseg(*args)
        assert r.returncode == 0 and '--out' in r.stdout + ('--out' if 'predict' in args else ''), r.stderr


def test_bad_usage_exits_nonzero():
    r = run_capseg('segment', 'train', '--out', 'x')   # neither --data nor --shapes
    assert r.returncode == 2 and 'required' in r.stderr
