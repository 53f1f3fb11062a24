"""The benchmark group: scenarios (forward, generate), the greedy KV-cache decode loop, memory figures, the
memory-bandwidth roofline and the sweep summary (table, csv, markdown, plot)."""
