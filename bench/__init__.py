"""Benchmarks: each module measures one thing and writes JSON under reports/bench/."""
