"""The chat side of cvlocal: a conversation with a GGUF model through llama-cpp-python.

Small modules with one job each:

- (``cvlocal.llama.utf8``, ``cvlocal.llama.stops``: whole characters and stop strings out of the token stream.)
- ``template``: which chat template a model gets, and on which tokens and strings it stops.
- ``generation``: the token loop, Ctrl-C as a flag, and what it measures.
- (llama.cpp's log capture lives in ``cvlocal.llama.log``.)
- ``transcript``: /save and /load.
- ``blocks``: ``\"\"\"`` multi-line messages, the same in the REPL and in scripts.
- ``commands``: the slash commands, shared by the REPL and scripts.
- ``input``, ``render``, ``repl``: the terminal chat.
- ``script``: ``--script FILE`` runs without a terminal.
- ``server``: ``cvlocal serve`` (llama-cpp-python's server with our template handling).

The public session API lives one level up, in :mod:`cvlocal.session`.
"""
