"""The benchmark end to end on a tiny set: it builds the noisy DNGs from validation photos, scores
each method it can run on them, and says why it skips the others."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from rawrestore import bench
from rawrestore.dataset import split_of


def test_a_tiny_benchmark_scores_the_model_above_the_classical_isp(tmp_path):
    import imageio.v3 as iio
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    names = [n for n in (f"photo{i}.png" for i in range(40)) if split_of(Path(n)) == "val"][:2]
    for name, image in zip(names, (data.astronaut()[100:324, 150:374], data.coffee()[100:324, 200:424])):
        iio.imwrite(photos / name, image)
    work = tmp_path / "work"
    assert bench.main(["--photos", str(photos), "--workdir", str(work), "--images", "2", "--size", "224",
                       "--levels", "iso100", "iso25600", "--methods", "classical", "classical+nlm", "model",
                       "--steps", "1"]) == 0
    (report,) = work.glob("*/results.json")
    results = {r["name"]: r for r in json.loads(report.read_text())["results"]}
    classical, model = results["classical"]["levels"], results["v15 (steps=1)"]["levels"]
    assert len(classical["iso100"]["images"]) == 2
    assert model["iso25600"]["mean"]["psnr"] > classical["iso25600"]["mean"]["psnr"] + 2
    assert model["iso100"]["mean"]["de00"] < 3
    if importlib.util.find_spec("cv2") is None:
        assert 'pip install -e ".[bench]"' in results["classical+nlm"]["skipped"]
    else:
        assert results["classical+nlm"]["levels"]["iso25600"]["mean"]["psnr"] > classical["iso25600"]["mean"]["psnr"]
