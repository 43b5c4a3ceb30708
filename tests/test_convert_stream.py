"""The one-pass API a merge uses: a tensor stream plus a folder with only config.json and the tokenizer.

The stream must give exactly the file the folder conversion gives (that file's correctness is
what the parity tests check), one tensor at a time, and a broken stream must leave nothing.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cvlocal.outputs.gguf import write_gguf, write_ggufs
from cvlocal.outputs.names import output_paths
from convert.checkpoint import open_checkpoint


def _side_folder(model: Path, dst: Path) -> Path:
    """config.json and tokenizer files only, as a merge writes them next to its stream."""
    dst.mkdir()
    for f in model.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, dst / f.name)
    return dst


@pytest.mark.parametrize("kind", ["llama3", "qwen3"])
def test_stream_gives_the_same_file_as_the_folder(kind, tiny_family, tiny_gguf, tmp_path):
    model = tiny_family(kind).chat
    side = _side_folder(model, tmp_path / f"{kind}-chat")
    with open_checkpoint(model) as ckpt:
        plan = {n: (ckpt.dtype(n), ckpt.shape(n)) for n in ckpt.names()}
        seen: list[tuple[str, int]] = []
        out = write_gguf(side, tmp_path / "streamed.gguf", "q8_0", plan=plan, tensors=ckpt.tensors(), on_progress=lambda n, b: seen.append((n, b)))
    assert out.read_bytes() == tiny_gguf(kind, "q8_0").read_bytes()
    assert [n for n, _ in seen] == list(plan)
    assert sum(b for _, b in seen) == sum(torch.empty(s, dtype=d).nbytes for d, s in plan.values())


def test_stream_metadata_overrides_and_recipe_keys(tiny_family, tmp_path):
    import gguf

    model = tiny_family("qwen2").cp
    with open_checkpoint(model) as ckpt:
        plan = {n: (ckpt.dtype(n), ckpt.shape(n)) for n in ckpt.names()}
        meta = {"general.name": "Qwen2-CP-Chat-v1", "cvlocal.recipe": '{"ratio": 0.5}', "cvlocal.ratio": 0.5, "cvlocal.vectors": ["a", "b"], "cvlocal.count": 3}
        targets = output_paths(tmp_path, "bf16,q8_0", model, plan=plan, metadata=meta)
        written = write_ggufs(model, targets, plan=plan, tensors=ckpt.tensors(), metadata=meta)
    assert sorted(p.name for p in written.values()) == sorted(p.name for p in targets.values())
    for path in written.values():
        f = gguf.GGUFReader(path).fields
        assert f["general.name"].contents() == "Qwen2-CP-Chat-v1"
        label = {1: "F16", 7: "Q8_0", 32: "BF16"}[f["general.file_type"].contents()]
        assert path.name == f"Qwen2-CP-{f['general.size_label'].contents()}-Chat-v1-{label}.gguf"
        assert f["cvlocal.ratio"].contents() == 0.5 and f["cvlocal.count"].contents() == 3
        assert f["cvlocal.vectors"].contents() == ["a", "b"] and f["cvlocal.recipe"].contents() == '{"ratio": 0.5}'
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.values())


def test_broken_stream_leaves_nothing(tiny_family, tmp_path):
    model = tiny_family("qwen2").cp
    with open_checkpoint(model) as ckpt:
        plan = {n: (ckpt.dtype(n), ckpt.shape(n)) for n in ckpt.names()}
        names = list(plan)

        def swapped():
            yield names[1], ckpt.read(names[1])
            yield names[0], ckpt.read(names[0])

        def short():
            for n in names[:-1]:
                yield n, ckpt.read(n)

        def failing():
            yield names[0], ckpt.read(names[0])
            raise KeyboardInterrupt

        for stream, expected in ((swapped(), RuntimeError), (short(), RuntimeError), (failing(), KeyboardInterrupt)):
            with pytest.raises(expected):
                write_ggufs(model, {"q4_k_m": tmp_path / "m.gguf"}, plan=plan, tensors=stream)
            assert list(tmp_path.iterdir()) == []
