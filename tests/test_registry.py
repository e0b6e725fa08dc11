"""Entry-point discovery: first-party plugins load like third-party ones, and a broken
package (import error, wrong interface) is reported without breaking the good ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from srpo import registry
from srpo.cli import main
from srpo.errors import PluginError

BROKEN_MODULE = "raise ImportError('needs a package that is not installed: foo_missing')\n"
WRONG_MODULE = """
class NotAVerifier:
    pass

from srpo.api import Verifier

class Half(Verifier):  # forgets score()
    pass
"""


def make_distribution(root: Path, name: str, modules: dict[str, str], entry_points: str) -> None:
    """A real installed-distribution layout (dist-info + modules) that importlib.metadata finds."""
    dist = root / f"{name}-1.2.3.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(entry_points)
    for mod, src in modules.items():
        (root / f"{mod}.py").write_text(src)


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    make_distribution(
        tmp_path,
        "broken_srpo_plugins",
        {"broken_mod": BROKEN_MODULE, "wrong_mod": WRONG_MODULE},
        "[srpo.verifiers]\nbroken = broken_mod:Thing\nnotaverifier = wrong_mod:NotAVerifier\n"
        "half = wrong_mod:Half\n[srpo.loggers]\nmissing_attr = wrong_mod:Nope\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    yield
    for mod in ("broken_mod", "wrong_mod"):
        sys.modules.pop(mod, None)
    registry.refresh()


def test_first_party_plugins_are_discovered():
    infos = {(p.role, p.name): p for p in registry.discover()}
    for key in [
        ("sampler", "hf"),
        ("verifier", "math"),
        ("curriculum", "uniform"),
        ("logger", "console"),
        ("logger", "jsonl"),
    ]:
        assert key in infos, key
        assert infos[key].ok, infos[key].error
        assert infos[key].distribution == "srpo"


def test_broken_plugins_are_reported_not_raised(broken_plugins):
    infos = {(p.role, p.name): p for p in registry.discover()}
    assert "ImportError" in infos[("verifier", "broken")].error
    assert "foo_missing" in infos[("verifier", "broken")].error
    assert "not a subclass of srpo.api.Verifier" in infos[("verifier", "notaverifier")].error
    assert "does not implement score" in infos[("verifier", "half")].error
    assert "AttributeError" in infos[("logger", "missing_attr")].error
    assert infos[("verifier", "broken")].distribution == "broken_srpo_plugins"
    # the good ones still load
    assert registry.get("verifier", "math").__name__ == "MathVerifier"
    with pytest.raises(PluginError, match=r"verifier plugin 'broken'.*is broken: import failed"):
        registry.get("verifier", "broken")


def test_plugins_list_shows_errors(broken_plugins, capsys):
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert "broken_srpo_plugins" in out and "1.2.3" in out
    assert "import failed" in out
    assert "hf" in out and "ok" in out


def test_unknown_plugin_suggests():
    with pytest.raises(PluginError, match="did you mean 'uniform'"):
        registry.get("curriculum", "unifrom")
