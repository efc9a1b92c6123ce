"""The speed harness end to end, on a tiny file: every configuration runs as a fresh process."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from rawrestore.speed import main


def test_repeated_runs_report_median_and_range(tmp_path, capsys):
    main(["--megapixels", "0.05", "--steps", "1", "--repeats", "2", "--workdir", str(tmp_path)])
    captured = capsys.readouterr()
    assert (tmp_path / "speed_0.05mp.dng").exists() and (tmp_path / "steps1.jpg").exists()
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| (rawrestore --\w+(?: \d)?) \| ([\d.]+) \| ([\d.]+)-([\d.]+) \| ([\d.]+) \|$", captured.out, re.M)}
    assert set(rows) == {"rawrestore --classical", "rawrestore --steps 1"}
    for median, low, high, peak in rows.values():
        assert 0 < float(low) <= float(median) <= float(high)
        assert float(peak) > 0.1  # GiB: torch alone takes more
    assert len(re.findall(r"^round [12]/2: rawrestore --steps 1 ", captured.err, re.M)) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_tile_temporaries_are_reused_not_faulted_in_again():
    # A tile's temporaries, allocated and freed tile after tile, in a fresh process (the setting is
    # process-wide). glibc maps them afresh and faults every page in each round, at its default
    # threshold always, and with its dynamic threshold often (it depends on what was freed when):
    # the baseline is pinned to the former so that the comparison is the same every run.
    script = textwrap.dedent("""
        import resource, sys, torch
        from rawrestore.pipeline import keep_freed_memory
        if sys.argv[1] == "keep":
            keep_freed_memory()
        def tile():
            a, b = torch.ones(3, 864, 912), torch.ones(24, 432, 456)
            c = a * 2
            del a
            return float(c[0, 0, 0] + b[0, 0, 0] + torch.ones(16, 432, 456)[0, 0, 0])
        tile()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            tile()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    faults = {mode: int(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                       check=True, env=env).stdout) for mode in ("default", "keep")}
    pages = 10 * (3 * 864 * 912 * 2 + 40 * 432 * 456) * 4 // 4096
    assert faults["default"] > pages // 2
    assert faults["keep"] < pages // 5
