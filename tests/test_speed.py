"""The speed harness end to end, on a tiny file: every configuration runs as a fresh process."""
from __future__ import annotations

import re

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
