"""The .pyi stubs match the native classes (their embedded signatures) and the twins (inspect.signature)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import ringbus._core

CORE = Path(ringbus._core.__file__).parent
CLASSES = [("_ring", "Ring"), ("_priority_queue", "PriorityQueue"), ("_array_ring", "ArrayRing")]


def stub_class(module: str, cls: str) -> ast.ClassDef:
    tree = ast.parse((CORE / f"{module}.pyi").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return node
    raise AssertionError(f"{module}.pyi has no class {cls}")


def stub_members(node: ast.ClassDef) -> tuple[dict[str, list[tuple[str, str | None]]], set[str]]:
    """Methods as [(param, default source or None)] without self/cls, and property names."""
    methods: dict[str, list[tuple[str, str | None]]] = {}
    properties: set[str] = set()
    for fn in node.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        if any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list):
            properties.add(fn.name)
            continue
        args = fn.args.posonlyargs + fn.args.args
        defaults = [None] * (len(args) - len(fn.args.defaults)) + [ast.unparse(d) for d in fn.args.defaults]
        methods[fn.name] = [(a.arg, d) for a, d in zip(args, defaults, strict=True)][1:]
    return methods, properties


def native_signature(method) -> list[tuple[str, str | None]]:
    """Parameters from the signature Cython embeds in the docstring.

    E.g. 'Ring.put(self, item, bool block=True, timeout=None)'.
    """
    first = method.__doc__.splitlines()[0]
    m = re.fullmatch(r"\w+\.\w+\((.*)\)", first)
    assert m, f"no embedded signature in {first!r}"
    params = []
    for part in m.group(1).split(", ")[1:]:
        decl, _, default = part.partition("=")
        params.append((decl.split()[-1], default or None))
    return params


def twin_signature(fn) -> list[tuple[str, str | None]]:
    params = list(inspect.signature(fn).parameters.values())[1:]
    return [(p.name, None if p.default is p.empty else repr(p.default)) for p in params]


@pytest.mark.parametrize("module, cls", CLASSES, ids=[c for _, c in CLASSES])
def test_stub_matches_runtime(impl, module, cls):
    runtime = getattr(impl, cls)
    methods, properties = stub_members(stub_class(module, cls))
    public = {n for n in dir(runtime) if not n.startswith("_")}
    assert public == (set(methods) | properties) - {n for n in methods if n.startswith("_")}
    for name in properties:
        assert inspect.isdatadescriptor(inspect.getattr_static(runtime, name)), name
    for name, params in methods.items():
        if impl.name == "c":
            if not name.startswith("__"):  # Cython embeds no signature for __cinit__ / slots
                assert native_signature(getattr(runtime, name)) == params, name
        elif name == "__new__":
            assert twin_signature(runtime.__init__) == params
        elif not name.startswith("__"):
            assert twin_signature(getattr(runtime, name)) == params, name
    for name in ("__len__",):
        assert hasattr(runtime, name) and name in methods


def test_stubs_are_shipped():
    assert (CORE.parent / "py.typed").is_file()
    for module, _ in CLASSES:
        assert (CORE / f"{module}.pyi").is_file()
