"""MkDocs hook (``hooks:`` in mkdocs.yml): the pages that must not drift from the code.

* ``reference.md`` — the run-file reference, generated at build time from the pydantic models
  of ``srpo.config`` and the ``Options`` model of every first-party plugin (found through
  ``srpo.registry``, i.e. the entry points of pyproject.toml). Each option: its name, type,
  default and the ``Field(description=...)`` of the code. A field without a description is
  rendered with an empty cell; ``tests/test_docs.py`` fails naming it.
* ``benchmarks.md`` — ``benchmarks/RESULTS.md`` as it is (one copy of the measured numbers).
* The result plots stay in ``benchmarks/results/`` (one copy in the repository). Pages link
  them as ``../benchmarks/results/...`` (right when the page is read on GitHub); this hook adds
  the images to the site and rewrites those links to the site's copy.

``python docs/hooks/srpo_docs.py`` prints the reference page.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = "benchmarks/results"
#: The plugin roles in the order the page lists them, with their entry-point groups.
ROLES = (
    ("sampler", "srpo.samplers"),
    ("verifier", "srpo.verifiers"),
    ("curriculum", "srpo.curricula"),
    ("logger", "srpo.loggers"),
)
FIRST_PARTY = "srpo_plugins."


# ---------------------------------------------------------------------------------------------
# walking the models


def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The pydantic models an annotation holds, with the key suffix that reaches them:
    ``""`` for a model (or an optional one), ``"DOMAIN"`` for ``dict[str, Model]``,
    ``"[N]"`` for ``list[Model]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return [m for a in args for m in _models_in(a)]
    if origin is dict and len(args) == 2:
        return [("DOMAIN" if not s else f"DOMAIN.{s}", m) for s, m in _models_in(args[1])]
    if origin is list and args:
        return [("[N]" if not s else f"[N].{s}", m) for s, m in _models_in(args[0])]
    return []


def walk(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every field of ``model`` and of the models nested in it, depth first, as
    ``(dotted key, field)``; a nested model's fields follow the field that holds it."""
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key, info
        for suffix, sub in _models_in(info.annotation):
            if sub is not model:
                yield from walk(sub, f"{key}.{suffix}." if suffix else f"{key}.")


def first_party_plugins() -> list[tuple[str, str, type]]:
    """``(role, name, class)`` of every plugin srpo itself registers; raises when one is
    broken (its options could not be documented)."""
    from srpo import registry

    out = []
    for info in registry.discover():
        if not info.target.startswith(FIRST_PARTY):
            continue  # a third-party package installed beside srpo: not srpo's reference
        if info.cls is None:
            raise RuntimeError(f"{info.role} plugin {info.name} ({info.target}): {info.error}")
        out.append((info.role, info.name, info.cls))
    order = {role: i for i, (role, _) in enumerate(ROLES)}
    return sorted(out, key=lambda p: (order[p[0]], p[1]))


def documented_models() -> Iterator[tuple[str, type[BaseModel]]]:
    """``(where, model)``: each top-level section of the run file, then each plugin's
    ``Options``; ``where`` is how the reference page and the tests name it."""
    from srpo.config import RunConfig

    yield "RunConfig", RunConfig
    for role, name, cls in first_party_plugins():
        yield f"{role} {name}", cls.Options


def missing_descriptions() -> list[str]:
    """``where: key (Model.field)`` of every documented field without a description."""
    missing = []
    for where, model in documented_models():
        for key, info in walk(model):
            if not (info.description or "").strip():
                missing.append(f"{where}: {key}")
    return missing


# ---------------------------------------------------------------------------------------------
# rendering


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "none"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(repr(a) if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "section"
        return {"Path": "path", "NoneType": "none"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    factory = info.default_factory
    value = factory() if factory is not None else info.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(below)"
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        return ", ".join(getattr(v, "name", "…") for v in value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return str(value)
    return repr(value) if isinstance(value, str) else str(value)


def _cell(text: str) -> str:
    """Plain text safe in a Markdown table cell (no pipes, emphasis or HTML)."""
    text = " ".join(text.split())
    for ch, esc in (("\\", "\\\\"), ("|", "\\|"), ("*", "\\*"), ("_", "\\_"), ("<", "&lt;")):
        text = text.replace(ch, esc)
    return text


def _code(text: str) -> str:
    return "`" + text.replace("|", "or").replace("`", "'") + "`"


def _table(model: type[BaseModel]) -> list[str]:
    rows = ["| option | type | default | description |", "|---|---|---|---|"]
    for key, info in walk(model):
        rows.append(
            f"| {_code(key)} | {_code(_type_name(info.annotation))} | {_code(_default(info))} "
            f"| {_cell(info.description or '')} |"
        )
    return rows


def _doc_line(cls: type) -> str:
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split())


def reference_markdown() -> str:
    """The whole reference page."""
    from srpo.config import RunConfig

    out = [
        "# Run-file reference",
        "",
        "*Generated when the site is built, from the pydantic models of `srpo/config.py` and "
        "the `Options` model of every plugin srpo registers (`docs/hooks/srpo_docs.py`); "
        "do not edit it by hand. `srpo validate FILE` checks a run file against the same "
        "models.* A key `a.b` is `b` inside `a`; `DOMAIN` stands for a domain name "
        "(`math`, `code`, ...), `[N]` for an item of a list. How the run file is read: "
        "[The run file](run-file.md).",
        "",
        "## Sections",
        "",
    ]
    for name, info in RunConfig.model_fields.items():
        out += [f"### `{name}`", "", _cell(info.description or ""), ""]
        models = _models_in(info.annotation)
        if not models:
            out += [f"Type {_code(_type_name(info.annotation))}.", ""]
            continue
        suffix, model = models[0]
        prefix = f"{suffix}." if suffix else ""
        rows = ["| option | type | default | description |", "|---|---|---|---|"]
        rows.append(
            f"| {_code(name)} | {_code(_type_name(info.annotation))} | {_code(_default(info))} "
            f"| {_cell(info.description or '')} |"
        )
        for key, sub in walk(model, f"{name}.{prefix}"):
            rows.append(
                f"| {_code(key)} | {_code(_type_name(sub.annotation))} | {_code(_default(sub))} "
                f"| {_cell(sub.description or '')} |"
            )
        out += [*rows, ""]
        if model.__name__ == "PluginSpec":
            out += ["The plugins and their `options`: below.", ""]

    titles = {"sampler": "Samplers", "verifier": "Verifiers", "curriculum": "Curricula",
              "logger": "Loggers"}  # fmt: skip
    plugins = first_party_plugins()
    for role, group in ROLES:
        out += [
            f"## {titles[role]}",
            "",
            f"Entry-point group `{group}`. Each plugin's keys go under its `options:`.",
            "",
        ]
        for r, name, cls in plugins:
            if r != role:
                continue
            out += [f"### {role} `{name}`", "", f"`{cls.__module__}.{cls.__qualname__}`"]
            doc = _doc_line(cls)
            out += ["", _cell(doc)] if doc else []
            out += [""]
            if cls.Options.model_fields:
                out += [*_table(cls.Options), ""]
            else:
                out += ["No options.", ""]
    return "\n".join(out) + "\n"


def benchmarks_markdown() -> str:
    return (ROOT / "benchmarks" / "RESULTS.md").read_text()


# ---------------------------------------------------------------------------------------------
# MkDocs hooks

_RESULTS_LINK = re.compile(r"\]\(\.\./(" + re.escape(RESULTS_DIR) + r"/[^)\s]+)\)")


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference.md", content=reference_markdown()))
    files.append(File.generated(config, "benchmarks.md", content=benchmarks_markdown()))
    for image in sorted((ROOT / RESULTS_DIR).rglob("*.png")):
        files.append(
            File(
                image.relative_to(ROOT).as_posix(),
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "/" in page.file.src_uri:
        return markdown  # the pages that show plots sit at the top of docs/
    return _RESULTS_LINK.sub(r"](\1)", markdown)


if __name__ == "__main__":
    print(reference_markdown(), end="")
