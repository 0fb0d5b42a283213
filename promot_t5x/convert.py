r"""`promot-convert`: convert checkpoints between legacy T5X, Hugging Face and orbax.

  # A released T5X checkpoint -> the project's orbax params (architecture from a model gin):
  promot-convert --from=t5x --to=orbax --input=gs://.../mt5_xxl/checkpoint_1000000 \
      --output=/ckpt/mt5_xxl_params --gin_file=models/mt5_xxl.gin

  # ... or read off the checkpoint's shapes (plus what shapes cannot tell):
  promot-convert --from=t5x --to=hf --input=checkpoint_3 --output=hf_out \
      --relative_attention_max_distance=8

  # Hugging Face folder -> orbax params, and a run's latest params -> Hugging Face:
  promot-convert --from=hf --to=orbax --input=hf_folder --output=/ckpt/params
  promot-convert --from=orbax --to=hf --input=$MODEL_DIR --output=hf_out --gin_file=...

The architecture: `hf` inputs carry theirs (config.json). For `t5x` and
`orbax` inputs it comes from `--gin_file` (a model gin defining `MODEL`, with
`--gin_search_paths` / `--gin.NAME=VALUE`), or, without a gin file, from the
parameter shapes (vocabulary, widths, heads, layers, buckets, gated or ReLU
MLP, tied or untied head) plus `--relative_attention_max_distance` (default
128) and `--layer_norm_epsilon`, which shapes cannot tell. Soft prompts are
never part of an HF model: `orbax -> hf` writes them to `prompts.npz`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from promot_t5x import cli, param_sets
from promot_t5x.checkpoints import hf, matching, orbax_io, t5x_legacy
from promot_t5x.models import t5

CONVERSIONS = (('t5x', 'orbax'), ('t5x', 'hf'), ('hf', 'orbax'), ('orbax', 'hf'))


def _flags(p: argparse.ArgumentParser) -> None:
  p.add_argument('--from', dest='source', required=True, choices=('t5x', 'hf', 'orbax'),
                 help='input format: legacy T5X checkpoint, Hugging Face folder, or orbax '
                      '(run folder, step folder or params folder).')
  p.add_argument('--to', dest='target', required=True, choices=('orbax', 'hf'),
                 help='output format.')
  p.add_argument('--input', required=True, help='input path.')
  p.add_argument('--output', required=True, help='output folder.')
  p.add_argument('--force', action='store_true', help='overwrite an existing output.')
  p.add_argument('--relative_attention_max_distance', type=int, default=None,
                 help='without --gin_file: the max distance of the relative position '
                      'buckets (not stored in checkpoints; T5/mT5 use 128).')
  p.add_argument('--layer_norm_epsilon', type=float, default=None,
                 help='without --gin_file: RMS norm epsilon (default 1e-6).')
  p.add_argument('--mlp_activations', default=None,
                 help="without --gin_file: e.g. 'gelu,linear' (inferred: gated -> gelu,linear; "
                      'single -> relu).')
  p.add_argument('--hf_model_type', default='t5', choices=('t5', 'mt5'),
                 help='model_type written to the HF config.json.')


def _model_config(args: argparse.Namespace, shapes: dict[str, tuple[int, ...]],
                  source: str) -> t5.T5Config:
  """The architecture for a t5x/orbax input: from the gin file or from the shapes."""
  if args.gin_file:
    from promot_t5x import inspect_model  # gin -> MODEL, shared with promot-inspect
    model = inspect_model.model_from_gin(args.gin_file, args.gin_bindings,
                                         args.gin_search_paths)
    return matching.transformer_of(model).config.replace(prompt=None)
  overrides: dict[str, Any] = {}
  if args.relative_attention_max_distance is not None:
    overrides['relative_attention_max_distance'] = args.relative_attention_max_distance
  if args.layer_norm_epsilon is not None:
    overrides['layer_norm_epsilon'] = args.layer_norm_epsilon
  if args.mlp_activations:
    overrides['mlp_activations'] = tuple(a.strip() for a in args.mlp_activations.split(','))
  return t5x_legacy.config_from_shapes(shapes, source=source, **overrides)


def _describe(config: t5.T5Config) -> str:
  fields = ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim', 'num_encoder_layers',
            'num_decoder_layers', 'mlp_activations', 'logits_via_embedding',
            'relative_attention_num_buckets', 'relative_attention_max_distance',
            'layer_norm_epsilon')
  return '\n'.join(f'  t5.T5Config.{f} = {getattr(config, f)!r}' for f in fields)


def convert(args: argparse.Namespace) -> list[str]:
  """Runs one conversion; returns the paths written."""
  if (args.source, args.target) not in CONVERSIONS:
    raise ValueError(f'Cannot convert {args.source} -> {args.target}; supported: '
                     f'{", ".join(f"{a}->{b}" for a, b in CONVERSIONS)}.')
  if os.path.exists(args.output) and not args.force:
    raise FileExistsError(f'{args.output} exists; pass --force to overwrite it.')

  if args.source == 't5x':
    checkpoint_dir = t5x_legacy.find_checkpoint_dir(args.input)
    shapes = t5x_legacy.read_t5x_shapes(checkpoint_dir)
    config = _model_config(args, shapes, checkpoint_dir)
    params = t5x_legacy.import_t5x(checkpoint_dir, t5.Transformer(config))
  elif args.source == 'hf':
    model, params = hf.import_hf(args.input)
    config = model.config
  else:
    params = orbax_io.load_params(args.input)
    shapes = {p: tuple(v.shape) for p, v in param_sets.flatten(params).items()}
    config = _model_config(args, shapes, args.input)
  print(f'Model ({args.source} {args.input}):\n{_describe(config)}')

  if args.target == 'orbax':
    written = [str(orbax_io.save_params(args.output, params, force=args.force))]
  else:
    written = hf.export_hf(params, config, args.output, model_type=args.hf_model_type)
  for path in written:
    print(f'wrote {path}')
  return written


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main('promot-convert', __doc__, convert, argv, add_flags=_flags, gin=True,
                  parse_gin=False, inline_cpu_dispatch=None)


def console_entry_point() -> None:
  sys.exit(main())


if __name__ == '__main__':
  console_entry_point()
