r"""`promot-convert`: convert checkpoints between legacy T5X, Hugging Face and orbax.

  # A released T5X checkpoint -> the project's orbax params (architecture from a model gin):
  promot-convert --from=t5x --to=orbax --input=gs://.../mt5_xxl/checkpoint_1000000 \
      --output=/ckpt/mt5_xxl_params --gin_file=models/mt5_xxl.gin

  # ... or read off the checkpoint's shapes (plus what shapes cannot tell):
  promot-convert --from=t5x --to=hf --input=checkpoint_3 --output=hf_out \
      --relative_attention_max_distance=8

  # The original Mesh-TensorFlow T5/mT5 release -> orbax params:
  promot-convert --from=mesh_tf --to=orbax --input=gs://t5-data/pretrained_models/mt5/xxl \
      --output=/ckpt/mt5_xxl_params --gin_file=models/mt5_xxl.gin

  # Hugging Face folder -> orbax params, and a run's latest params -> Hugging Face:
  promot-convert --from=hf --to=orbax --input=hf_folder --output=/ckpt/params
  promot-convert --from=orbax --to=hf --input=$MODEL_DIR --output=hf_out --gin_file=...

  # A run's latest checkpoint (params + Adafactor state) -> T5X's checkpoint_<step>/ layout:
  promot-convert --from=orbax --to=t5x --input=$MODEL_DIR --output=gs://bucket/t5x_model

The architecture: `hf` inputs carry theirs (config.json). For `t5x`,
`mesh_tf` and `orbax` inputs it comes from `--gin_file` (a model gin defining `MODEL`, with
`--gin_search_paths` / `--gin.NAME=VALUE`), or, without a gin file, from the
parameter shapes (vocabulary, widths, heads, layers, buckets, gated or ReLU
MLP, tied or untied head) plus `--relative_attention_max_distance` (required
for `--to=hf`: no checkpoint stores it) and `--layer_norm_epsilon` (default
1e-6, the value of every released T5/mT5). Soft prompts are never part of an
HF model: `orbax -> hf` writes each as a PEFT prompt-tuning adapter
`OUTPUT/peft/<name>/` and all to `prompts.npz`. The HF export also writes
`generation_config.json`, and the tokenizer files when the vocabulary is known
(the gin model's, or `--sentencepiece_model`).
`--to=t5x` needs no architecture: it writes the parameters under their T5X
names, the run's Adafactor state, and the prompt by `--t5x_prompt`
(`npy`: OUTPUT/prompts/<name>.npy; `target`: inside the checkpoint at
prompt-tuning's `encoder/prompt/prompt/prompt`; `none`); see docs/interop.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from promot_t5x import cli, param_sets
from promot_t5x.checkpoints import hf, matching, mesh_tf, orbax_io, t5x_export, t5x_legacy
from promot_t5x.models import t5

CONVERSIONS = (('t5x', 'orbax'), ('t5x', 'hf'), ('hf', 'orbax'), ('orbax', 'hf'), ('orbax', 't5x'),
               ('hf', 't5x'), ('mesh_tf', 'orbax'), ('mesh_tf', 'hf'), ('mesh_tf', 't5x'))


def _flags(p: argparse.ArgumentParser) -> None:
  p.add_argument('--from', dest='source', required=True,
                 choices=('t5x', 'hf', 'orbax', 'mesh_tf'),
                 help='input format: legacy T5X checkpoint, Hugging Face folder, orbax '
                      '(run folder, step folder or params folder), or a Mesh-TensorFlow T5/mT5 '
                      'checkpoint (folder with TensorFlow\'s `checkpoint` file, or a prefix).')
  p.add_argument('--to', dest='target', required=True, choices=('orbax', 'hf', 't5x'),
                 help='output format (t5x: OUTPUT/checkpoint_<step>/ in the legacy T5X layout).')
  p.add_argument('--input', required=True, help='input path.')
  p.add_argument('--output', required=True, help='output folder.')
  p.add_argument('--force', action='store_true', help='overwrite an existing output.')
  p.add_argument('--step', default='latest',
                 help="with --from=orbax and a run folder: 'latest', 'best' or a step number.")
  p.add_argument('--t5x_prompt', default='npy', choices=t5x_export.PROMPT_PLACEMENTS,
                 help='--to=t5x: where soft prompts go (npy: OUTPUT/prompts/<name>.npy; target: '
                      'encoder/prompt/prompt/prompt in the checkpoint, as prompt-tuning names '
                      'it; none: left out).')
  p.add_argument('--relative_attention_max_distance', type=int, default=None,
                 help='without --gin_file: the max distance of the relative position '
                      'buckets (not stored in checkpoints; T5/mT5 use 128).')
  p.add_argument('--layer_norm_epsilon', type=float, default=None,
                 help='without --gin_file: RMS norm epsilon (default 1e-6).')
  p.add_argument('--mlp_activations', default=None,
                 help="without --gin_file: e.g. 'gelu,linear' (inferred: gated -> gelu,linear; "
                      'single -> relu).')
  p.add_argument('--sentencepiece_model', default=None,
                 help='--to=hf: the SentencePiece model for the tokenizer files (default: the gin '
                      "model's vocabulary; without either no tokenizer is written).")
  p.add_argument('--extra_ids', type=int, default=100,
                 help='with --sentencepiece_model: sentinel count (T5/mT5: 100).')
  p.add_argument('--hf_model_type', default='t5', choices=('t5', 'mt5'),
                 help='model_type written to the HF config.json.')


def _gin_model(args: argparse.Namespace) -> Any:
  """The model (`EncoderDecoderModel`, vocabulary included) the gin files define, or None."""
  if not args.gin_file:
    return None
  from promot_t5x import inspect_model  # gin -> MODEL, shared with promot-inspect
  return inspect_model.model_from_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)


def _model_config(args: argparse.Namespace, shapes: dict[str, tuple[int, ...]],
                  source: str) -> t5.T5Config:
  """The architecture for a t5x/mesh_tf/orbax input: from the gin file or from the shapes.

  Raises:
    ValueError: writing a Hugging Face model without a gin file or
      --relative_attention_max_distance (no checkpoint stores it).
  """
  model = _gin_model(args)
  if model is not None:
    return matching.transformer_of(model).config.replace(prompt=None)
  overrides: dict[str, Any] = {}
  if args.relative_attention_max_distance is not None:
    overrides['relative_attention_max_distance'] = args.relative_attention_max_distance
  elif args.target == 'hf':
    raise ValueError(
        f'{source} does not store relative_attention_max_distance, and the HF config.json must '
        'hold it: pass --relative_attention_max_distance (128 for the released T5, T5.1.1 and '
        'mT5 models) or --gin_file with the model gin.')
  if args.layer_norm_epsilon is not None:
    overrides['layer_norm_epsilon'] = args.layer_norm_epsilon
  if args.mlp_activations:
    overrides['mlp_activations'] = tuple(a.strip() for a in args.mlp_activations.split(','))
  return t5x_legacy.config_from_shapes(shapes, source=source, **overrides)


def _vocabulary(args: argparse.Namespace) -> Any:
  """The vocabulary for the HF tokenizer files: the gin model's, or --sentencepiece_model."""
  if args.sentencepiece_model:
    import seqio
    return seqio.SentencePieceVocabulary(args.sentencepiece_model, extra_ids=args.extra_ids)
  model = _gin_model(args)
  return getattr(model, 'vocabulary', None)


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
  if args.target == 't5x':
    return _convert_to_t5x(args)
  if os.path.exists(args.output) and not args.force:
    raise FileExistsError(f'{args.output} exists; pass --force to overwrite it.')

  if args.source == 't5x':
    checkpoint_dir = t5x_legacy.find_checkpoint_dir(args.input)
    shapes = t5x_legacy.read_t5x_shapes(checkpoint_dir)
    config = _model_config(args, shapes, checkpoint_dir)
    params = t5x_legacy.import_t5x(checkpoint_dir, t5.Transformer(config))
  elif args.source == 'mesh_tf':
    shapes = mesh_tf.read_mesh_tf_shapes(args.input)
    config = _model_config(args, shapes, args.input)
    params = mesh_tf.import_mesh_tf(args.input, t5.Transformer(config))
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
    vocabulary = None if args.source == 'hf' else _vocabulary(args)
    written = hf.export_hf(params, config, args.output, model_type=args.hf_model_type,
                           vocabulary=vocabulary)
    if vocabulary is None and args.source != 'hf':
      print('no tokenizer files written: pass --gin_file or --sentencepiece_model')
  for path in written:
    print(f'wrote {path}')
  return written


def _convert_to_t5x(args: argparse.Namespace) -> list[str]:
  """orbax (params and Adafactor state of a run), mesh_tf or hf -> OUTPUT/checkpoint_<step>/."""
  if args.source == 'orbax':
    step = args.step if args.step in ('latest', 'best') else int(args.step)
    written = t5x_export.export_run_to_t5x(args.input, args.output, step=step,
                                           prompt_placement=args.t5x_prompt, force=args.force)
  else:
    step = 0
    if args.source == 'mesh_tf':
      params = param_sets.unflatten(mesh_tf.read_mesh_tf_params(args.input))
      step = mesh_tf.mesh_tf_checkpoint_step(args.input) or 0
    else:
      _, params = hf.import_hf(args.input)
    written = t5x_export.export_t5x(params, args.output, step=step,
                                    prompt_placement=args.t5x_prompt, force=args.force)
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
