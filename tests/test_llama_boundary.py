"""cvlocal/llama is the one place that talks to llama-cpp-python (issue 14).

An AST scan of the source tree: outside ``cvlocal/llama/`` (and the converter library's own
native bindings, ``convert/llama_quantize.py`` and ``convert/ggml_native.py``) no module imports
``llama_cpp`` or reaches into a ``Llama``'s private ``_model`` / ``_ctx`` / ``_stack``.

There are no exceptions: the server and chat-format glue reach llama-cpp-python's high-level
server and chat-format packages through ``cvlocal/llama/server_app.py`` and ``chat_format.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWNERS = ("cvlocal/llama/", "convert/llama_quantize.py", "convert/ggml_native.py")
PRIVATE = {"_model", "_ctx", "_stack"}


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """Each llama_cpp import as (line, ``module`` or ``module:name``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "llama_cpp"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "llama_cpp":
            module = node.module or ""
            found += [(node.lineno, f"{module}:{a.name}") for a in node.names]
    return found


def violations(root: Path) -> list[str]:
    """``file:line: what`` for every llama_cpp import or private Llama attribute outside the owners."""
    out = []
    for path in sorted([*root.glob("cvlocal/**/*.py"), *root.glob("convert/**/*.py")]):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(OWNERS):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        out += [f"{rel}:{line}: imports {what}" for line, what in _imports(tree)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE:
                out.append(f"{rel}:{node.lineno}: touches .{node.attr}")
    return out


def test_only_cvlocal_llama_talks_to_llama_cpp() -> None:
    assert violations(ROOT) == []


def test_the_scan_sees_imports_and_private_attributes(tmp_path: Path) -> None:
    """The scan itself: a module that imports llama_cpp or reads ``llm._model`` is reported."""
    pkg = tmp_path / "cvlocal" / "chat"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("import llama_cpp.llama_cpp as low\n"
                              "def f(llm):\n    from llama_cpp import Llama\n    return llm._model.desc(), llm._ctx\n")
    # template.py was once an allowed exception; nothing is now
    (pkg / "template.py").write_text("from llama_cpp.llama_chat_format import Jinja2ChatFormatter\n")
    owner = tmp_path / "cvlocal" / "llama"
    owner.mkdir()
    (owner / "y.py").write_text("import llama_cpp\nx = None._model\n")
    assert sorted(violations(tmp_path)) == [
        "cvlocal/chat/template.py:1: imports llama_cpp.llama_chat_format:Jinja2ChatFormatter",
        "cvlocal/chat/x.py:1: imports llama_cpp.llama_cpp",
        "cvlocal/chat/x.py:3: imports llama_cpp:Llama",
        "cvlocal/chat/x.py:4: touches ._ctx",
        "cvlocal/chat/x.py:4: touches ._model",
    ]
