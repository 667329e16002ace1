

def machine_line(command: str) -> str:
    """The machine a benchmark ran on, the command and the date: every results file opens with it, because
    ratios from different machines (or days) must never be compared."""
    import time

    from engine.measure.fingerprint import fingerprint

    fp = fingerprint()
    return (f"Machine: {fp['cpu']}, {fp['logical_cores']} logical cores, flags {', '.join(fp['cpu_flags']) or 'none'}; "
            f"torch {fp['torch']}; GPU: {fp['gpu'] or 'none'}. `python -m {command}` on {time.strftime('%Y-%m-%d')}.")
