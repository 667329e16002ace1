"""Typed results: Latency, Source and Fingerprint round trips, rows written before the types existed, and the text
every front end prints."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from engine.core.measurement import Fingerprint, Latency, Source
from engine.core.result import Result
from engine.results.store import Store

# Two rows as engine 0.3.0 wrote them (`run_recipe(...).to_dict()` at commit b6f1e96): the baseline and
# magnitude 50 % + int8 of digits-mlp, with the machine under the key `device`.
BEFORE = json.loads((Path(__file__).parent / "data" / "results-before-typed.json").read_text())


def test_a_row_written_before_the_types_loads_with_every_number():
    base, r = (Result.from_dict(d) for d in BEFORE)
    old = BEFORE[1]
    assert r.latency.p50 == old["latency_ms"]["p50"] and r.latency.calls == old["latency_ms"]["calls"]
    assert r.speedup == old["speedup"] and r.speedup_spread == old["speedup_spread"]
    assert r.memory_source.kind == "measured" and r.memory_source.how.startswith("VmHWM")
    assert r.energy_source == Source("estimated", "cpu-time", old["energy_note"])
    assert r.machine.id == old["device"]["id"] and r.machine.cpu_flags == tuple(old["device"]["cpu_flags"])
    assert base.speedup == 1.0 and base.latency.baseline_p50 is None


def test_an_old_row_round_trips_with_only_the_machine_renamed():
    old = BEFORE[1]
    new = Result.from_dict(old).to_dict()
    assert new.pop("machine") == old["device"]
    assert new.pop("prepare_how") is None  # added: what preparing the runtime was
    assert new == {k: v for k, v in old.items() if k != "device"}
    assert Result.from_dict(new | {"machine": old["device"]}).to_dict()["machine"] == old["device"]


def test_rows_of_earlier_engines_without_the_newer_keys_still_parse():
    old = json.loads(json.dumps(BEFORE[1]))
    for key in ("steal_cpu", "cpu_pressure", "blocks_disturbed", "baseline_p50", "contention_threshold_cores"):
        del old["latency_ms"][key]
    for key in ("prepare_s", "param_bytes", "energy_note"):
        del old[key]
    r = Result.from_dict(old)
    assert r.latency.steal_cpu is None and r.latency.p50 == old["latency_ms"]["p50"] and r.prepare_s is None
    assert r.energy_source.note == ""


def test_an_old_row_in_a_store_loads(tmp_path):
    r = Result.from_dict(BEFORE[1])
    with Store(tmp_path / "old.db") as s:
        rid = s.put(r)
        s.conn.execute("UPDATE results SET result_json=? WHERE id=?", (json.dumps(BEFORE[1]), rid))
        again = s.get_id(rid)
        rows, damaged = s.rows(model="digits-mlp")
    assert again.to_dict() == r.to_dict() and damaged == 0
    assert rows[0]["device_id"] == BEFORE[1]["device"]["id"] and rows[0]["energy_source"] == "estimated:cpu-time"


def test_keys_a_newer_engine_adds_survive_a_round_trip():
    old = json.loads(json.dumps(BEFORE[1]))
    old["latency_ms"]["p999"] = 0.5
    old["device"]["npu"] = "some accelerator"
    new = Result.from_dict(old).to_dict()
    assert new["latency_ms"]["p999"] == 0.5 and new["machine"]["npu"] == "some accelerator"


@pytest.mark.parametrize("text, kind, how", [
    ("measured:nvml", "measured", "nvml"), ("measured:rapl", "measured", "rapl"),
    ("estimated:cpu-time", "estimated", "cpu-time"),
    ("simulated:dequantized weights", "simulated", "dequantized weights"),
    ("measured:VmHWM growth: a + b", "measured", "VmHWM growth: a + b")])
def test_source_parses_the_stored_spelling_and_writes_it_back(text, kind, how):
    s = Source.parse(text)
    assert (s.kind, s.how) == (kind, how) and str(s) == text and Source.kind_of(text) == kind
    assert s.to_dict() == {"kind": kind, "how": how, "note": ""} and s.to_text() == f"{kind}: {how}"


@pytest.mark.parametrize("text", ["guessed:nvml", "nvml", ""])
def test_a_source_of_no_known_kind_is_refused(text):
    with pytest.raises(ValueError, match="measured, estimated, simulated"):
        Source.parse(text)
    assert Source.kind_of(text) is None and Source.kind_of(None) is None and Source.kind_of(float("nan")) is None


def test_a_damaged_machine_under_the_old_key_is_refused():
    with pytest.raises(TypeError, match="machine.cpu_flags"):
        Result.from_dict({**BEFORE[1], "device": {**BEFORE[1]["device"], "cpu_flags": [1, 2]}})


def test_a_row_with_an_unknown_source_kind_is_damaged():
    bad = {**BEFORE[1], "energy_source": "guessed:cpu-time"}
    with pytest.raises(ValueError):
        Result.from_dict(bad)


def test_latency_and_fingerprint_round_trip():
    lat = Latency.from_dict(BEFORE[1]["latency_ms"], 2.0, 0.1)
    assert lat.to_dict() == BEFORE[1]["latency_ms"] and (lat.speedup, lat.speedup_spread) == (2.0, 0.1)
    fp = Fingerprint.from_dict(BEFORE[1]["device"])
    assert fp.to_dict() == BEFORE[1]["device"] and Fingerprint.from_dict(fp.to_dict()) == fp


def test_the_text_says_every_number_and_how_it_was_obtained():
    r = Result.from_dict(BEFORE[1])
    text = r.to_text()
    lines = text.splitlines()
    assert lines[0].startswith("digits-mlp  magnitude 50%") and "(key " in lines[0]
    for needle in ("accuracy   0.9667  (baseline 0.9689", "params     26,003 non-zero of 50,610",
                   "latency    p50 59.5 µs, p90 62.5 µs, p99 121 µs (IQR/median 3%, 2996 calls, batch 1, "
                   "2 of 2 threads)",
                   "speed-up   2.43× slower than the uncompressed eager fp32 model (paired, spread 0%)",
                   "machine    other work used 0.11 cores while timing",
                   "memory     50.6 KiB peak (measured:VmHWM growth",
                   "energy     650 µJ/inference [estimated:cpu-time]",
                   "kernel     quantize: int8 dynamic GEMM", "warning    unstructured sparsity"):
        assert needle in text, needle
    assert "CONTENDED" not in text and "prepared" not in text
    busy = replace(r, latency=replace(r.latency, contended=True), prepare_s=2.5, prepare_how="ONNX export")
    assert "CONTENDED: re-measure" in busy.to_text()
    assert "prepared   in 2.5 s (ONNX export; not in the latency)" in busy.to_text()
    assert "(preparing the eager runtime; " in replace(r, prepare_s=1.0).to_text()  # a row from before prepare_how


def test_a_failed_result_says_only_what_failed():
    r = Result(model="digits-mlp", recipe=BEFORE[0]["recipe"], machine=BEFORE[0]["device"],
               error="RuntimeError: boom")
    assert r.to_text().splitlines()[1] == "  FAILED: RuntimeError: boom"
    assert r.speedup is None and not r.contended and Result.from_dict(r.to_dict()).to_dict() == r.to_dict()


def test_the_cli_prints_what_the_result_says(capsys):
    from engine.cli import main

    assert main(["run", "--model", "digits-mlp", "--prune", "0.5", "--prune-method", "structured"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits-mlp  structured 50%") and "\n  latency    p50 " in out and "\n  speed-up   " in out
    assert "\n  energy     " in out and "/inference [" in out


@pytest.mark.parametrize("verb", ["frontier", "results"])
def test_the_machine_flags_say_machine_and_keep_the_old_spelling(verb):
    from engine.cli import build_parser

    parser = build_parser()
    extra = ["--model", "digits-mlp"] if verb == "frontier" else []
    for flag in ("--machine", "--device"):
        assert parser.parse_args([verb, *extra, flag, "c622"]).machine == "c622"
    if verb == "frontier":
        assert parser.parse_args([verb, *extra, "--all-devices"]).all_machines
        assert parser.parse_args([verb, *extra, "--all-machines"]).all_machines
