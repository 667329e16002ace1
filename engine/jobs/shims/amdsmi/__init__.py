"""Stand-in for zeus's AMD GPU binding on machines without ROCm's libamd_smi.so, where the real package fails to
import with an error Ray does not catch: importing this says "no AMD GPU here" in the way Ray expects."""
raise ImportError("amdsmi: ROCm's libamd_smi.so is not installed on this machine")
