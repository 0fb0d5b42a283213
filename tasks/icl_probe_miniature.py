"""The official ICL-vs-instruction probe (`icl_probe`) in the miniature's vocabulary.

Importing this module registers `mini_icl_probe_official*`: the prompts,
sampling, decoding and scoring of `promot_icl_probe_official*`, tokenized with
the synthetic world's 2000-piece SentencePiece vocabulary
(`promot_t5x_tasks.synthetic.vocabulary`) so that the miniature's models can
run them (gin/eval/icl_probe_official_miniature.gin). Most of the probe's
English lies outside the synthetic world: `unknown_piece_counts()` says how
many prompts hold characters the vocabulary can only encode as unknown.
"""

from __future__ import annotations

from promot_t5x_tasks import conjugate as nl
from promot_t5x_tasks import icl_probe
from promot_t5x_tasks.synthetic import vocabulary as mini_vocabulary

PREFIX = 'mini'
NAMES = icl_probe.register_official_probe_tasks(mini_vocabulary.get_vocabulary(), prefix=PREFIX)


def unknown_piece_counts() -> dict[str, tuple[int, int, int]]:
  """{rendering: (prompts with an unknown piece, first-word answers with one, prompts)}.

  Over the four task pairs. The vocabulary has no byte fallback: a character
  it lacks (digits, underscores, most accented letters) becomes the unknown id
  (2), which the model can neither read nor write, so an answer holding one
  cannot be scored correct.
  """
  vocabulary = mini_vocabulary.get_vocabulary()
  unk = vocabulary.tokenizer.unk_id()
  out = {}
  for rendering in nl.PROBE_RENDERINGS:
    examples = [e for t, q in icl_probe.TASK_PAIRS
                for e in icl_probe.official_probe_examples(t, q, rendering)]
    out[rendering] = (sum(unk in vocabulary.encode(e.inputs) for e in examples),
                      sum(unk in vocabulary.encode(e.first_word_answer) for e in examples),
                      len(examples))
  return out
