"""seqio task and mixture registrations (import name: promot_t5x_tasks)."""
