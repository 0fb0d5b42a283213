"""promot-memory-plan: per-device memory of the real train step, planned by compiling it.

A tiny T5 on the 8 fake CPU devices of the test process stands in for mT5
XXL on a pod; the exact (uncompiled) part runs for mT5 XXL itself.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from promot_t5x import memory_plan

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ('tests/testdata/tiny_model.gin',)
# The model gin needs a SentencePiece path; planning never builds the vocabulary.
TINY_BINDINGS = ("SPM_PATH = 'unused.model'",)
GiB = 2 ** 30


def tiny_setting(**changes) -> memory_plan.PlanSetting:
  values = dict(gin_files=TINY, gin_bindings=TINY_BINDINGS, mesh_data=4, mesh_model=2,
                batch_size=8, input_length=16, target_length=8, prompt_length=4,
                stages=('prompt_tuning', 'finetune'))
  values.update(changes)
  return memory_plan.PlanSetting(**values)


def test_compiled_plan_shows_what_stage_1_saves():
  stage1, finetune = memory_plan.plan_mesh(tiny_setting())
  assert (stage1.stage, finetune.stage) == ('prompt_tuning', 'finetune')
  # Stage 1 trains only the 4 x 16 prompt (replicated: its axes map to no mesh
  # axis), so its gradients are one float32 prompt; fine-tuning pays for every
  # model parameter.
  assert stage1.trainable_params == 4 * 16
  assert stage1.gradient_bytes == 4 * 16 * 4
  assert finetune.trainable_params == finetune.total_params
  assert stage1.opt_state_bytes < finetune.opt_state_bytes / 10
  assert stage1.gradient_bytes < finetune.gradient_bytes / 10
  # The frozen model is still held (as parameters, not as trainable state).
  assert stage1.params_frozen_bytes > 0 and finetune.params_frozen_bytes == 0
  # No weight gradients in stage 1: the compiled step needs fewer temporaries.
  assert stage1.temp_bytes < finetune.temp_bytes
  # The compiler's argument size is what the shardings say, byte for byte
  # (stage 1 may drop prompt_index: with one prompt the index is unused).
  assert finetune.argument_bytes == finetune.state_bytes + finetune.batch_bytes
  assert stage1.state_bytes <= stage1.argument_bytes <= stage1.state_bytes + stage1.batch_bytes
  assert finetune.peak_bytes == (finetune.argument_bytes + finetune.output_bytes
                                 - finetune.alias_bytes + finetune.temp_bytes)
  assert finetune.fit(16) == 'yes'


def test_batch_that_does_not_split_over_data_and_microbatches_is_rejected():
  with pytest.raises(ValueError, match='divisible by data x microbatches'):
    tiny_setting(batch_size=8, mesh_data=4, num_microbatches=4)


def test_exact_state_of_mt5_xxl_on_64_devices_needs_no_compile():
  setting = memory_plan.PlanSetting(gin_files=('gin/models/mt5_xxl.gin',), mesh_data=8,
                                    mesh_model=8, compile=False)
  stage1, stage2, finetune = memory_plan.plan_mesh(setting)
  assert finetune.total_params == 12_921_057_280  # mT5 XXL
  assert stage1.trainable_params == 100 * 4096  # the prompt
  # Every device holds ~1/8 of the float32 parameters (vocab, heads, MLP split
  # 8 ways), stage 1 included: the frozen model must be on the devices too.
  for plan in (stage1, stage2, finetune):
    assert 5.9 * GiB < plan.params_bytes < 6.1 * GiB
  # Stage 1: no gradients or Adafactor state for the 12.9B frozen parameters.
  assert stage1.gradient_bytes == 100 * 4096 * 4
  assert stage1.opt_state_bytes < 2 * 2 ** 20
  assert finetune.gradient_bytes > 5.9 * GiB
  assert finetune.opt_state_bytes > stage1.opt_state_bytes * 4
  # Not compiled: fits says "?" unless even the exact state is too big.
  assert finetune.fit(80) == '?' and finetune.fit(8) == 'no'


def test_command_prints_a_table_and_writes_json(tmp_path):
  out = tmp_path / 'plan.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'promot_t5x.memory_plan', '--gin_file=' + TINY[0],
       '--gin.SPM_PATH=unused.model', '--mesh=4x2', '--mesh=2x2', '--batch_size=8',
       '--input_length=16', '--target_length=8', '--prompt_length=4',
       '--stages=prompt_tuning,promot_stage2', '--no_compile', f'--json={out}'],
      cwd=REPO, capture_output=True, text=True, check=True)
  assert '| 4 x 2 | stage 1 (prompt tuning) |' in proc.stdout
  assert '| 2 x 2 | stage 2 (ProMoT) |' in proc.stdout
  plans = json.loads(out.read_text())['plans']
  assert [(p['mesh_data'], p['stage']) for p in plans] == [
      (4, 'prompt_tuning'), (4, 'promot_stage2'), (2, 'prompt_tuning'), (2, 'promot_stage2')]
  assert set(plans[0]['fits']) == {'TPU v4 (32 GiB)', 'TPU v5e (16 GiB)', 'GPU (80 GiB)'}


def test_2d_parameter_partitioning_splits_mt5_xxl_state_over_all_64_devices():
  """parameter_partitioning_dims=2 (embed -> data): 1/64 of the parameters per device, not 1/8."""
  setting = memory_plan.PlanSetting(gin_files=('gin/models/mt5_xxl.gin',), mesh_data=8,
                                    mesh_model=8, compile=False, parameter_partitioning_dims=2,
                                    remat_policy='full', scan_layers=True)
  stage1, stage2, finetune = memory_plan.plan_mesh(setting)
  for plan in (stage1, stage2, finetune):
    assert 0.74 * GiB < plan.params_bytes < 0.77 * GiB
    assert (plan.remat_policy, plan.scan_layers, plan.parameter_partitioning_dims) == (
        'full', True, 2)
  assert 0.74 * GiB < finetune.gradient_bytes < 0.77 * GiB
  assert finetune.total_params == 12_921_057_280  # scanning changes the layout, not the count


def test_compiled_plan_records_the_options_beside_its_sizes():
  plain, = memory_plan.plan_mesh(tiny_setting(stages=('finetune',)))
  scaled, = memory_plan.plan_mesh(tiny_setting(stages=('finetune',), remat_policy='full',
                                               scan_layers=True, parameter_partitioning_dims=2))
  assert (plain.remat_policy, plain.scan_layers, plain.parameter_partitioning_dims) == (
      'none', False, 1)
  assert (scaled.remat_policy, scaled.scan_layers, scaled.parameter_partitioning_dims) == (
      'full', True, 2)
  # 2-D on a 4 x 2 mesh: the embed dimension is also split 4 ways.
  assert scaled.params_bytes < plain.params_bytes / 2
  assert scaled.compile_cpu_seconds > 0
  row = memory_plan.format_table([plain, scaled]).splitlines()[-1]
  assert '| fine-tuning | full | yes | 2 |' in row
