"""One study shared by many workers: its storage (the journal or an RDB), the slot lock that keeps
``MAX_TRIALS`` exact, samplers and pruners, the stored config and launches, warm starts."""
