"""The paper's PaLM-style templates, shared by the real tasks and the miniature.

Every task family renders its inputs through one function here, so the
synthetic world and the TFDS tasks produce text of the same shape:

  RTE:            `[premise] question: [hypothesis] Is it true or false? answer:`
  CB, SNLI:       `[premise] question: [hypothesis] Is it true or false or neither? answer:`
  WiC:            `[sentence1] [sentence2] question: The word [word] is used in the same
                   way in the two sentences. Is it true or false? answer:`
  QA:             `Q: [question] A:`
  OpenbookQA:     `Q: [question] A) [c1] B) [c2] C) [c3] D) [c4] A:` -> the letter
  translation:    `Translate [source language] to [target language]: [sentence]`
  summarization:  `Article: [article] One sentence summary:`

Few-shot inputs are the demonstrations (input, a space, target) followed by
the query input, joined by single spaces: SentencePiece vocabularies of T5
normalize newlines away, so a space is what the model would see anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

# Output post-processing cuts a generation at the next demonstration prefix.
DEMONSTRATION_PREFIXES = ('Q:', 'Translate', 'Article:')
DEMONSTRATION_SEPARATOR = ' '

BINARY_LABELS = ('True', 'False')
THREE_WAY_LABELS = ('True', 'False', 'Neither')


def binary_inference(premise: str, hypothesis: str) -> str:
  """RTE (and the miniature's binary inference)."""
  return f'{premise} question: {hypothesis} Is it true or false? answer:'


def three_way_inference(premise: str, hypothesis: str) -> str:
  """CB and SNLI (and the miniature's three-way inference)."""
  return f'{premise} question: {hypothesis} Is it true or false or neither? answer:'


def word_in_context(sentence1: str, sentence2: str, word: str) -> str:
  """WiC."""
  return (f'{sentence1} {sentence2} question: The word {word} is used in the same way '
          'in the two sentences. Is it true or false? answer:')


def question_answering(question: str) -> str:
  """TriviaQA, WebQuestions (and OpenbookQA's question text)."""
  return f'Q: {question} A:'


def translation(source_language: str, target_language: str, sentence: str) -> str:
  """WMT En-Fr, En-De, En-Ro (and the miniature's toy languages)."""
  return f'Translate {source_language} to {target_language}: {sentence}'


def summarization(article: str) -> str:
  """XSum, WikiLingua."""
  return f'Article: {article} One sentence summary:'


def with_demonstrations(query_input: str, demonstrations: Sequence[tuple[str, str]],
                        separator: str = DEMONSTRATION_SEPARATOR) -> str:
  """`demo_input demo_target ... query_input`: k-shot input from k (input, target) pairs."""
  parts = [f'{inp} {tgt}' for inp, tgt in demonstrations]
  parts.append(query_input)
  return separator.join(parts)


CHOICE_LETTERS = ('A', 'B', 'C', 'D')


def multiple_choice_question(stem: str, choices: Sequence[str]) -> str:
  """OpenbookQA's question text (goes into `question_answering`); the target is a letter.

  `[stem] A) [choice 1] B) [choice 2] C) [choice 3] D) [choice 4]` (the paper's
  table 7), so the whole input is `Q: ... D) [choice 4] A:` and the answer is `B`.
  """
  if len(choices) > len(CHOICE_LETTERS):
    raise ValueError(f'At most {len(CHOICE_LETTERS)} choices, got {len(choices)}.')
  return ' '.join([stem] + [f'{letter}) {choice}' for letter, choice in zip(CHOICE_LETTERS, choices)])
