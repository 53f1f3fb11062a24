"""The benchmark group: scenarios (forward, generate), the greedy KV-cache decode loop, the one
statistics helper, memory sampling and the sweep summary (table, csv, markdown, plot)."""
