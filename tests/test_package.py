"""The installable package: its console script, what the wheel carries, and start-up that needs no torch."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = Path(sys.executable).with_name("compression-dash")
HEAVY = ("torch", "transformers", "sklearn", "optuna")


def test_the_console_script_is_the_cli():
    (ep,) = entry_points(group="console_scripts", name="compression-dash")
    from engine.cli import main

    assert ep.load() is main and SCRIPT.is_file()


def test_models_answers_from_an_empty_folder(tmp_path):
    proc = subprocess.run([str(SCRIPT), "models", "--json"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    models = {m["name"]: m for m in json.loads(proc.stdout)["models"]}
    assert models["digits-cnn"]["available"] and models["digits-cnn"]["parameters"] > 0
    assert not list(tmp_path.iterdir())  # nothing written where it was started


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("package") / "r.db"
    proc = subprocess.run([str(SCRIPT), "sweep", "--model", "digits-mlp", "--prune", "0,0.5", "--profile", "quick",
                           "--db", str(path)], cwd=path.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.mark.parametrize("argv", [["models"], ["results", "--db", "{db}"],
                                  ["frontier", "--db", "{db}", "--model", "digits-mlp"]])
def test_the_quick_verbs_import_no_torch(argv, db, tmp_path):
    """What keeps `models`, `results` and `frontier` under a second: torch and its kin are never imported."""
    argv = [a.replace("{db}", str(db)) for a in argv]
    script = ("import sys; from engine.cli import main; code = main(sys.argv[1:]); "
              f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_parameter_counts_read_from_the_weights_are_the_built_models():
    from engine.models import base_model, get_spec, model_names

    for name in model_names():
        spec = get_spec(name)
        if spec.parameters is not None:
            assert spec.parameters() == sum(p.numel() for p in base_model(name)[0].parameters()), name


def test_a_file_that_is_not_safetensors_is_one_clear_error(tmp_path):
    from engine.core.errors import UserError
    from engine.models.weights import count_parameters

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(UserError, match="not a safetensors file"):
        count_parameters([bad])


def test_the_sample_models_resolve_through_their_package():
    import sample_models
    from engine.models.builtin import SAMPLES

    assert SAMPLES == Path(sample_models.__file__).resolve().parent
    assert (SAMPLES / "digits-cnn.safetensors").is_file()


def test_the_wheel_carries_the_sample_models_the_pages_and_the_settings(tmp_path):
    source = tmp_path / "src"  # built from a copy: a build in the checkout leaves build/ behind
    for package in ("engine", "dashboard", "sample_models"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    for path in (ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("requirements*.txt")):
        shutil.copy(path, source)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = ["dashboard/app.py", "dashboard/.streamlit/config.toml", "engine/jobs/shims/amdsmi/__init__.py"]
    wanted += [f"dashboard/app_pages/{p.name}" for p in (ROOT / "dashboard" / "app_pages").glob("*.py")]
    wanted += [f"sample_models/{p.name}" for p in (ROOT / "sample_models").iterdir() if p.is_file()
               and p.suffix in (".py", ".safetensors", ".json", ".txt")]
    assert not [w for w in wanted if w not in names]
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_the_dashboard_store_is_beside_a_checkout_else_in_the_working_folder(monkeypatch, tmp_path):
    from dashboard import state
    from engine.core.install import source_checkout

    monkeypatch.delenv(state.DB_ENV, raising=False)
    assert source_checkout() == ROOT and state.db_path() == str(ROOT / "results.db")
    monkeypatch.setattr(state, "source_checkout", lambda: None)
    monkeypatch.chdir(tmp_path)
    assert state.db_path() == str(tmp_path / "results.db")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_subcommand_serves_from_any_folder_on_loopback(tmp_path):
    import psutil

    port = _free_port()
    proc = subprocess.Popen([str(SCRIPT), "dashboard", "--server.port", str(port)], cwd=tmp_path,
                            env={**os.environ, "COMPRESSION_DASH_DB": str(tmp_path / "r.db")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, health = time.monotonic() + 90, b""
        while time.monotonic() < deadline and health != b"ok":
            try:
                health = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
            except OSError:
                time.sleep(0.3)
        assert health == b"ok"
        assert b"<html" in urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().lower()
        listening = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections() if c.status == "LISTEN"}
        assert listening and listening <= {"127.0.0.1", "::1"}  # the packaged settings were read: this machine only
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_machine_fingerprint_is_kept_between_processes_and_a_damaged_copy_is_recomputed(monkeypatch, tmp_path):
    """`frontier` needs this machine's id; computing it imports torch, so it is kept (keyed by boot, CPU, torch)."""
    from engine.measure import fingerprint as machine

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    machine._own.cache_clear()
    try:
        first = machine._own()
        (kept,) = (tmp_path / "compression-dash").glob("machine-*.json")
        assert json.loads(kept.read_text()) == first
        kept.write_text("{not json")
        machine._own.cache_clear()
        assert machine._own() == first and json.loads(kept.read_text()) == first
    finally:
        machine._own.cache_clear()


def test_the_machine_id_of_a_cpu_only_torch_is_known_without_importing_torch(tmp_path):
    """`frontier` on a fresh boot: the id is computed torch-free where torch is a CPU build, and it is the id the
    full fingerprint (which imports torch) gives, so the rows measured here are found."""
    from engine.measure import fingerprint as fp

    if not (fp._torch_version() or "").endswith("+cpu"):
        pytest.skip("torch here is not a CPU-only build: its GPUs are read through torch")
    code = ("import sys; from engine.measure.fingerprint import machine_id; print(machine_id()); "
            "assert 'torch' not in sys.modules")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}  # nothing kept: as after a reboot
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == fp._compute()["id"]
