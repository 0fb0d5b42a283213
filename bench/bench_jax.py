r"""Our side of the benchmarks: one measurement per process (run_all.py starts them).

  python bench/bench_jax.py train --stage=prompt_tuning [--products=xla] [--config=JSON] [--async_dispatch]
  python bench/bench_jax.py decode --decoder=beam [--config=JSON]
  python bench/bench_jax.py peak
  python bench/bench_jax.py export --out=DIR   # initial weights for bench_torch.py
  python bench/bench_jax.py kernel_ab --kernel=dense --stage=finetune [--steps=10] [--config=JSON]
  python bench/bench_jax.py kernel_ab --kernel=attention --settings=blas,fused --stage=prompt_tuning
  python bench/bench_jax.py kernel_ab --kernel=all --settings=xla,cpu_kernels --stage=finetune

Training uses the project's `Trainer` exactly as `promot-train` does
(stage = parameter sets, Adafactor as in the run gins, jitted train step with
donated state) on a one-device mesh; decoding uses
`EncoderDecoderModel.predict_batch` (key/value cache, greedy or beam 4).
Each prints one JSON line; `peak_rss_bytes` is this process's peak RSS.
`--products` picks the model's products: 'cpu_kernels' (the bench's default: the
optional kernels of promot_t5x.contrib.cpu_kernels, as gin/options/cpu_kernels.gin
binds them) or 'xla' (every model gin's default).
`kernel_ab` builds the train step twice in one process, with the model's
attention function (`--kernel=attention`: 'xla', 'blas' or 'fused'), its dense
product (`--kernel=dense`: 'xla' or 'mkl') or both (`--kernel=all`: 'xla' or
'cpu_kernels') set to each of two settings (`--settings`, default 'xla' and the
kernel), and alternates their steps (the order flipped every step), so the machine's
drift hits both; it reports each setting's median step and the median of the
per-pair ratios.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (bench/ is not a package)

# kernel_ab's settings: {--kernel: {setting: T5Config's product functions}}.
SETTINGS = {
    'dense': {'xla': {}, 'mkl': {'dot_general': 'dot_general'}},
    'attention': {'xla': {}, 'blas': {'attention_fn': 'blas_attention'},
                  'fused': {'attention_fn': 'attention'}},
    'all': {'xla': {}, 'cpu_kernels': {'dot_general': 'dot_general', 'attention_fn': 'attention'}},
}


def products(setting: str, kernel: str = 'all') -> dict:
  """T5Config's `dot_general` / `attention_fn` for a setting of SETTINGS[kernel]."""
  names = SETTINGS[kernel][setting]
  if not names:
    return {}
  from promot_t5x.contrib import cpu_kernels

  return {field: getattr(cpu_kernels, fn) for field, fn in names.items()}


def build_model(cfg: common.BenchConfig, with_prompt: bool, **kernels):
  """The bench's T5; `kernels`: T5Config's dot_general / attention_fn (default XLA's)."""
  from promot_t5x.models import encoder_decoder, prompts, t5

  prompt = prompts.PromptConfig(length=cfg.prompt_length) if with_prompt else None
  config = t5.T5Config(vocab_size=cfg.vocab_size, emb_dim=cfg.emb_dim,
                       num_heads=cfg.num_heads, head_dim=cfg.head_dim, mlp_dim=cfg.mlp_dim,
                       num_encoder_layers=cfg.num_encoder_layers,
                       num_decoder_layers=cfg.num_decoder_layers,
                       mlp_activations=('gelu', 'linear'), logits_via_embedding=False,
                       dropout_rate=0.0, dtype='float32', prompt=prompt,
                       **kernels)
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(config), z_loss=0.0)


def initial_params(model, seed: int):
  """Deterministic float32 parameters (the torch peer loads the same values)."""
  import jax

  return jax.device_get(model.init_params(jax.random.PRNGKey(seed)))


def train_step_fn(cfg: common.BenchConfig, stage_name: str, **kernels):
  """(step(): one train step on a fixed batch, blocking; the Trainer), as promot-train runs it."""
  import jax
  import numpy as np

  from promot_t5x import memory_plan, param_sets, partitioning
  from promot_t5x import trainer as trainer_lib

  stage = param_sets.stage_by_name(stage_name)
  model = build_model(cfg, stage.use_prompt, **kernels)
  partitioner = partitioning.Partitioner(partitioning.make_mesh(1, 1, jax.devices()[:1]))
  trainer = trainer_lib.Trainer(model, stage, memory_plan.stage_optimizer(stage_name),
                                partitioner)
  state = trainer.create_state(initial_params(model, cfg.seed))
  batch = common.train_batch(cfg)
  if stage.use_prompt:
    batch['prompt_index'] = np.zeros((cfg.batch_size,), np.int32)
  batch = partitioner.shard_batch(batch)

  holder = {'state': state}

  def step():
    holder['state'], metrics = trainer.train_step(holder['state'], batch)
    return jax.block_until_ready(metrics)

  return step, trainer


def bench_train(cfg: common.BenchConfig, stage_name: str, products_setting: str = 'cpu_kernels') -> dict:
  step, _ = train_step_fn(cfg, stage_name, **products(products_setting))
  usage = {}
  metrics, compile_and_first, times = common.timed_calls(step, cfg.train_steps,
                                                         cfg.warmup_steps - 1, usage)
  # What ran (one float32 CPU device: the option's kernels apply wherever chosen).
  kernels = products_setting == 'cpu_kernels'
  return {'side': 'ours', 'kind': 'train', 'stage': stage_name, 'products': products_setting,
          'attention_kernel': 'fused' if kernels else 'xla', 'dense_kernel': 'mkl' if kernels else 'xla',
          'step_seconds': common.median(times), 'step_seconds_all': times,
          'first_step_seconds': compile_and_first, 'loss': float(metrics['loss']),
          'tokens_per_step': common.train_tokens(cfg),
          'model_flops_per_step': common.train_flops(cfg, stage_name), **usage}


def kernel_ab(cfg: common.BenchConfig, stage_name: str, steps: int, which: str,
              kernels: tuple[str, str]) -> dict:
  """Seconds per step with the model's products at each of `kernels` (settings of
  SETTINGS[which]), alternating in one process."""
  import time

  fns = {}
  for kernel in kernels:
    fns[kernel], _ = train_step_fn(cfg, stage_name, **products(kernel, which))
    for _ in range(cfg.warmup_steps):
      fns[kernel]()
  times = {k: [] for k in kernels}
  losses = {}
  for i in range(steps):
    for kernel in (kernels if i % 2 == 0 else kernels[::-1]):
      t0 = time.perf_counter()
      metrics = fns[kernel]()
      times[kernel].append(time.perf_counter() - t0)
      losses[kernel] = float(metrics['loss'])
  first, second = kernels
  return {'side': 'ours', 'kind': f'{which}_ab', 'stage': stage_name, 'steps': steps,
          'settings': list(kernels),
          f'{second}_over_{first}_per_pair': common.median(
              [b / a for a, b in zip(times[first], times[second])]),
          **{f'{k}_step_seconds': common.median(times[k]) for k in kernels},
          **{f'{k}_step_seconds_all': times[k] for k in kernels},
          **{f'{k}_last_loss': losses[k] for k in kernels}}


def decode_fn(cfg: common.BenchConfig, decoder: str):
  """run(): one blocking `predict_batch` call on the bench's decode batch -> tokens."""
  import jax
  import numpy as np

  model = build_model(cfg, with_prompt=False)
  params = initial_params(model, cfg.seed)
  inputs = common.decode_inputs(cfg)
  batch = {'encoder_input_tokens': inputs}

  def run():
    # eos_id=-1: no row stops early, so both sides generate decode_length tokens.
    out = model.predict_batch(params, batch, decoder=decoder, num_beams=cfg.num_beams,
                              max_decode_length=cfg.decode_length, eos_id=-1)
    return np.asarray(jax.block_until_ready(out))

  return run


def bench_decode(cfg: common.BenchConfig, decoder: str) -> dict:
  tokens, first, times = common.timed_calls(decode_fn(cfg, decoder), cfg.decode_repeats)
  return {'side': 'ours', 'kind': 'decode', 'decoder': decoder,
          'seconds': common.median(times), 'seconds_all': times,
          'first_call_seconds': first,
          'new_tokens': int(cfg.decode_batch * cfg.decode_length),
          'tokens_head': tokens[0, :8].tolist()}


def export_weights(cfg: common.BenchConfig, out_dir: str) -> dict:
  """Writes our initial parameters as HF tensors + config for the torch peer."""
  import json

  import numpy as np

  from promot_t5x.checkpoints import hf

  model = build_model(cfg, with_prompt=False)
  params = initial_params(model, cfg.seed)
  os.makedirs(out_dir, exist_ok=True)
  hf_cfg = dict(hf.hf_config_from_t5(model.config))
  for key in ('architectures', 'model_type'):
    hf_cfg.pop(key, None)
  with open(os.path.join(out_dir, 'hf_config.json'), 'w') as f:
    json.dump(hf_cfg, f)
  np.savez(os.path.join(out_dir, 'hf_tensors.npz'), **hf.params_to_hf_tensors(params, model.config))
  return {'side': 'ours', 'kind': 'export', 'out': out_dir}


def bench_peak(size: int = 4096, repeats: int = 5) -> dict:
  """float32 matmul peak of this machine as XLA:CPU reaches it: best of `repeats`."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  dot = jax.jit(jnp.dot)
  _, _, times = common.timed_calls(lambda: jax.block_until_ready(dot(a, b)), repeats)
  best = min(times)
  return {'side': 'ours', 'kind': 'peak', 'size': size, 'seconds': best,
          'flops_per_second': 2 * size ** 3 / best}


def main(argv=None) -> int:
  from promot_t5x import host_memory

  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('what', choices=('train', 'decode', 'peak', 'export', 'kernel_ab'))
  p.add_argument('--steps', type=int, default=10, help='kernel_ab: steps per setting')
  p.add_argument('--kernel', choices=tuple(SETTINGS), default='dense',
                 help='kernel_ab: which of the model\'s products to flip')
  p.add_argument('--settings', default=None,
                 help='kernel_ab: the two settings, comma-separated (default: xla and the kernel)')
  p.add_argument('--products', choices=tuple(SETTINGS['all']), default='cpu_kernels',
                 help='train: the model\'s products (the optional CPU kernels, or XLA\'s)')
  p.add_argument('--out', default=None, help='export: folder for the torch peer\'s weights')
  p.add_argument('--stage', choices=common.STAGES, default='finetune')
  p.add_argument('--decoder', choices=('greedy', 'beam'), default='greedy')
  p.add_argument('--config', default=None, help='BenchConfig as JSON')
  p.add_argument('--async_dispatch', action='store_true',
                 help='keep JAX\'s asynchronous CPU dispatch (host_memory.configure turns '
                      'it off; for comparisons)')
  args = p.parse_args(argv)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  # The bench opts in to the CPU allocator settings (bench/README.md, "Host allocator").
  os.environ.setdefault(host_memory.ENV_VAR, 'reuse')
  host_memory.configure(inline_cpu_dispatch=not args.async_dispatch)
  cfg = common.BenchConfig.from_json(args.config) if args.config else common.BenchConfig()
  if args.what == 'train':
    result = bench_train(cfg, args.stage, args.products)
  elif args.what == 'kernel_ab':
    choices = tuple(SETTINGS[args.kernel])
    settings = tuple(args.settings.split(',')) if args.settings else (choices[0], choices[-1])
    if len(settings) != 2 or settings[0] == settings[1] or not set(settings) <= set(choices):
      p.error(f'--settings needs two different values of {choices} for --kernel={args.kernel}, '
              f'got {args.settings!r}')
    result = kernel_ab(cfg, args.stage, args.steps, args.kernel, settings)
  elif args.what == 'decode':
    result = bench_decode(cfg, args.decoder)
  elif args.what == 'export':
    if not args.out:
      p.error('export needs --out=DIR')
    result = export_weights(cfg, args.out)
  else:
    result = bench_peak()
  common.emit(result)
  return 0


if __name__ == '__main__':
  sys.exit(main())
