"""The demo's side-by-side picture: each panel as it is, captioned above."""
from __future__ import annotations

import numpy as np

from rawrestore import demo
from rawrestore.output import to_pixels


def test_side_by_side_panels_are_captioned():
    chart = demo.test_chart(128)  # (imported with its module: pytest would collect test_chart)
    panels = [("classical", chart), ("rawrestore", chart.flip(-1)), ("ground truth", 1 - chart)]
    picture = demo.side_by_side(panels, gap=8)
    band = picture.shape[1] - 128
    assert band > 10 and picture.shape[2] == 3 * 128 + 2 * 8
    for index, (_, image) in enumerate(panels):
        left = index * (128 + 8)
        # The panel is pasted as it is (8-bit) ...
        assert np.array_equal(to_pixels(picture[:, band:, left:left + 128], 8), to_pixels(image, 8))
        # ... under a white band with its caption written in dark ink.
        caption = picture[:, :band, left:left + 128]
        assert float(caption.min()) < 0.3 and float((caption == 1).float().mean()) > 0.7
    assert bool((picture[:, :, 128:136] == 1).all())  # the gap stays white
