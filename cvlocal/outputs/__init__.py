"""Where cvlocal's commands write, and how: the output-path policy on top of the ``convert`` library.

``convert``'s entry points write to the path they are given; everything about *which* path and
*how* lives here, the same for every command:

- ``cvlocal.outputs.atomic``: outputs appear under their final name only when complete; nothing
  the command did not create is ever removed; ``--force`` replaces only the command's own kind.
- ``cvlocal.outputs.overlap``: no output may be, contain or lie inside an input.
- ``cvlocal.outputs.names``: GGUF naming-convention file names and the ``-o`` rule for several types.
- ``cvlocal.outputs.types``: ``--outtype`` lists and ``--tensor-type PATTERN=TYPE`` overrides.
- ``cvlocal.outputs.gguf``: the converter's entry points wrapped in all of the above.
"""
