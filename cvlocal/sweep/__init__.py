"""``cvlocal sweep``: measure the merge at several ratios and say which one to ship.

Layers, each its own module: :mod:`point` (one point as a picklable task and the pure function
that does it, so it can run in another process or on a Ray worker), :mod:`artifacts` (the GGUFs a
point needs, content-addressed in the cache), :mod:`measure` (the evaluation of one GGUF: the
offline suites and the demo's held-out measures), :mod:`executors` (where points run), :mod:`plan`
(options to tasks), :mod:`pick` (the recommendation rule), :mod:`report`, :mod:`plot` (the files and
the terminal view, built from gathered results only, whichever executor ran).
"""
