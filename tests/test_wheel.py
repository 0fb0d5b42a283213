"""The wheel: `pip wheel .` carries the gin files and task data, and runs without the checkout.

No network: the wheel is built with --no-deps --no-build-isolation, and installed with
--no-deps --no-index into a fresh virtual environment whose only link to the test
environment is a .pth line naming its site-packages folder (a path line adds the folder to
sys.path but runs none of the .pth files in it, so the checkout's editable finder stays
hidden). The console script then runs from a temporary working directory with no PYTHONPATH,
and the test asserts that promot_t5x, its tasks and its gin files come from the wheel.
"""

import email.parser
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp('wheel')
  # A copy of the sources: setuptools builds in ./build, whose stale files would join the wheel.
  source = tmp_path_factory.mktemp('source') / 'promot-t5x'
  top_level = {'.git', '.venv', 'build', '.pp', 'runs', 'tmp', '.cache'}  # outputs, environments

  def ignore(directory, names):
    skip = top_level if pathlib.Path(directory) == REPO else set()
    return [n for n in names if n in skip or n == '__pycache__' or n.endswith('.egg-info')]

  shutil.copytree(REPO, source, ignore=ignore)
  r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', str(source), '--no-deps', '--no-build-isolation',
                      '--no-index', '-w', str(out), '-q'], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout + r.stderr
  wheels = list(out.glob('promot_t5x-*.whl'))
  assert len(wheels) == 1, wheels
  return wheels[0]


def test_the_wheel_carries_gin_files_and_task_data_and_no_kernel_dependencies(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    metadata = next(n for n in names if n.endswith('.dist-info/METADATA'))
    meta = email.parser.Parser().parsestr(z.read(metadata).decode())
  repo_gins = {str(p.relative_to(REPO / 'gin')) for p in (REPO / 'gin').rglob('*.gin')}
  assert repo_gins and {f'promot_t5x_gin/{g}' for g in repo_gins} <= names
  assert 'promot_t5x_tasks/synthetic/data/spm.model' in names
  assert 'promot_t5x_tasks/data/conjugate/probe.json' in names
  assert 'promot_t5x/contrib/cpu_kernels/native/gemm.cc' in names
  assert not any(n.startswith(('tests/', 'bench/', 'gin/')) for n in names)
  requires = meta.get_all('Requires-Dist')
  required = [r for r in requires if 'extra ==' not in r]
  assert any(r.startswith('jax') for r in required)
  for heavy in ('mkl', 'tbb', 'torch', 'transformers', 'peft', 'intel-openmp'):
    assert not any(r.split(';')[0].replace(' ', '').startswith(heavy) for r in required), (heavy, required)
  assert not any('==' in r for r in required), required  # compatible ranges, not pins
  cpu_extra = [r for r in requires if 'extra == "cpu"' in r]
  assert any(r.startswith('mkl') for r in cpu_extra) and any(r.startswith('tbb') for r in cpu_extra)
  assert set(meta.get_all('Provides-Extra')) >= {'tpu', 'cuda12', 'cpu', 'test', 'bench'}


def test_the_installed_wheel_runs_promot_inspect_without_the_checkout(wheel, tmp_path):
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=120)
  py = venv / 'bin' / 'python'
  site = pathlib.Path(subprocess.run([str(py), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                                     capture_output=True, text=True, check=True).stdout.strip())
  # The test environment's dependencies (jax, gin, seqio, ...), without running its .pth files.
  (site / '_test_environment.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', 'PROMOT_WORKTREE')}
  env['PATH'] = f'{venv / "bin"}:{env.get("PATH", "")}'
  r = subprocess.run([str(py), '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', str(wheel)],
                     capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
  assert r.returncode == 0, r.stdout + r.stderr

  workdir = tmp_path / 'elsewhere'
  workdir.mkdir()
  where = subprocess.run(
      [str(py), '-c', 'import sys, promot_t5x, promot_t5x_tasks\n'
       'from promot_t5x import gin_utils\n'
       'print(promot_t5x.__file__); print(promot_t5x_tasks.__file__); print(gin_utils.gin_dir())\n'
       'print("\\n".join(sys.path))'],
      capture_output=True, text=True, env=env, cwd=workdir, timeout=300)
  assert where.returncode == 0, where.stderr
  lines = where.stdout.splitlines()
  for line in lines[:3]:
    assert pathlib.Path(line).resolve().is_relative_to(site.resolve()), (line, site)
  assert pathlib.Path(lines[2]).name == 'promot_t5x_gin'
  # The test environment's site-packages may lie inside the checkout (make test's .venv); it is on the
  # path for the dependencies only (its .pth files, the editable install's among them, are not run).
  test_site = pathlib.Path(sysconfig.get_paths()['purelib']).resolve()
  for entry in lines[3:]:
    path = pathlib.Path(entry).resolve() if entry else None
    if path is None or path == test_site:
      continue
    assert not path.is_relative_to(REPO), f'checkout on sys.path: {entry}'

  r = subprocess.run([str(venv / 'bin' / 'promot-inspect'), '--gin_file=models/mt5_xxl.gin'],
                     capture_output=True, text=True, env=env, cwd=workdir, timeout=600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
  assert 'emb 4096, 64 heads x 64, mlp 10240, 24+24 layers, vocab 250112' in r.stdout
  assert 'total parameters: 12,921,057,280' in r.stdout


def test_make_run_installs_no_extras_and_make_test_the_test_extras(tmp_path):
  def plan(target):
    r = subprocess.run(['make', '-n', '-B', target, f'VENV={tmp_path / "venv"}'], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if ' -m pip install' in line and 'requirements.lock' in line]

  run, test = plan('run'), plan('test')
  assert len(run) == 1 and run[0].rstrip().endswith('-e .'), run
  assert len(test) == 1 and "'.[test,cpu]'" in test[0], test


def test_no_test_reads_outside_the_repository():
  """Every fixture lives in tests/testdata/: a clone with nothing beside it passes `make test`."""
  pattern = re.compile(r"\.\./shared|shared/fixtures|/work/|parents\[[3-9]\]|'shared'")
  offenders = []
  for path in sorted((REPO / 'tests').rglob('*.py')) + sorted((REPO / 'tests').rglob('*.gin')):
    for n, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line) and path.name != 'test_wheel.py':
        offenders.append(f'{path.relative_to(REPO)}:{n}: {line.strip()}')
  assert not offenders, offenders
  assert (REPO / 'tests' / 'testdata' / 'sentencepiece.model').is_file()
  assert (REPO / 'tests' / 'testdata' / 't5x_legacy_t5_1_1_tiny' / 'checkpoint_3' / 'checkpoint').is_file()
