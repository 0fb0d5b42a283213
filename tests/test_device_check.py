"""bench/device_check.sh: the GPU check's CPU dry path (tiny sizes) writes the JSON a GPU run writes."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_dry_run_writes_every_stage_decoding_and_the_test_counts(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable)  # the interpreter running the tests (make test: .venv's)
  proc = subprocess.run(['bash', str(REPO / 'bench' / 'device_check.sh'), '--dry', str(tmp_path)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=3000)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / 'device_check.json').read_text())
  assert result['dry'] is True and result['platform'] == 'cpu'
  assert result['tests']['passed'] == result['tests']['tests'] == 1
  assert [r['stage'] for r in result['train']] == ['prompt_tuning', 'promot_stage2', 'finetune']
  for row in result['train']:
    assert row['scan_layers'] is True and row['activation_dtype'] == 'bfloat16'
    assert row['remat_policy'] in ('none', 'minimal', 'full')
    assert row['step_seconds'] > 0 and row['model_flops_per_step'] > 0
    assert row['compiled_peak_bytes'] > 0
    assert row['mfu'] is None  # a CPU has no entry in the bfloat16 peak table
  # Stage 1 trains the prompt only: fewer FLOPs per step than stage 2 on the same shapes.
  assert result['train'][0]['model_flops_per_step'] < result['train'][1]['model_flops_per_step']
  assert result['decode']['tokens_per_second'] > 0
  assert result['decode']['tokens_shape'] == [2, 4]
  assert result['goal_finetune_mfu_at_least_0.4'] is None


def test_the_peak_table_knows_the_usual_cards():
  import sys
  sys.path.insert(0, str(REPO / 'bench'))
  import device_check

  assert device_check.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert device_check.peak_flops('NVIDIA H100 PCIe') == 756e12
  assert device_check.peak_flops('NVIDIA A100-SXM4-80GB') == 312e12
  assert device_check.peak_flops('cpu') is None
