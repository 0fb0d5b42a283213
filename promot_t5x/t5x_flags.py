"""The absl flags T5X users pass to every launch, accepted by promot-train and promot-eval.

T5X's `train.py`/`eval.py` run under `absl.app`, so command lines written for
them carry absl's logging flags and T5X's data flags:

  --alsologtostderr / --logtostderr   absl logging to stderr
  --log_dir=DIR                       absl log files in DIR
  --verbosity=N (-v N)                absl verbosity (0 = INFO, 1 = DEBUG, -1 = WARNING;
                                      default INFO when logs were asked for, else WARNING)
  --tfds_data_dir=DIR                 where TFDS data lives (seqio's TFDS override)
  --seqio_additional_cache_dirs=DIR   more folders seqio looks in for cached tasks
                                      (repeatable, or comma-separated)

`add_flags(parser)` adds them to an argparse parser; `apply(args)` hands the
logging ones to absl (its flags parsed, its handler on Python's root logger, so
every library's `logging` call comes out in absl's format and honours
--verbosity and --log_dir) and the data ones to seqio.
"""

from __future__ import annotations

import argparse
import logging

_ABSL_LOGGING_FLAGS = ('alsologtostderr', 'logtostderr', 'log_dir', 'verbosity')


def add_flags(parser: argparse.ArgumentParser) -> None:
  """Adds T5X's absl logging and data flags to `parser`."""
  group = parser.add_argument_group('T5X / absl flags')
  group.add_argument('--alsologtostderr', action='store_true',
                     help='absl: log to stderr as well as to the log file.')
  group.add_argument('--logtostderr', action='store_true', help='absl: log to stderr only.')
  group.add_argument('--log_dir', default=None, help='absl: write log files into this folder.')
  group.add_argument('--verbosity', '-v', type=int, default=None,
                     help='absl verbosity: 0 INFO, 1 DEBUG, -1 WARNING (default: 0 with '
                          '--alsologtostderr, --logtostderr or --log_dir, else -1).')
  group.add_argument('--tfds_data_dir', default=None,
                     help='TFDS data folder (local or gs://) for every TFDS source, as in T5X.')
  group.add_argument('--seqio_additional_cache_dirs', action='append', default=[],
                     help='more folders with cached seqio tasks (repeat or comma-separate).')


def apply(args: argparse.Namespace, program: str) -> None:
  """Puts the parsed flags into effect: absl logging, TFDS data dir, seqio cache dirs.

  Args:
    args: the parsed command line (with the flags of `add_flags`).
    program: the program name for absl (`promot-train`).
  """
  from absl import flags as absl_flags
  from absl import logging as absl_logging

  argv = [program]
  if args.alsologtostderr:
    argv.append('--alsologtostderr')
  if args.logtostderr:
    argv.append('--logtostderr')
  if args.log_dir:
    argv.append(f'--log_dir={args.log_dir}')
  verbosity = args.verbosity
  if verbosity is None:
    # INFO when the user asked for logs (as T5X shows them), else warnings only: orbax and
    # TensorFlow log every save at INFO.
    verbosity = 0 if (args.alsologtostderr or args.logtostderr or args.log_dir) else -1
  argv.append(f'--verbosity={verbosity}')
  # Only absl's own logging flags are parsed here: the rest of the command line is ours.
  absl_flags.FLAGS(argv, known_only=True)
  absl_logging.use_absl_handler()
  if args.log_dir:
    absl_logging.get_absl_handler().use_absl_log_file(program.replace('-', '_'), args.log_dir)
  logging.getLogger().setLevel(absl_logging.converter.absl_to_standard(absl_flags.FLAGS.verbosity))

  if args.tfds_data_dir or args.seqio_additional_cache_dirs:
    import seqio

    if args.tfds_data_dir:
      seqio.set_tfds_data_dir_override(args.tfds_data_dir)
      absl_logging.info('TFDS data dir: %s', args.tfds_data_dir)
    dirs = [d for value in args.seqio_additional_cache_dirs for d in value.split(',') if d]
    if dirs:
      seqio.add_global_cache_dirs(dirs)
      absl_logging.info('seqio cache dirs added: %s', dirs)
