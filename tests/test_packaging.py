"""The installed package: one `augtune` namespace, next to packages whose names are our folders'."""
import json
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_installs_beside_huggingface_spaces(tmp_path):
    """A fresh environment with augtune (a built wheel, not the checkout) and the registry's
    `spaces` package (Hugging Face's): both import, each from its own files."""
    # build from a copy: pip's in-tree build would leave build/ in the checkout
    source = tmp_path / "source"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    for target in (str(source), "spaces"):  # dependencies are not needed to see where names resolve
        done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", target],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    # run from an empty folder: the checkout's own folders must not be what is imported
    probe = ("import importlib.util, json, augtune.search, augtune.spaces, augtune.trainables\n"
             "hf = importlib.util.find_spec('spaces')\n"
             "print(json.dumps({'hf': hf.origin, 'ours': augtune.spaces.__file__,\n"
             "                  'search': augtune.search.__file__, 'bare_search': bool(importlib.util.find_spec('search'))}))")
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    site = env / "lib"
    assert Path(found["hf"]).parent.name == "spaces" and Path(found["hf"]).is_relative_to(site)
    assert Path(found["ours"]).parent.parts[-2:] == ("augtune", "spaces")
    assert Path(found["ours"]).is_relative_to(site) and Path(found["search"]).is_relative_to(site)
    assert found["hf"] != found["ours"]
    assert not found["bare_search"]  # augtune installs no top-level `search`
    # the entry point names the namespaced module
    entry = (env / "bin" / "augtune").read_text()
    assert "augtune.search.cli" in entry
