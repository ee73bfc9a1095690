"""Every command the README, INSTALL.md and docs/ show, checked as a user would type it.

main.py's commands (and tpu/launch.sh train's) go through main.py's own flags, their config
file with its overrides, and the start-up checks (train.check_config); `python -m MODULE`
commands name a module whose --helpfull (or --help) lists every flag they pass (and their
--config overrides name fields of the config); make's targets are the Makefile's; `bash
SCRIPT` names one of its scripts; anything else is a program this project does not ship,
named in EXTERNAL. Placeholders (DIR, $VAR, gs://...) are taken as written: they are
strings wherever a path goes. What the commands then do is tested where their subject is
(test_train, test_visualize, test_benchmarks, ...).
"""

import functools
import glob
import os
import re
import shlex
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

import main
from tests.conftest import ROOT
import train

DOCUMENTS = ['README.md', 'INSTALL.md', *sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))]
# Programs the documentation shows that this project does not ship.
EXTERNAL = ('pip', 'img2dataset', 'gcloud', 'tfds', 'git', 'export', 'source', 'wait',
            'cb/bin/pip', 'cb/bin/clip_benchmark', '.venv/bin/pip')
PYTHONS = ('python', 'python3', '.venv/bin/python')
_SEPARATORS = {';', '&&', '&', '|', '||', 'do', 'done', 'then', 'fi'}


def _inline_commands(text):
  return [m.group(1) for m in re.finditer(r'`((?:python3? |make )[^`]+)`', text)]


def _block_commands(text):
  commands = []
  for block in re.findall(r'```(?:bash|sh)\n(.*?)```', text, re.S):
    pending = ''
    for line in re.sub(r'\\\n', ' ', block).split('\n'):
      pending = f'{pending}\n{line}' if pending else line
      try:
        shlex.split(pending, comments=True)
      except ValueError:  # a quotation that goes on over the next line
        continue
      if pending.strip():
        commands.append(pending)
      pending = ''
  return commands


def _segments(line):
  """The simple commands of one shell line, comments and env assignments dropped."""
  lexer = shlex.shlex(line, posix=True, punctuation_chars=';&|')
  lexer.whitespace_split, lexer.commenters = True, '#'
  words = list(lexer)
  segments, current = [], []
  for word in words + [';']:
    if word in _SEPARATORS:
      if current:
        segments.append(current)
      current = []
    elif not current and re.match(r'^[A-Z_][A-Z0-9_]*=', word):
      continue  # VAR=value before a command
    elif not current and word == 'for':
      current = ['for']
    else:
      current.append(word)
  return [s for s in segments if s and s[0] != 'for']


def documented_commands():
  found = []
  for document in DOCUMENTS:
    with open(os.path.join(ROOT, document), encoding='utf-8') as f:
      text = f.read()
    for line in _block_commands(text) + _inline_commands(text):
      # An optional flag is shown in brackets: check it as if given.
      line = re.sub(r'\[(--[^\]\s]+)\]', r'\1', line)
      found += [(document, segment) for segment in _segments(line)]
  return found


def _main_config(args):
  argv = ['main.py', *args]
  flag_values = flags.FlagValues()
  main.define_flags(flag_values, argv)
  flag_values(argv)
  return flag_values.config


@functools.lru_cache(maxsize=None)
def _module_flags(module):
  """The flags `python -m module --helpfull` (absl) or `--help` (argparse) lists."""
  for request in ('--helpfull', '--help'):
    done = subprocess.run([sys.executable, '-m', module, request], cwd=ROOT, text=True,
                          capture_output=True, timeout=300)
    listed = set(re.findall(r'--(?:\[no\])?([A-Za-z_][\w.]*)', done.stdout))
    # absl ends a help request with status 1.
    if done.returncode in (0, 1) and listed:
      return listed
  raise AssertionError(f'python -m {module} lists no flags: {done.stderr[-2000:]}')


def _check_config_overrides(args):
  """--config=FILE with its --config.FIELD=VALUE overrides loads and names known fields."""
  argv = ['prog', *(a for a in args if a.startswith('--config'))]
  if any(a.startswith('--config=') for a in argv):
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, '', flag_values=flag_values,
                                    sys_argv=argv)
    flag_values(argv)


def _check(document, words):
  program, args = words[0], words[1:]
  where = f'{document}: {shlex.join(words)}'
  if program in PYTHONS and args[:1] == ['main.py']:
    if set(args[1:]) & set(main.HELP_FLAGS):
      return  # main.parse_flags answers it (test_user_errors)
    train.check_config(_main_config(args[1:]))
  elif program == 'tpu/launch.sh':
    assert args[0] in ('install', 'train'), where
    if args[0] == 'train':
      train.check_config(_main_config(['--distributed', *args[1:]]))
  elif program in PYTHONS and args[:1] == ['-m']:
    module, module_args = args[1], args[2:]
    if module in ('venv', 'pytest', 'pip'):
      return
    assert os.path.isfile(os.path.join(ROOT, *module.split('.')) + '.py'), where
    known = _module_flags(module)
    for arg in module_args:
      name = arg[2:].split('=')[0]
      if arg.startswith('--') and not name.startswith('config.'):
        assert name in known, f'{where}: --{name} is not a flag of {module}'
    _check_config_overrides(module_args)
  elif program in PYTHONS and args[:1] == ['-c']:
    return
  elif program == 'bash':
    assert os.path.isfile(os.path.join(ROOT, args[0])), f'{where}: no script {args[0]}'
  elif program == 'make':
    with open(os.path.join(ROOT, 'Makefile')) as f:
      targets = set(re.findall(r'^([\w-]+):', f.read(), re.M))
    for arg in args:
      assert '=' in arg or arg in targets, f'{where}: no make target {arg}'
  else:
    assert program in EXTERNAL, f'{where}: an unknown program {program!r}'


def test_the_documents_show_commands():
  commands = documented_commands()
  shown = {document for document, _ in commands}
  assert {'README.md', 'docs/training.md', 'docs/coming-from-flip.md'} <= shown
  assert any(words[:2] == ['python', 'main.py'] for _, words in commands)


@pytest.mark.parametrize('document,words', documented_commands(),
                         ids=lambda x: x if isinstance(x, str) else ' '.join(x)[:80])
def test_every_documented_command_is_valid(document, words):
  _check(document, words)


def test_a_wrong_command_would_be_caught():
  with pytest.raises(Exception):
    _check('doc', ['python', 'main.py', '--workdir=d', '--config=configs/tiny.py',
                   '--config.no_such_field=1'])
  with pytest.raises(AssertionError):
    _check('doc', ['python', '-m', 'tools.visualize', '--no_such_flag=1'])
  with pytest.raises(AssertionError):
    _check('doc', ['make', 'no-such-target'])
