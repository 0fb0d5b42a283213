r"""Host memory of reading a checkpoint in a multi-process run: whole vs each process's shards.

  python bench/restore_memory.py            # writes bench/results/restore_memory.{json,md}

Writes an orbax run checkpoint of a T5 of ~1.2 GB (float32), then starts two
JAX processes of one CPU device each (promot_t5x_launch.local, gloo), on a
('data' 1, 'model' 2) mesh, and has them read the checkpoint onto the mesh in
two ways, each in fresh processes:

  whole    every process reads every parameter to host numpy, then places its
           own part on its device (what promot-train and promot-eval did before
           `checkpoints.sources`);
  sharded  `sources.open_source(path).read(shardings)`: each process reads only
           the slices its device holds (what they do now).

Each process reports its peak RSS over the read (ru_maxrss, minus its RSS
before the read) and the bytes its device holds afterwards. On CPU the
"device" is host memory too, so the sharded read's peak cannot go below the
device's part; on GPUs and TPUs that part lives in accelerator memory.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / 'launch'))

MODES = ('whole', 'sharded')


def _model(args):
  from promot_t5x.models import encoder_decoder, t5

  config = t5.T5Config(vocab_size=32128, emb_dim=args.emb_dim, num_heads=args.emb_dim // 64,
                       head_dim=64, mlp_dim=args.mlp_dim, num_encoder_layers=args.layers,
                       num_decoder_layers=args.layers, mlp_activations=('gelu', 'linear'),
                       logits_via_embedding=False)
  return encoder_decoder.EncoderDecoderModel(t5.Transformer(config))


def _current_rss() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def child(args) -> None:
  from promot_t5x import distributed

  distributed.initialize(args.coordinator_address, args.process_count, args.process_index,
                         cpu_collectives=True)
  import common
  import jax
  import numpy as np

  from promot_t5x import param_sets, partitioning
  from promot_t5x.checkpoints import sources

  model = _model(args)
  partitioner = partitioning.Partitioner(partitioning.make_mesh(1, jax.device_count()))
  shardings = param_sets.flatten(partitioner.param_shardings(model.abstract_params()))
  source = sources.open_source(args.checkpoint)
  # Compile nothing during the measurement: a tiny warm-up read and placement.
  source.read({k: shardings[k] for k in list(shardings)[:1]})
  before, peak_before = _current_rss(), common.peak_rss_bytes()
  start = time.perf_counter()
  if args.mode == 'whole':
    host = source.read(dict.fromkeys(shardings))
    placed = {k: jax.device_put(v, shardings[k]) for k, v in host.items()}
  else:
    placed = source.read(shardings)
  jax.block_until_ready(placed)
  seconds = time.perf_counter() - start
  peak = common.peak_rss_bytes()
  device_bytes = sum(s.data.nbytes for a in placed.values() for s in a.addressable_shards)
  total_bytes = sum(int(np.prod(a.shape)) * 4 for a in placed.values())
  print('RESULT ' + json.dumps({
      'mode': args.mode, 'process': jax.process_index(), 'seconds': seconds,
      'rss_before_bytes': before, 'peak_rss_bytes': peak,
      'peak_growth_bytes': peak - before, 'peak_set_by_read': peak > peak_before,
      'device_bytes': device_bytes, 'checkpoint_bytes': total_bytes}), flush=True)


def _write_checkpoint(args, directory: str) -> int:
  import jax
  import numpy as np

  from promot_t5x import param_sets
  from promot_t5x.checkpoints import manager

  model = _model(args)
  params = jax.jit(model.init_params)(jax.random.PRNGKey(0))
  nbytes = sum(int(np.prod(v.shape)) * 4 for v in param_sets.flatten(params).values())
  mgr = manager.TrainCheckpointManager(directory)
  mgr.save(1, params, {}, {'step': 1, 'batches_consumed': 1, 'stage': 'finetune'})
  mgr.close()
  return nbytes


def parent(args) -> None:
  import local

  results = []
  with tempfile.TemporaryDirectory() as tmp:
    run = os.path.join(tmp, 'run')
    # The checkpoint is written by a process of its own, so this one stays small.
    subprocess.run([sys.executable, __file__, '--write_checkpoint', run, *_size_flags(args)],
                   check=True)
    for round_ in range(args.rounds):
      for mode in MODES:
        print(f'round {round_ + 1}/{args.rounds}: {mode} read on 2 processes', flush=True)
        cmd = [sys.executable, __file__, '--child', f'--mode={mode}', f'--checkpoint={run}',
               *_size_flags(args)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]))
        for r in local.launch(cmd, num_processes=2, devices_per_process=1, env=env,
                              timeout=900):
          if r.returncode != 0:
            raise SystemExit(f'{mode} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}')
          line = next(x for x in r.stdout.splitlines() if x.startswith('RESULT '))
          results.append({'round': round_, **json.loads(line[len('RESULT '):])})
  out = {'command': 'python bench/restore_memory.py ' + ' '.join(_size_flags(args)),
         'date': time.strftime('%Y-%m-%d %H:%M'), 'processes': 2, 'mesh': {'data': 1, 'model': 2},
         'results': results}
  (HERE / 'results').mkdir(exist_ok=True)
  (HERE / 'results' / 'restore_memory.json').write_text(json.dumps(out, indent=1) + '\n')
  md = markdown(out)
  (HERE / 'results' / 'restore_memory.md').write_text(md)
  print(md)


def markdown(out) -> str:
  gib = 2.0 ** 30
  rows = ['| read | process | peak RSS growth (GiB) | on its device (GiB) | seconds |',
          '|---|---|---|---|---|']
  for r in sorted(out['results'], key=lambda r: (MODES.index(r['mode']), r['process'],
                                                r['round'])):
    rows.append(f"| {r['mode']} | {r['process']} | {r['peak_growth_bytes'] / gib:.2f} | "
                f"{r['device_bytes'] / gib:.2f} | {r['seconds']:.1f} |")
  total = out['results'][0]['checkpoint_bytes'] / gib
  return (f"Checkpoint {total:.2f} GiB (float32), {out['processes']} processes x 1 CPU device, "
          f"mesh {out['mesh']}; `{out['command']}` ({out['date']}).\n\n" + '\n'.join(rows) + '\n')


def _size_flags(args) -> list[str]:
  return [f'--emb_dim={args.emb_dim}', f'--mlp_dim={args.mlp_dim}', f'--layers={args.layers}']


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--emb_dim', type=int, default=1024)
  parser.add_argument('--mlp_dim', type=int, default=2816)
  parser.add_argument('--layers', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--mode', choices=MODES, help=argparse.SUPPRESS)
  parser.add_argument('--checkpoint', help=argparse.SUPPRESS)
  parser.add_argument('--write_checkpoint', help=argparse.SUPPRESS)
  parser.add_argument('--coordinator_address', help=argparse.SUPPRESS)
  parser.add_argument('--process_count', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--process_index', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.write_checkpoint:
    print(f'wrote {_write_checkpoint(args, args.write_checkpoint) / 2 ** 30:.2f} GiB checkpoint')
  elif args.child:
    child(args)
  else:
    parent(args)


if __name__ == '__main__':
  main()
