"""The parts of tests/web_golden.py: the codecs' schema, every message sampled and
mutated, and the other wire tables (frames, crypto, codes, join, live window)."""
