r"""The accelerator check: train steps of each stage and cached decoding, with MFU, as JSON.

  python bench/device_check.py --out=device_check.json            # on a GPU
  python bench/device_check.py --out=dry.json --dry                # tiny sizes, any CPU

`bench/device_check.sh` runs this after the test subset that exercises JAX
on the accelerator. Each stage (stage 1 = prompt tuning, stage 2, standard
fine-tuning) builds the project's `Trainer` as `promot-train` does: a
T5.1.1-style model (T5.1.1 large by default: 24 + 24 layers, emb 1024,
16 heads x 64, MLP 2816, vocabulary 32128, about 780M parameters), bfloat16
activations and float32 parameters, Adafactor as the run gins set it, the
layers scanned and rematerialized with the policy `docs/scale.md` recommends
for the stage. It times `--steps` steps after one warm-up step and reports

  model FLOPs utilization = model FLOPs per step / step seconds / the card's
  bfloat16 dense peak (`PEAK_BF16_FLOPS`; None for a card not listed),

with model FLOPs counted as `bench/common.py` counts them (matmuls only, no
rematerialization). Decoding: greedy decoding with the key/value cache
(`EncoderDecoderModel.predict_batch`), `decode_batch` rows, tokens per
second. The peak memory of each compiled step (`memory_analysis()`) is
reported beside the device's memory, which shows how full the batch makes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
import xml.etree.ElementTree as ElementTree

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (bench/ is not a package)

# Dense bfloat16 peak FLOP/s by device kind (vendor data sheets; SXM parts).
PEAK_BF16_FLOPS = (
    ('H200', 989e12),
    ('H100 PCIe', 756e12),
    ('H100', 989e12),
    ('A100', 312e12),
    ('L40S', 362e12),
    ('L4', 121e12),
    ('A10', 125e12),
)
# The remat policy per stage that docs/scale.md recommends (from the memory plan).
RECOMMENDED_REMAT = {'prompt_tuning': 'minimal', 'promot_stage2': 'minimal', 'finetune': 'minimal'}

# T5.1.1 large: the smallest T5.1.1 size of at least 770M parameters.
FULL = common.BenchConfig(vocab_size=32128, emb_dim=1024, num_heads=16, head_dim=64,
                          mlp_dim=2816, num_encoder_layers=24, num_decoder_layers=24,
                          batch_size=128, input_length=512, target_length=128,
                          prompt_length=100, decode_batch=64, decode_length=128,
                          train_steps=5, warmup_steps=1, decode_repeats=2)
DRY = common.BenchConfig(vocab_size=128, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                         num_encoder_layers=2, num_decoder_layers=2, batch_size=4,
                         input_length=16, target_length=8, prompt_length=4, decode_batch=2,
                         decode_length=4, train_steps=2, warmup_steps=1, decode_repeats=1)


def peak_flops(device_kind: str) -> float | None:
  """The card's dense bfloat16 peak FLOP/s, or None when it is not in the table."""
  for name, flops in PEAK_BF16_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


def build_model(cfg: common.BenchConfig, with_prompt: bool, remat_policy: str,
                scan_layers: bool, dtype: str):
  from promot_t5x.models import encoder_decoder, prompts, t5

  prompt = prompts.PromptConfig(length=cfg.prompt_length) if with_prompt else None
  config = t5.T5Config(vocab_size=cfg.vocab_size, emb_dim=cfg.emb_dim, num_heads=cfg.num_heads,
                       head_dim=cfg.head_dim, mlp_dim=cfg.mlp_dim,
                       num_encoder_layers=cfg.num_encoder_layers,
                       num_decoder_layers=cfg.num_decoder_layers,
                       mlp_activations=('gelu', 'linear'), logits_via_embedding=False,
                       dropout_rate=0.0, dtype=dtype, prompt=prompt,
                       remat_policy=remat_policy, scan_layers=scan_layers)
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(config))


def train_check(cfg: common.BenchConfig, stage_name: str, remat_policy: str, scan_layers: bool,
                dtype: str) -> dict:
  """One stage's train step: compile, warm up, time; model FLOPs and memory."""
  import jax
  import numpy as np

  from promot_t5x import memory_plan, param_sets, partitioning
  from promot_t5x import trainer as trainer_lib
  from promot_t5x.models import t5

  stage = param_sets.stage_by_name(stage_name)
  model = build_model(cfg, stage.use_prompt, remat_policy, scan_layers, dtype)
  device = jax.devices()[0]
  partitioner = partitioning.Partitioner(partitioning.make_mesh(1, 1, [device]))
  trainer = trainer_lib.Trainer(model, stage, memory_plan.stage_optimizer(stage_name),
                                partitioner)
  batch = common.train_batch(cfg)
  if stage.use_prompt:
    batch['prompt_index'] = np.zeros((cfg.batch_size,), np.int32)
  batch = partitioner.shard_batch(batch)
  t0 = time.perf_counter()
  compiled = trainer.lower_train_step(trainer.abstract_state(), batch).compile()
  compile_seconds = time.perf_counter() - t0
  stats = compiled.memory_analysis()
  state = trainer.create_state(model.init_params(jax.random.PRNGKey(cfg.seed)))
  holder = {'state': state}
  key = trainer.dropout_key()

  def step():  # the executable compiled above: the step is compiled once
    holder['state'], metrics = compiled(holder['state'], batch, key)
    return jax.block_until_ready(metrics)

  metrics, first, times = common.timed_calls(step, cfg.train_steps, cfg.warmup_steps)
  seconds = common.median(times)
  flops = common.train_flops(cfg, stage_name)
  peak = peak_flops(device.device_kind)
  return {
      'stage': stage_name, 'remat_policy': remat_policy, 'scan_layers': scan_layers,
      'activation_dtype': dtype, 'batch_size': cfg.batch_size,
      'input_length': cfg.input_length + (cfg.prompt_length if stage.use_prompt else 0),
      'target_length': cfg.target_length,
      'params': t5.count_params(trainer.abstract_params),
      'compile_seconds': round(compile_seconds, 2), 'first_step_seconds': round(first, 3),
      'step_seconds': seconds, 'step_seconds_all': times, 'loss': float(metrics['loss']),
      'tokens_per_second': common.train_tokens(cfg) / seconds,
      'model_flops_per_step': flops, 'model_flops_per_second': flops / seconds,
      'mfu': None if peak is None else flops / seconds / peak,
      'compiled_peak_bytes': int(stats.argument_size_in_bytes + stats.output_size_in_bytes
                                 - stats.alias_size_in_bytes + stats.temp_size_in_bytes),
  }


def decode_check(cfg: common.BenchConfig, dtype: str) -> dict:
  """Greedy decoding with the cache: new tokens per second over `decode_batch` rows."""
  import jax
  import numpy as np

  model = build_model(cfg, False, 'none', True, dtype)
  params = model.init_params(jax.random.PRNGKey(cfg.seed))
  batch = {'encoder_input_tokens': common.decode_inputs(cfg)}

  def run():
    # eos_id=-1: no row stops early, every row generates decode_length tokens.
    out = model.predict_batch(params, batch, decoder='greedy',
                              max_decode_length=cfg.decode_length, eos_id=-1)
    return np.asarray(jax.block_until_ready(out))

  tokens, first, times = common.timed_calls(run, cfg.decode_repeats)
  seconds = common.median(times)
  new_tokens = cfg.decode_batch * cfg.decode_length
  return {'decoder': 'greedy', 'decode_batch': cfg.decode_batch,
          'input_length': cfg.input_length, 'new_tokens_per_row': cfg.decode_length,
          'first_call_seconds': round(first, 2), 'seconds': seconds,
          'tokens_per_second': new_tokens / seconds, 'tokens_shape': list(tokens.shape)}


def read_junit(path: str | None) -> dict | None:
  """Counts of a pytest --junitxml report (None when there is none)."""
  if not path or not os.path.exists(path):
    return None
  root = ElementTree.parse(path).getroot()
  suite = root if root.tag == 'testsuite' else root.find('testsuite')
  counts = {k: int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped')}
  counts['passed'] = counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']
  counts['seconds'] = float(suite.get('time', 0.0))
  counts['failed_names'] = [f'{case.get("classname")}::{case.get("name")}'
                            for case in suite.iter('testcase')
                            if case.find('failure') is not None or case.find('error') is not None]
  return counts


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True, help='the JSON file to write')
  parser.add_argument('--dry', action='store_true', help='tiny sizes: the CPU dry path')
  parser.add_argument('--stages', default=','.join(common.STAGES))
  parser.add_argument('--batch_size', type=int, default=None, help='default: FULL / DRY sizes')
  parser.add_argument('--steps', type=int, default=None, help='timed steps per stage')
  parser.add_argument('--junit', default=None, help="the test subset's pytest --junitxml file")
  parser.add_argument('--tests_command', default='', help='recorded beside the test counts')
  args = parser.parse_args(argv)

  import jax

  t_start = time.perf_counter()
  cfg = DRY if args.dry else FULL
  if args.batch_size:
    cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
  if args.steps:
    cfg = dataclasses.replace(cfg, train_steps=args.steps)
  device = jax.devices()[0]
  if not args.dry and device.platform == 'cpu':
    parser.error('No accelerator is visible to JAX (platform cpu). Install jax with its CUDA '
                 'plugin (jax[cuda12]==0.10.2) on the GPU machine, or pass --dry for the CPU '
                 'dry path.')
  memory = (device.memory_stats() or {}).get('bytes_limit') if hasattr(device, 'memory_stats') \
      else None
  result = {
      'what': 'device check (bench/device_check.sh)', 'dry': args.dry,
      'platform': device.platform, 'device_kind': device.device_kind,
      'device_count': jax.device_count(), 'device_memory_bytes': memory,
      'peak_bf16_flops': peak_flops(device.device_kind), 'jax_version': jax.__version__,
      'model': cfg.describe(),
      'tests': dict(read_junit(args.junit) or {}, command=args.tests_command) if args.junit
      else None,
      'train': [], 'decode': None,
  }
  for stage in [s.strip() for s in args.stages.split(',') if s.strip()]:
    if stage not in common.STAGES:
      parser.error(f'--stages: {stage!r} is not one of {common.STAGES}.')
    row = train_check(cfg, stage, RECOMMENDED_REMAT[stage], True, 'bfloat16')
    if memory:
      row['compiled_peak_fraction_of_device'] = row['compiled_peak_bytes'] / memory
    result['train'].append(row)
    print(f"{stage}: {row['step_seconds']:.3f} s/step, mfu {row['mfu']}", file=sys.stderr)
  result['decode'] = decode_check(cfg, 'bfloat16')
  finetune = [r for r in result['train'] if r['stage'] == 'finetune']
  result['goal_finetune_mfu_at_least_0.4'] = (
      None if not finetune or finetune[0]['mfu'] is None else finetune[0]['mfu'] >= 0.4)
  result['seconds'] = round(time.perf_counter() - t_start, 1)
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  print(json.dumps({k: result[k] for k in ('platform', 'device_kind', 'seconds')}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
