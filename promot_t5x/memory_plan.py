r"""`promot-memory-plan`: per-device memory of the real train step, by compilation.

  promot-memory-plan --gin_file=gin/models/mt5_xxl.gin --mesh=8x8 --mesh=32x8
  promot-memory-plan --gin_file=gin/models/mt5_xxl.gin --mesh=8x8 --remat_policy=minimal \
    --scan_layers=true --parameter_partitioning_dims=2      # docs/scale.md

Every row records its options (remat_policy, scan_layers,
parameter_partitioning_dims) and its compile time (wall and CPU seconds).

For each mesh and stage (ProMoT stage 1 = prompt tuning, stage 2, standard
fine-tuning) this builds the project's `Trainer` exactly as a run would (the
model from the gin file, Adafactor, the standard logical-axis rules), lowers
its jitted train step for abstract inputs (`jax.ShapeDtypeStruct`s carrying
their shardings: nothing is allocated) and compiles it. It reports, per device:

  exact, from the shardings (per-device shard shapes x dtype sizes):
    params (trainable / frozen), optimizer state, batch, and gradients (one
    float32 buffer per trainable shard: what the update consumes; two with
    micro-batches, the running sum and one micro-batch's);
  from the compiled program's `memory_analysis()`:
    arguments, outputs (aliased to the donated state), temporaries; the
    estimated peak = arguments + outputs - aliased + temporaries; and
    "activations & other temporaries" = temporaries - gradients.

Where the numbers come from. No TPU is needed: each mesh is compiled in a
subprocess for N fake CPU devices (`--xla_force_host_platform_device_count=N`),
i.e. XLA:CPU's SPMD partitioning and buffer assignment of the *same sharded
program*. Argument, output and gradient sizes are exact for any backend (they
follow from the shardings). Temporaries are an approximation of a TPU's: the
CPU compiler has no TPU fusion, layouts/padding (TPU pads minor dimensions to
multiples of 128 and 8), or TPU-specific scheduling. And XLA:CPU computes
bfloat16 matmuls in float32 (its optimized program has only float32 dots) and
keeps their results in float32, so for a bfloat16 model its activations are
up to twice what a TPU keeps. The plan therefore gives a range for bfloat16
models: "peak" (as compiled for CPU, the conservative end) and "peak if bf16"
(activations halved, the optimistic end; float32 parts such as softmax and
logits are really not halved). "fits": yes (peak <= 90% of the device's
memory), tight (peak <= 100%), maybe (only the bf16 end fits), no.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from promot_t5x import cli

GiB = 2 ** 30
STAGE_LABELS = {'prompt_tuning': 'stage 1 (prompt tuning)',
                'promot_stage2': 'stage 2 (ProMoT)',
                'finetune': 'fine-tuning',
                'joint': 'joint tuning'}
DEFAULT_STAGES = ('prompt_tuning', 'promot_stage2', 'finetune')
# Per-device memory of the targets the plan is checked against, in GiB.
DEVICES = (('TPU v4', 32), ('TPU v5e', 16), ('GPU', 80))
# Above this fraction of a device's memory a "fit" is reported as tight.
TIGHT_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class PlanSetting:
  """What is compiled: model gin, mesh, batch and sequence lengths, stages.

  input_length/target_length: the feature lengths (the soft prompt adds
  prompt_length encoder positions in stages that use it). dropout_rate: None
  keeps the model gin's value.
  """

  gin_files: tuple[str, ...]
  gin_bindings: tuple[str, ...] = ()
  mesh_data: int = 8
  mesh_model: int = 8
  batch_size: int = 64
  input_length: int = 512
  target_length: int = 128
  prompt_length: int = 100
  num_microbatches: int = 1
  stages: tuple[str, ...] = DEFAULT_STAGES
  dropout_rate: float | None = None
  compile: bool = True
  # The scale options (T5Config.remat_policy / scan_layers and the partitioner's
  # parameter_partitioning_dims); None keeps the model gin's value.
  remat_policy: str | None = None
  scan_layers: bool | None = None
  parameter_partitioning_dims: int = 1

  def __post_init__(self):
    for name in ('mesh_data', 'mesh_model', 'batch_size', 'input_length', 'target_length',
                 'prompt_length', 'num_microbatches'):
      if getattr(self, name) <= 0:
        raise ValueError(f'{name} must be positive, got {getattr(self, name)}.')
    if self.batch_size % (self.mesh_data * self.num_microbatches):
      raise ValueError(f'batch_size={self.batch_size} must split into num_microbatches='
                       f'{self.num_microbatches} microbatches over mesh data={self.mesh_data}; '
                       'choose a batch divisible by data x microbatches.')
    unknown = [s for s in self.stages if s not in STAGE_LABELS]
    if unknown or not self.stages:
      raise ValueError(f'stages {list(self.stages)}: choose from {sorted(STAGE_LABELS)}.')
    if not self.gin_files:
      raise ValueError('A model gin file is needed, e.g. gin/models/mt5_xxl.gin.')

  @property
  def num_devices(self) -> int:
    return self.mesh_data * self.mesh_model


@dataclasses.dataclass
class StagePlan:
  """Per-device bytes of one stage's train step on one mesh (see module docstring)."""

  stage: str
  mesh_data: int
  mesh_model: int
  batch_size: int
  input_length: int
  target_length: int
  prompt_length: int
  num_microbatches: int
  activation_dtype: str
  total_params: int
  trainable_params: int
  params_trainable_bytes: int
  params_frozen_bytes: int
  opt_state_bytes: int
  batch_bytes: int
  gradient_bytes: int
  # From memory_analysis(); None when not compiled.
  argument_bytes: int | None = None
  output_bytes: int | None = None
  alias_bytes: int | None = None
  temp_bytes: int | None = None
  compile_seconds: float | None = None
  # CPU time of this process (all its threads) for lowering + compiling: on a
  # shared machine the fairer of the two for comparing compiles.
  compile_cpu_seconds: float | None = None
  backend: str = ''
  remat_policy: str = 'none'
  scan_layers: bool = False
  parameter_partitioning_dims: int = 1

  @property
  def params_bytes(self) -> int:
    return self.params_trainable_bytes + self.params_frozen_bytes

  @property
  def state_bytes(self) -> int:
    return self.params_bytes + self.opt_state_bytes

  @property
  def activations_bytes(self) -> int | None:
    """Compiler temporaries that are not the gradient buffers (activations, scratch)."""
    if self.temp_bytes is None:
      return None
    return max(self.temp_bytes - self.gradient_bytes, 0)

  @property
  def peak_bytes(self) -> int:
    """Estimated per-device peak: live arguments + non-aliased outputs + temporaries.

    Without a compile: the exact state, batch and gradients (a lower bound).
    """
    if self.temp_bytes is None:
      return self.state_bytes + self.batch_bytes + self.gradient_bytes
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  @property
  def peak_bf16_bytes(self) -> int:
    """`peak_bytes` with activations halved for bfloat16 models (XLA:CPU keeps them f32)."""
    if self.temp_bytes is None or self.activation_dtype != 'bfloat16':
      return self.peak_bytes
    return self.peak_bytes - self.activations_bytes // 2

  def fit(self, capacity_gib: float) -> str:
    """'yes' (<= 90%), 'tight' (<= 100%), 'maybe' (only the bf16 end fits) or 'no'.

    Not compiled: 'no' if even the exact state does not fit, else '?'.
    """
    capacity = capacity_gib * GiB
    if self.temp_bytes is None:
      return 'no' if self.peak_bytes > capacity else '?'
    if self.peak_bytes <= TIGHT_FRACTION * capacity:
      return 'yes'
    if self.peak_bytes <= capacity:
      return 'tight'
    return 'maybe' if self.peak_bf16_bytes <= capacity else 'no'

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out.update(activations_bytes=self.activations_bytes, peak_bytes=self.peak_bytes,
               peak_bf16_bytes=self.peak_bf16_bytes,
               fits={f'{name} ({gib} GiB)': self.fit(gib) for name, gib in DEVICES})
    return out


# -----------------------------------------------------------------------------
# Planning one mesh, in this process (needs mesh_data x mesh_model devices).
# -----------------------------------------------------------------------------
def build_model(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
                prompt_length: int | None = None, dropout_rate: float | None = None,
                remat_policy: str | None = None, scan_layers: bool | None = None):
  """The `EncoderDecoderModel` of a model gin, with a soft prompt when asked.

  remat_policy, scan_layers: override the model gin's `T5Config` values (None keeps them).
  """
  from promot_t5x import inspect_model
  from promot_t5x.models import encoder_decoder, prompts, t5

  model = inspect_model.model_from_gin(list(gin_files), list(gin_bindings))
  cfg = model.module.config
  if prompt_length:
    cfg = cfg.replace(prompt=prompts.PromptConfig(length=prompt_length))
  if dropout_rate is not None:
    cfg = cfg.replace(dropout_rate=dropout_rate)
  if remat_policy is not None:
    cfg = cfg.replace(remat_policy=remat_policy)
  if scan_layers is not None:
    cfg = cfg.replace(scan_layers=scan_layers)
  return encoder_decoder.EncoderDecoderModel(
      t5.Transformer(cfg), None, model.label_smoothing, model.z_loss,
      model.loss_normalizing_factor)


def stage_optimizer(stage_name: str):
  """Adafactor as the run gins configure it (the learning rate does not change memory)."""
  from promot_t5x import optimizers

  if stage_name == 'prompt_tuning':  # gin/runs/prompt_tuning.gin
    return optimizers.adafactor(0.2, decay_rate=0.8, multiply_by_parameter_scale=False)
  return optimizers.adafactor(1e-3, decay_rate=0.8, multiply_by_parameter_scale=True)


def _shard_bytes(x: Any) -> int:
  import numpy as np

  shape = x.sharding.shard_shape(tuple(x.shape))
  return int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def _tree_bytes(tree: Any) -> int:
  import jax

  return sum(_shard_bytes(x) for x in jax.tree_util.tree_leaves(tree))


def abstract_batch(partitioner, batch_size: int, input_length: int, target_length: int,
                   with_prompt: bool) -> dict[str, Any]:
  """ShapeDtypeStructs of an EncDecFeatureConverter batch, split over `data`."""
  import jax
  import jax.numpy as jnp

  def spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=partitioner.data_sharding(len(shape)))

  batch = {'encoder_input_tokens': spec((batch_size, input_length), jnp.int32),
           'decoder_input_tokens': spec((batch_size, target_length), jnp.int32),
           'decoder_target_tokens': spec((batch_size, target_length), jnp.int32),
           'decoder_loss_weights': spec((batch_size, target_length), jnp.float32)}
  if with_prompt:
    batch['prompt_index'] = spec((batch_size,), jnp.int32)
  return batch


def plan_mesh(setting: PlanSetting, devices: Sequence[Any] | None = None) -> list[StagePlan]:
  """Plans every stage of `setting` on a mesh of this process's devices."""
  import jax
  import numpy as np

  from promot_t5x import param_sets, partitioning
  from promot_t5x import trainer as trainer_lib

  if setting.compile:
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < setting.num_devices:
      raise ValueError(f'Mesh {setting.mesh_data}x{setting.mesh_model} needs '
                       f'{setting.num_devices} devices; this process has {len(devices)}. Run '
                       f'with XLA_FLAGS=--xla_force_host_platform_device_count='
                       f'{setting.num_devices} (the CLI does this in a subprocess).')
    mesh = partitioning.make_mesh(setting.mesh_data, setting.mesh_model,
                                  devices=devices[:setting.num_devices])
    backend = f'{devices[0].platform} ({setting.num_devices} devices)'
  else:
    # Exact sizes need only the mesh's shape: no devices, any size.
    mesh = partitioning.abstract_mesh(setting.mesh_data, setting.mesh_model)
    backend = 'abstract mesh (not compiled)'
  partitioner = partitioning.Partitioner(
      mesh, partitioning.standard_logical_axis_rules(setting.parameter_partitioning_dims))
  plans = []
  for stage_name in setting.stages:
    stage = param_sets.stage_by_name(stage_name)
    model = build_model(setting.gin_files, setting.gin_bindings,
                        setting.prompt_length if stage.use_prompt else None,
                        setting.dropout_rate, setting.remat_policy, setting.scan_layers)
    trainer = trainer_lib.Trainer(model, stage, stage_optimizer(stage_name), partitioner,
                                  num_microbatches=setting.num_microbatches)
    state = trainer.abstract_state()
    batch = abstract_batch(partitioner, setting.batch_size, setting.input_length,
                           setting.target_length, stage.use_prompt)
    counts = {p: int(np.prod(x.shape)) for p, x in
              param_sets.flatten(trainer.abstract_params).items()}
    plan = StagePlan(
        stage=stage_name, mesh_data=setting.mesh_data, mesh_model=setting.mesh_model,
        batch_size=setting.batch_size, input_length=setting.input_length,
        target_length=setting.target_length,
        prompt_length=setting.prompt_length if stage.use_prompt else 0,
        num_microbatches=setting.num_microbatches,
        activation_dtype=model.config.dtype,
        total_params=sum(counts.values()),
        trainable_params=sum(c for p, c in counts.items() if trainer.trainable_mask[p]),
        params_trainable_bytes=_tree_bytes(state.trainable),
        params_frozen_bytes=_tree_bytes(state.frozen),
        opt_state_bytes=_tree_bytes(state.opt_state),
        batch_bytes=_tree_bytes(batch) + _shard_bytes(state.step),
        # One float32 gradient per trainable shard (gradients take their
        # parameter's sharding; the update needs all of them at once); with
        # microbatches, the running sum and one microbatch's gradients.
        gradient_bytes=_tree_bytes(state.trainable) * (2 if setting.num_microbatches > 1 else 1),
        backend=backend, remat_policy=model.config.remat_policy,
        scan_layers=model.config.scan_layers,
        parameter_partitioning_dims=setting.parameter_partitioning_dims)
    if setting.compile:
      t0, c0 = time.time(), time.process_time()
      compiled = trainer.lower_train_step(state, batch).compile()
      stats = compiled.memory_analysis()
      plan.compile_seconds = round(time.time() - t0, 1)
      plan.compile_cpu_seconds = round(time.process_time() - c0, 1)
      plan.argument_bytes = int(stats.argument_size_in_bytes)
      plan.output_bytes = int(stats.output_size_in_bytes)
      plan.alias_bytes = int(stats.alias_size_in_bytes)
      plan.temp_bytes = int(stats.temp_size_in_bytes)
    plans.append(plan)
  return plans


# -----------------------------------------------------------------------------
# Several meshes: one subprocess per mesh (the fake device count is per process).
# -----------------------------------------------------------------------------
def _worker_argv(setting: PlanSetting) -> list[str]:
  return [sys.executable, '-m', 'promot_t5x.memory_plan', '--_worker',
          json.dumps(dataclasses.asdict(setting))]


def plan_in_subprocess(setting: PlanSetting, timeout: float | None = None) -> list[StagePlan]:
  """`plan_mesh` in a fresh process with `num_devices` fake CPU devices."""
  env = dict(os.environ)
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', env.get('XLA_FLAGS', ''))
  env['XLA_FLAGS'] = (f'{flags} --xla_force_host_platform_device_count={setting.num_devices} '
                      # LLVM's optimizations do not change buffer sizes; skip them.
                      '--xla_backend_optimization_level=0 '
                      '--xla_llvm_disable_expensive_passes=true').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  proc = subprocess.run(_worker_argv(setting), env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)
  if proc.returncode:
    raise RuntimeError(f'memory plan for mesh {setting.mesh_data}x{setting.mesh_model} '
                       f'failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}')
  lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
  return [plan_from_json(d) for d in json.loads(lines[-1])['plans']]


def plan_from_json(d: dict[str, Any]) -> StagePlan:
  """A StagePlan from its `to_json()` / `asdict()` form (derived keys ignored)."""
  return StagePlan(**{k: v for k, v in d.items()
                      if k in {f.name for f in dataclasses.fields(StagePlan)}})


def plan(settings: Sequence[PlanSetting], jobs: int = 1,
         timeout: float | None = None) -> list[StagePlan]:
  """Plans of every setting (compiled ones in their own subprocess, `jobs` at a time)."""
  if not any(s.compile for s in settings):
    return [p for s in settings for p in plan_mesh(s)]
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
    results = list(pool.map(lambda s: plan_in_subprocess(s, timeout), settings))
  return [p for plans in results for p in plans]


# -----------------------------------------------------------------------------
# Reporting.
# -----------------------------------------------------------------------------
def _unit(plans: Sequence[StagePlan]) -> tuple[str, int]:
  return ('GiB', GiB) if max(p.peak_bytes for p in plans) >= GiB // 4 else ('MiB', 2 ** 20)


def format_table(plans: Sequence[StagePlan]) -> str:
  """A markdown table of per-device memory, one row per (mesh, stage, microbatches)."""
  name, unit = _unit(plans)

  def size(n: int | None) -> str:
    if n is None:
      return '-'
    x = n / unit
    return f'{x:.2f}' if x >= 0.1 or x == 0 else f'{x:.2g}'

  header = ['mesh (data x model)', 'stage', 'remat', 'scan', 'param dims', 'micro-batches',
            'trainable params',
            'params', 'optimizer state', 'gradients', 'activations & temps',
            'compiler temp', 'args (compiled)', 'peak', 'peak if bf16']
  header += [f'{dev} {gib}G' for dev, gib in DEVICES] + ['compile s']
  rows = []
  for p in plans:
    rows.append([f'{p.mesh_data} x {p.mesh_model}', STAGE_LABELS[p.stage], p.remat_policy,
                 'yes' if p.scan_layers else 'no', str(p.parameter_partitioning_dims),
                 str(p.num_microbatches), f'{p.trainable_params:,}',
                 size(p.params_bytes), size(p.opt_state_bytes), size(p.gradient_bytes),
                 size(p.activations_bytes), size(p.temp_bytes), size(p.argument_bytes),
                 size(p.peak_bytes), size(p.peak_bf16_bytes)]
                + [p.fit(gib) for _, gib in DEVICES]
                + ['-' if p.compile_seconds is None else f'{p.compile_seconds:.0f}'])
  lines = [f'per-device {name}', '', '| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  return '\n'.join(lines)


def format_report(plans: Sequence[StagePlan], command: str = '') -> str:
  if not plans:
    return 'no plans'
  p0 = plans[0]
  compiled = p0.temp_bytes is not None
  prompt = max(p.prompt_length for p in plans)
  lines = [
      f'Memory plan of the train step: global batch {p0.batch_size}, inputs '
      f'{p0.input_length}' + (f' (+ a {prompt}-token prompt in stages 1 and 2)' if prompt else '')
      + f', targets {p0.target_length}; {p0.activation_dtype} activations, float32 '
      f'parameters, Adafactor; {max(p.total_params for p in plans):,} parameters.',
      '',
      format_table(plans),
      '',
      'params, optimizer state, gradients: exact, from every array\'s per-device shard shape '
      '(gradients: one float32 buffer per trainable shard, two with micro-batches: the '
      'running sum and one micro-batch\'s).',
  ]
  if compiled:
    lines += [
        'compiler temp, args (compiled), peak: memory_analysis() of the program XLA:CPU '
        f'compiled for fake CPU devices ({p0.backend}): the same SPMD-partitioned program, '
        'not TPU code. Arguments are exact; temporaries approximate (no TPU fusion, layout '
        'padding or scheduling). peak = args + outputs - donated + temp; "activations & '
        'temps" = compiler temp - gradients.',
    ]
    if p0.activation_dtype == 'bfloat16':
      lines.append('XLA:CPU computes bfloat16 matmuls in float32 and keeps their results in '
                   'float32, so "peak" is the conservative end; "peak if bf16" halves the '
                   'activations (the optimistic end).')
    lines.append('fits: yes = peak <= 90% of the memory; tight = <= 100%; maybe = only '
                 '"peak if bf16" fits; no = neither.')
  else:
    lines.append('not compiled (--no_compile): peak = exact state + batch + gradients, a '
                 'lower bound without activations; fits: "no" if even that does not fit, '
                 'else "?".')
  if command:
    lines += ['', f'command: {command}']
  return '\n'.join(lines)


def parse_mesh(text: str) -> tuple[int, int]:
  m = re.fullmatch(r'(\d+)x(\d+)', text.strip())
  if not m:
    raise argparse.ArgumentTypeError(f'mesh {text!r}: write DATAxMODEL, e.g. 8x8.')
  return int(m.group(1)), int(m.group(2))


def settings_from_args(args: argparse.Namespace) -> list[PlanSetting]:
  meshes = args.mesh or [(8, 8)]
  microbatches = [int(x) for x in str(args.num_microbatches).split(',')]
  stages = tuple(s.strip() for s in args.stages.split(',') if s.strip())
  return [PlanSetting(gin_files=tuple(args.gin_file), gin_bindings=tuple(args.gin_bindings),
                      mesh_data=d, mesh_model=m, batch_size=args.batch_size,
                      input_length=args.input_length, target_length=args.target_length,
                      prompt_length=args.prompt_length, num_microbatches=n, stages=stages,
                      dropout_rate=args.dropout_rate, compile=not args.no_compile,
                      remat_policy=args.remat_policy,
                      scan_layers=None if args.scan_layers is None else args.scan_layers == 'true',
                      parameter_partitioning_dims=args.parameter_partitioning_dims)
          for d, m in meshes for n in microbatches]


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ['--_worker']:  # one mesh, in this process (see plan_in_subprocess)
    setting = PlanSetting(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in json.loads(argv[1]).items()})
    plans = plan_mesh(setting)
    print(json.dumps({'plans': [dataclasses.asdict(p) for p in plans]}), flush=True)
    return 0
  command = 'promot-memory-plan ' + ' '.join(argv)
  return cli.main('promot-memory-plan', __doc__, functools.partial(_main, command=command), argv,
                  add_flags=_flags, gin=True, parse_gin=False, inline_cpu_dispatch=None)


def _flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--mesh', type=parse_mesh, action='append', default=[],
                      help='DATAxMODEL (repeatable); default 8x8')
  parser.add_argument('--stages', default=','.join(DEFAULT_STAGES),
                      help=f'comma-separated, from {sorted(STAGE_LABELS)}')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--input_length', type=int, default=512)
  parser.add_argument('--target_length', type=int, default=128)
  parser.add_argument('--prompt_length', type=int, default=100)
  parser.add_argument('--num_microbatches', default='1',
                      help='gradient accumulation; comma-separated to compare, e.g. 1,4')
  parser.add_argument('--dropout_rate', type=float, default=None,
                      help="default: the model gin's (the paper fine-tunes with 0.1)")
  parser.add_argument('--remat_policy', default=None, help="T5Config.remat_policy: none, minimal, "
                      "full (default: the model gin's)")
  parser.add_argument('--scan_layers', default=None, choices=('true', 'false'),
                      help="T5Config.scan_layers (default: the model gin's)")
  parser.add_argument('--parameter_partitioning_dims', type=int, default=1, choices=(1, 2),
                      help='2: parameters also sharded over data (embed -> data), as T5X')
  parser.add_argument('--no_compile', action='store_true',
                      help='only the exact state sizes (instant; no activations)')
  parser.add_argument('--jobs', type=int, default=1, help='meshes compiled in parallel')
  parser.add_argument('--json', default=None, help='also write the plans here')
  parser.add_argument('--from_json', action='append', default=[],
                      help='print the report of earlier --json outputs (repeatable) instead '
                           'of planning')


def _main(args: argparse.Namespace, command: str) -> int:
  if args.from_json:
    plans = [plan_from_json(d) for path in args.from_json
             for d in json.load(open(path))['plans']]
    print(format_report(plans))
    return 0
  if not args.gin_file:
    raise cli.UsageError('--gin_file is required (a model gin, e.g. gin/models/mt5_xxl.gin).')
  settings = settings_from_args(args)
  t0 = time.time()
  plans = plan(settings, jobs=args.jobs)
  print(format_report(plans, command))
  print(f'\n(planned in {time.time() - t0:.0f} s)')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'command': command, 'plans': [p.to_json() for p in plans]}, f, indent=1)
  return 0


def console_entry_point() -> None:
  sys.exit(main())


if __name__ == '__main__':
  console_entry_point()
