"""promot-t5x: ProMoT (prompt tuning, then model tuning) as a T5X-style JAX pipeline."""

__version__ = '0.1.0'
