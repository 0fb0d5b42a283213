r"""`promot-inspect`: parameter count, shapes, logical axes and mesh partitioning.

  promot-inspect --gin_file=gin/models/mt5_xxl.gin --mesh_data=8 --mesh_model=8

Nothing is allocated: parameters are traced with `jax.eval_shape` and the mesh
is abstract, so mT5 XXL (12,921,057,280 parameters) prints instantly on a laptop.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from promot_t5x import cli, gin_utils, partitioning
from promot_t5x.models import encoder_decoder, t5


def build_model(model: encoder_decoder.EncoderDecoderModel | t5.Transformer):
  """gin target: returns `%MODEL`."""
  return model


def model_from_gin(gin_files: Sequence[str], bindings: Sequence[str] = (),
                   gin_search_paths: Sequence[str] = ()):
  gin_utils.parse(gin_files, bindings, gin_search_paths, finalize=False)
  return gin_utils.bind_and_call(
      'promot_t5x.inspect_model.build_model',
      'from __gin__ import dynamic_registration\n'
      'from promot_t5x import inspect_model\n'
      'inspect_model.build_model.model = %MODEL\n'
      # Shapes need no tokenizer: skip building the vocabulary (and importing seqio).
      'from promot_t5x.models import encoder_decoder\n'
      'encoder_decoder.EncoderDecoderModel.vocabulary = None\n')


def describe(module: t5.Transformer, mesh_data: int = 1, mesh_model: int = 1,
             rules: partitioning.LogicalRules = partitioning.STANDARD_LOGICAL_AXIS_RULES,
             ) -> tuple[int, list[dict]]:
  """(total parameter count, one row per parameter) on an abstract mesh."""
  part = partitioning.Partitioner(partitioning.abstract_mesh(mesh_data, mesh_model), rules)
  rows = []
  total = 0
  for path, shape, axes, spec in part.describe(t5.abstract_params(module)):
    count = int(np.prod(shape))
    total += count
    rows.append({'path': path, 'shape': shape, 'count': count, 'axes': axes,
                 'spec': spec,
                 'shard': partitioning.shard_shape(shape, spec, part.mesh_shape)})
  return total, rows


def format_table(total: int, rows: list[dict], config: t5.T5Config, mesh_data: int,
                 mesh_model: int) -> str:
  lines = [
      f'model: emb {config.emb_dim}, {config.num_heads} heads x {config.head_dim}, '
      f'mlp {config.mlp_dim}, {config.num_encoder_layers}+{config.num_decoder_layers} '
      f'layers, vocab {config.vocab_size}, mlp {"/".join(config.mlp_activations)}, '
      f'{"tied" if config.logits_via_embedding else "untied"} logits, '
      f'activations {config.dtype}',
      f'mesh: data={mesh_data} x model={mesh_model}',
      f'total parameters: {total:,}',
      '',
  ]
  w = max(len(r['path']) for r in rows)
  header = (f'{"parameter":<{w}}  {"shape":<16} {"count":>15}  {"logical axes":<28} '
            f'{"mesh axes":<24} per-device')
  lines += [header, '-' * len(header)]
  for r in rows:
    spec = '(' + ', '.join(str(a) for a in tuple(r['spec']) + (None,) * (len(r['shape']) - len(r['spec']))) + ')'
    lines.append(f'{r["path"]:<{w}}  {str(r["shape"]):<16} {r["count"]:>15,}  '
                 f'{str(r["axes"]):<28} {spec:<24} {r["shard"]}')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main('promot-inspect', __doc__, _main, argv, add_flags=_flags, gin=True,
                  parse_gin=False, inline_cpu_dispatch=None,
                  gin_required='--gin_file is required (a model gin, e.g. gin/models/mt5_xxl.gin)')


def _flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--mesh_data', type=int, default=1)
  parser.add_argument('--mesh_model', type=int, default=1)
  parser.add_argument('--total_only', action='store_true',
                      help='print only the parameter count')


def _main(args: argparse.Namespace) -> int:
  model = model_from_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
  module = model.module if isinstance(model, encoder_decoder.EncoderDecoderModel) else model
  total, rows = describe(module, args.mesh_data, args.mesh_model)
  if args.total_only:
    print(f'{total:,}')
  else:
    print(format_table(total, rows, module.config, args.mesh_data, args.mesh_model))
  return 0


def console_entry_point() -> None:
  sys.exit(main())


if __name__ == '__main__':
  console_entry_point()
