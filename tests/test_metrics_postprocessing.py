"""Post-processing of decoded outputs: cut at the next demonstration, first word."""

import numpy as np
import pytest
from promot_t5x_tasks import templates

from promot_t5x import postprocessing

PREFIXES = templates.DEMONSTRATION_PREFIXES


@pytest.mark.parametrize('output, expected', [
    ('Paris Q: Who wrote Hamlet? A: Shakespeare', 'Paris'),
    ('Le chat est noir. Translate English to French: The dog', 'Le chat est noir.'),
    ('Rain in Paris. Article: Stocks fell.', 'Rain in Paris.'),
    ('  Berlin  ', 'Berlin'),
    ('Q: nothing before', ''),
    ('Paris Q:', 'Paris'),
    ('The reQ: stays', 'The reQ: stays'),  # not a prefix in the middle of a word
    ('It was Translated badly', 'It was'),  # a word starting with the prefix cuts
    ('Paris\nQ: next', 'Paris'),
])
def test_cut_at_prefixes(output, expected):
  assert postprocessing.cut_at_prefixes(output, PREFIXES) == expected


def test_cut_uses_the_templates_prefixes():
  assert PREFIXES == ('Q:', 'Translate', 'Article:')
  assert postprocessing.cut_at_prefixes('a Q: b', ()) == 'a Q: b'


@pytest.mark.parametrize('text, expected', [
    ('True', 'True'), ('False.', 'False'), ('"Neither", said', 'Neither'),
    ('  (True) because', 'True'), ('', ''), ('...', ''), ('true', 'true'),
])
def test_first_word(text, expected):
  assert postprocessing.first_word(text) == expected


def test_classification_postprocessor():
  assert postprocessing.classification_postprocessor(
      b'False. Q: next question', prefixes=PREFIXES) == 'False'
  assert postprocessing.classification_postprocessor(
      'Neither', example={}, is_target=True, prefixes=PREFIXES) == 'Neither'


def test_text_postprocessor():
  assert postprocessing.text_postprocessor(
      'Das Haus ist blau. Translate English to German: x', prefixes=PREFIXES) == (
          'Das Haus ist blau.')
  # Targets are never cut: a reference may legitimately contain "Translate".
  assert postprocessing.text_postprocessor(
      'Translate this.', is_target=True, prefixes=PREFIXES) == 'Translate this.'


def test_qa_postprocessor_reads_every_answer_from_the_example():
  example = {'answers': np.array([b'Jupiter', b'Jove'], dtype=object)}
  assert postprocessing.qa_postprocessor('Jupiter', example=example, is_target=True,
                                         prefixes=PREFIXES) == ['Jupiter', 'Jove']
  assert postprocessing.qa_postprocessor('Jupiter', example={}, is_target=True,
                                         prefixes=PREFIXES) == ['Jupiter']
  assert postprocessing.qa_postprocessor('Jove Q: and', example=example,
                                         prefixes=PREFIXES) == 'Jove'
