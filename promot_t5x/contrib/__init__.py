"""Optional parts: hardware-specific speed work behind the interfaces the model takes as arguments.

Nothing here is imported by the core; each part is chosen in a gin file (gin/options/) and
may need an extra (`pip install "promot-t5x[cpu]"`).
"""
