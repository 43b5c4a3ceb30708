"""The chat side of cvlocal: a conversation with a GGUF model through llama-cpp-python.

Small modules with one job each:

- ``utf8``: whole characters out of a stream of token bytes.
- ``stops``: holding back text that may be the start of a stop string.
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
