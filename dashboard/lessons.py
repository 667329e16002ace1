"""The workshop's lesson path: exercises in order, each with presets, a question, and an answer written from
the numbers measured on this machine (never from figures written down in advance: a class's laptops differ).

Pure data and text: no Streamlit here, so every answer can be tested against real measurements.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from engine.core.hardware import Hardware
from engine.core.measurement import Latency, pct
from engine.core.result import Result
from engine.core.units import fmt_bytes, fmt_ms, fmt_speedup


@dataclass(frozen=True)
class Preset:
    label: str
    fields: dict[str, Any]  # recipe_from_fields keywords, applied to the chosen model


@dataclass(frozen=True)
class Facts:
    """What an answer may quote: the presets' measurements, this machine, and the model's frontier."""

    results: dict[str, Result]
    hardware: Hardware
    frontier: dict[str, Any] | None = None


@dataclass(frozen=True)
class Exercise:
    key: str
    title: str
    goal: str
    page: str  # where its presets are looked at: explore, learn, frontier or export
    presets: tuple[Preset, ...]
    question: str
    notice: str
    answer: Callable[[Facts], str]
    needs_finetune: bool = False


def _line(label: str, r: Result) -> str:
    """One preset's measured numbers in a sentence."""
    if r.error:
        return f"**{label}** failed to run here ({r.error[:120]})"
    return (f"**{label}**: {r.metric_name} {r.accuracy:.3f}, {fmt_ms(r.latency and r.latency.p50)} per call "
            f"({fmt_speedup(r.speedup)} than the uncompressed model), stored {fmt_bytes(r.size_bytes)} "
            f"({(r.baseline_size_bytes or 0) / max(r.size_bytes or 1, 1):.1f}× smaller)")


def _measuring(f: Facts) -> str:
    base, int8 = f.results["Baseline"], f.results["int8"]
    lat = base.latency or Latency()
    return (f"On this machine the uncompressed model's calls spread by **{pct(lat.iqr_ratio)}** "
            f"(IQR/median of {lat.calls} calls) while other work used {lat.foreign_cpu or 0:.2f} cores. "
            f"The int8 point's speed-up is **{fmt_speedup(int8.speedup)}**, and it varied by only "
            f"**{pct(int8.speedup_spread)}** between block pairs: the two models were timed turn and turn "
            "about, so whatever slowed one slowed the other. Single timings drift; paired ratios hold.")


def _pruning(f: Facts) -> str:
    mag, st = f.results["Magnitude 50%"], f.results["Structured 50%"]
    return (f"{_line('Magnitude 50%', mag)}. {_line('Structured 50%', st)}. Half the weights set to zero still go "
            "through the same dense multiply, so magnitude pruning shrinks the stored file (sparse format) but not "
            "the time; structured pruning removes whole channels, so every matrix really is smaller, and faster, "
            f"at a cost in {st.metric_name}.")


def _finetune(f: Facts) -> str:
    before, after = f.results["Structured 50%"], f.results["Structured 50% + 2 epochs"]
    return (f"{_line('Structured 50%', before)}. {_line('… + 2 epochs of fine-tuning', after)}. The fine-tuned "
            f"model keeps the same smaller shape (same speed, same size) and wins back "
            f"**{(after.accuracy - before.accuracy) * 100:+.1f} points** of {after.metric_name}: the remaining "
            "channels learn to do the removed ones' work.")


def _bits(f: Facts) -> str:
    names = ("8 bits", "4 bits", "2 bits")
    lines = [_line(p, f.results[p]) for p in names]
    ran = {p: f.results[p] for p in names if not f.results[p].error}
    kernel = {p: next((k.kernel for k in r.kernels if k.step == "quantize"), None) for p, r in ran.items()}
    real = [f"{p} ({kernel[p]})" if kernel[p] else p for p, r in ran.items() if not r.simulated]
    simulated = [p for p, r in ran.items() if r.simulated]
    return ("; ".join(lines) + ". Each bit fewer halves the number of levels, so the error E = W − Q(W) doubles "
            "in width (see it on Learn): 8 bits are nearly free, 2 bits are not. "
            + (f"Here {', '.join(real)} ran a real low-bit weight kernel. " if real else "")
            + (f"{', '.join(simulated)} ran dequantized (no faster kernel for that width on this machine), so "
               f"{'its' if len(simulated) == 1 else 'their'} latency is marked simulated." if simulated else ""))


def _precision(f: Facts) -> str:
    hw = f.hardware
    bf16, fp16 = f.results["bf16"], f.results["fp16"]
    flags = ", ".join(hw.cpu_flags) or "none detected"
    return (f"This CPU ({hw.cpu_model}; flags {flags}) "
            + ("has native bf16 instructions" if hw.cpu_bf16_native else "has no native bf16 instructions")
            + f": bf16 ran **{fmt_speedup(bf16.speedup)}** than fp32, fp16 **{fmt_speedup(fp16.speedup)}**. "
            "Half-size numbers halve the memory moved, but without instructions for them every operation converts "
            "back to fp32 first, which costs time. On a CPU with AVX512-BF16 or AMX the same bf16 point is faster.")


def _frontier(f: Facts) -> str:
    front = f.frontier
    if not front or not front.get("best"):
        return ("No configuration measured on this machine keeps 99 % of the baseline yet: let the starter grid "
                "finish (Explore shows its progress), then reveal this answer again.")
    best, n = front["best"], front["eligible"]
    return (f"Of the **{n}** configurations measured here that keep at least 99 % of the baseline's "
            f"{front['metric']}, the fastest is **{best['label']}**: {front['metric']} {best['accuracy']:.3f}, "
            f"{fmt_ms(best['latency_p50_ms'])} per call ({fmt_speedup(best['speedup'])}), stored "
            f"{fmt_bytes(best['size_bytes'])}. Every point off the line is beaten on both axes by one on it; the "
            "constraint decides which end of the line you may use.")


def _export(f: Facts) -> str:
    r = f.results["Structured 25% + int8"]
    if r.error:
        return _line("Structured 25% + int8", r)
    return (f"{_line('Structured 25% + int8', r)}. The bundle records these numbers with the recipe; `python -m "
            "engine apply --recipe <folder>/` re-creates the model from the recipe, checks every file's SHA-256, "
            "compares the weights tensor by tensor and re-evaluates both the PyTorch and the ONNX model: exit 0 "
            "means the file you deploy is the one that was measured, exit 1 names the first file that differs.")


EXERCISES: tuple[Exercise, ...] = (
    Exercise("measure", "1. Measuring: noise and the baseline",
             "See how much one timing moves on a shared laptop, and why the tool compares in pairs.", "explore",
             (Preset("Baseline", {}), Preset("int8", {"bits": 8})),
             "Load the baseline and press Re-measure two or three times. How much does the latency move? Then load "
             "int8: why is its speed-up steadier than its latency?",
             "The latency card's help says how many calls were timed and how busy the machine was. The speed-up "
             "comes from alternating blocks of the two models.", _measuring),
    Exercise("pruning", "2. Magnitude versus structured pruning",
             "Remove half the weights two ways and see which one makes the model faster.", "explore",
             (Preset("Magnitude 50%", {"prune": 0.5, "prune_method": "magnitude"}),
              Preset("Structured 50%", {"prune": 0.5, "prune_method": "structured"})),
             "Both remove half of the model. Which one is faster, which one is smaller, and why are zeros not speed?",
             "On Learn, the magnitude-pruned layer keeps its shape with zeros scattered in it; the structured one "
             "has fewer rows.", _pruning),
    Exercise("finetune", "3. Fine-tuning wins accuracy back",
             "Retrain the structured-pruned model briefly and see what comes back.", "explore",
             (Preset("Structured 50%", {"prune": 0.5, "prune_method": "structured"}),
              Preset("Structured 50% + 2 epochs", {"prune": 0.5, "prune_method": "structured",
                                                   "finetune_epochs": 2})),
             "How much accuracy do two epochs of fine-tuning recover, and what does it cost at inference time?",
             "The latency and the size do not change: fine-tuning changes the values of the remaining weights, "
             "not how many there are.", _finetune, needs_finetune=True),
    Exercise("bits", "4. Bit width and the quantization error E = W − Q(W)",
             "Put the weights on grids of 256, 16 and 4 levels and look at the error.", "learn",
             (Preset("8 bits", {"bits": 8, "scheme": "weight-only"}),
              Preset("4 bits", {"bits": 4, "scheme": "weight-only"}),
              Preset("2 bits", {"bits": 2, "scheme": "weight-only"})),
             "How wide is the error histogram at 8, 4 and 2 bits, and at which width does accuracy start to fall?",
             "Pin 8 bits as A on Explore, then load 2 bits: Learn draws both histograms over each other.", _bits),
    Exercise("precision", "5. Numeric precision and this CPU's instruction set",
             "Run the same model in fp32, bf16 and fp16 and explain the result from the CPU's flags.", "explore",
             (Preset("fp32", {}), Preset("bf16", {"precision": "bf16"}), Preset("fp16", {"precision": "fp16"})),
             "Is bf16 faster than fp32 on this laptop? Which instruction would make it faster?",
             "The sidebar lists this machine's relevant CPU flags; a classmate's laptop may have others (compare "
             "after pooling results).", _precision),
    Exercise("frontier", "6. The Pareto frontier under an accuracy constraint",
             "Keep at least 99 % of the baseline's accuracy and find the fastest configuration measured.", "frontier",
             (), "On Frontier, set the minimum to 0.99 × baseline. Which point is the fastest that is still allowed?",
             "Raising the minimum removes the cheap end of the line; hollow points were measured on a busy machine "
             "and wait for a re-measure.", _frontier),
    Exercise("export", "7. Export and re-apply from the command line",
             "Take one configuration away as a verified bundle and check it in a terminal.", "export",
             (Preset("Structured 25% + int8", {"prune": 0.25, "prune_method": "structured", "bits": 8}),),
             "Build the bundle on Export, unzip it and run `python -m engine apply --recipe <folder>/`. What does "
             "it check, and what would make it fail?",
             "Edit one byte of model.onnx and run apply again: it exits 1 and names the file.", _export),
)
