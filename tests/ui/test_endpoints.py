"""Every endpoint of the running demo through gradio_client, good and bad inputs; the server keeps serving."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import vmoba
from vmoba.events import simulate_events, write_events
from vmoba.pipelines import DEFAULT_VMOBA_CONFIG, load_default_pipeline
from vmoba.ui.attention_view import latent_frame
from vmoba.video import psnr, read_video

from ui_support import DEFAULT_MODEL, moving_square_clip, write_clip

pytestmark = pytest.mark.slow

KNOBS = [0.25, "threshold", "query_head", "token", "1d,2d,3d", 3, 32, 80, 1, 2, 2, 2, 2, 2]  # DEFAULT_VMOBA_CONFIG


def t2v(prompt="a red circle moves right", model=DEFAULT_MODEL, attention="VMoBA", frames=5, height=64, width=64,
        steps=3, guidance=5.0, seed=0, knobs=KNOBS):
    return [prompt, model, attention, frames, height, width, steps, guidance, seed, *knobs]


def video_input(path):
    from gradio_client import handle_file

    return handle_file(str(path))  # Gradio 6: a video input is a plain file


def file_input(path):
    from gradio_client import handle_file

    return handle_file(str(path))


def shrink(video: np.ndarray, factor: int) -> np.ndarray:
    return video[:, ::factor, ::factor]


def test_generate_returns_the_clip_the_pipeline_makes(client):
    video, summary, chart, *controls = client.predict(*t2v(seed=7), api_name="/generate")
    # the same request straight through the pipeline, in this process
    pipe = load_default_pipeline(quiet=True)
    vmoba.enable(pipe, DEFAULT_VMOBA_CONFIG)
    reference = pipe("a red circle moves right", height=64, width=64, num_frames=5, num_inference_steps=3,
                     guidance_scale=5.0, generator=torch.Generator().manual_seed(7), output_type="np").frames[0]
    served = read_video(video)
    assert served.shape == (5, 256, 256, 3)  # shown 4x larger
    assert psnr(shrink(served, 4)[..., :3], reference) > 30
    other_seed = pipe("a red circle moves right", height=64, width=64, num_frames=5, num_inference_steps=3,
                      guidance_scale=5.0, generator=torch.Generator().manual_seed(8), output_type="np").frames[0]
    assert psnr(shrink(served, 4), reference) > psnr(shrink(served, 4), other_seed) + 3
    rows = chart["data"]
    assert len(rows) == 3 * 6  # steps x layers
    assert {r[0] for r in rows} == {0, 1, 2}
    densities = [r[1] for r in rows]
    assert all(0 < d <= 1 for d in densities)
    assert "VMoBA" in summary and f"{np.mean(densities):.3f}" in summary


def test_attention_view_follows_the_click(client):
    client.predict(*t2v(seed=1), api_name="/generate")
    image_a, caption_a = client.predict(2, 40, 20, 2, 1, "all heads", api_name="/attention_view")
    t = latent_frame(2, 5, 2)
    assert f"(t={t}, h={int(20 * 8 / 64)}, w={int(40 * 8 / 64)})" in caption_a
    assert "Step 1, layer 2" in caption_a
    image_b, caption_b = client.predict(0, 4, 60, 2, 1, "head 3", api_name="/attention_view")
    assert "(t=0, h=7, w=0)" in caption_b and "head 3" in caption_b
    from PIL import Image

    a, b = np.asarray(Image.open(image_a)), np.asarray(Image.open(image_b))
    assert a.shape == b.shape == (30 + 8 * 16 + 14, 2 * 8 * 16 + 4, 3)  # two latent frames of 8x8 tokens, under the label
    assert not np.array_equal(a, b)
    picker = client.predict(4, api_name="/frame")
    assert np.asarray(Image.open(picker)).shape[:2] == (256, 256)
    with pytest.raises(Exception, match="greater than maximum value 2"):  # the step slider ends at the last step
        client.predict(2, 40, 20, 2, 9, "all heads", api_name="/attention_view")
    with pytest.raises(Exception, match="outside"):
        client.predict(2, 400, 20, 2, 1, "all heads", api_name="/attention_view")
    with pytest.raises(Exception, match="greater than maximum value 4"):  # 5 frames: 0-4
        client.predict(9, api_name="/frame")


def test_attention_view_needs_a_sparse_generation(demo_server):
    from gradio_client import Client

    fresh = Client(demo_server[0], verbose=False)
    with pytest.raises(Exception, match="run a generation first"):
        fresh.predict(0, 10, 10, 0, 0, "all heads", api_name="/attention_view")
    fresh.predict(*t2v(attention="dense", steps=1), api_name="/generate")
    with pytest.raises(Exception, match="ran dense attention"):
        fresh.predict(0, 10, 10, 0, 0, "all heads", api_name="/attention_view")


def test_criss_cross_and_a_model_from_the_models_folder(client):
    video, summary, chart, *_ = client.predict(*t2v(attention="criss-cross", model="shapes/copy", steps=2),
                                               api_name="/generate")
    assert read_video(video).shape[0] == 5
    T, H, W = 2, 8, 8
    assert all(r[1] == pytest.approx((T + H + W - 2) / (T * H * W)) for r in chart["data"])
    _, caption = client.predict(1, 10, 10, 0, 1, "all heads", api_name="/attention_view")
    assert "criss-cross" in caption


def test_compare_reports_time_ratio_density_and_psnr(client):
    dense, sparse, text, chart, *_ = client.predict(*t2v(steps=2), api_name="/compare")
    a, b = read_video(dense), read_video(sparse)
    assert a.shape == b.shape == (5, 256, 256, 3)
    ratio = float(re.search(r"time ratio dense/sparse \*\*([0-9.]+)\*\*", text).group(1))
    reported_psnr = float(re.search(r"PSNR of sparse against dense \*\*([0-9.]+) dB", text).group(1))
    density = float(re.search(r"Mean density \*\*([0-9.]+)\*\*", text).group(1))
    assert ratio > 0 and 0 < density < 1
    # the reported PSNR is of the raw frames; the served clips went through H.264, so allow a few dB
    assert abs(psnr(shrink(a, 4), shrink(b, 4)) - reported_psnr) < 4


@pytest.mark.parametrize("change, message", [
    (dict(prompt=""), "prompt must be some words"),
    (dict(frames=6), "4k\\+1"),
    (dict(height=72), "multiples of 16"),
    (dict(steps=50), "greater than maximum value 10"),  # the slider's own check
    (dict(model="/etc"), "not in the list of choices"),  # the dropdown's own check
    (dict(model="not-a-model"), "not in the list of choices"),
    (dict(attention="flash"), "not in the list of choices"),
    (dict(knobs=[1.5, *KNOBS[1:]]), "greater than maximum value 1.0"),
    (dict(knobs=[*KNOBS[:4], "4d", *KNOBS[5:]]), "layer schedule"),
])
def test_generate_refuses_bad_values_and_keeps_serving(client, change, message):
    with pytest.raises(Exception, match=message):
        client.predict(*t2v(**change), api_name="/generate")
    video, *_ = client.predict(*t2v(steps=1), api_name="/generate")
    assert read_video(video).shape[0] == 5


def test_events_from_a_clip_and_from_a_file(client, tmp_path):
    clip = moving_square_clip(frames=5, dx=3)
    path = write_clip(tmp_path / "square.mp4", clip)
    strip, video, text = client.predict("video clip (events simulated)", video_input(path), None, 4, 64, 0.2, 2, 0,
                                        api_name="/events_to_video")
    from PIL import Image

    assert np.asarray(Image.open(strip)).shape[1] > 4 * 64  # four interval images side by side
    frames = read_video(video)
    assert frames.shape[0] == 4
    scores = [float(s) for s in re.findall(r"\*\*(0\.[0-9]+)\*\*", text)]
    assert len(scores) == 2 and all(0 < s <= 1 for s in scores)

    grey = torch.from_numpy(clip[..., 0])
    events = simulate_events(grey, torch.linspace(0, 0.5, 5), contrast_threshold=0.2)
    write_events(tmp_path / "square.npz", events)
    strip, video, text = client.predict("event file", None, file_input(tmp_path / "square.npz"), 3, 64, 0.2, 2, 0,
                                        api_name="/events_to_video")
    assert read_video(video).shape[0] == 3
    assert f"{len(events):,} events" in text and "No ground truth" in text


def test_events_refuse_bad_uploads(client, tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video")
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("64 64\n0.1 3 4 1\nnot numbers here\n")
    long_clip = write_clip(tmp_path / "long.mp4", moving_square_clip(frames=32, dx=1))  # 4 s at 8 fps
    cases = [
        (("video clip (events simulated)", None, None), "no video given"),
        (("video clip (events simulated)", video_input(not_video), None), "could not be read"),
        (("video clip (events simulated)", video_input(long_clip), None), "lasts 4.0 s; the limit is 3 s"),
        (("event file", None, file_input(garbage)), "could not be read"),
        (("event file", None, None), "no event file given"),
    ]
    for (source, video, events), message in cases:
        with pytest.raises(Exception, match=message):
            client.predict(source, video, events, 3, 64, 0.2, 1, 0, api_name="/events_to_video")
    big = tmp_path / "big.npz"
    big.write_bytes(np.random.default_rng(0).bytes(2 * 1024 * 1024))  # over the 1 MB upload limit
    with pytest.raises(Exception):
        client.predict("event file", None, file_input(big), 3, 64, 0.2, 1, 0, api_name="/events_to_video")
    ok = write_clip(tmp_path / "ok.mp4", moving_square_clip(frames=3))
    _, video, _ = client.predict("video clip (events simulated)", video_input(ok), None, 2, 64, 0.2, 1, 0,
                                 api_name="/events_to_video")
    assert read_video(video).shape[0] == 2


def test_motion_energy_reads_the_direction(client, tmp_path):
    right = write_clip(tmp_path / "right.mp4", moving_square_clip(frames=9, dx=2))
    flow, energy, text = client.predict(video_input(right), 9, api_name="/motion_energy")
    assert "**right**" in text
    down = write_clip(tmp_path / "down.mp4", moving_square_clip(frames=9, dx=0, dy=2))
    _, _, text = client.predict(video_input(down), 9, api_name="/motion_energy")
    assert "**down**" in text
    from PIL import Image

    assert np.asarray(Image.open(flow)).shape[1] > 2 * 64 and np.asarray(Image.open(energy)).shape[0] > 100
    short = write_clip(tmp_path / "short.mp4", moving_square_clip(frames=5))
    with pytest.raises(Exception, match="needs at least 7"):
        client.predict(video_input(short), 9, api_name="/motion_energy")
    with pytest.raises(Exception, match="greater than maximum value 16"):
        client.predict(video_input(right), 20, api_name="/motion_energy")
    with pytest.raises(Exception, match="no video given"):
        client.predict(None, 9, api_name="/motion_energy")


def test_motion_generate_follows_the_clip_through_the_models_adapter(client, tmp_path, monkeypatch):
    """The tab's clip goes to the embedded model's motion adapter (here one with random weights, so that it
    acts): the page shows what the library gives for the same clip, prompt and seed; bad input is named."""
    from vmoba.motion import MotionEnergy, MotionEnergyAdapter
    from vmoba.pipelines import load_pipeline
    from vmoba.processors import enable
    from vmoba.ui import motion_demo
    from vmoba.video import to_uint8

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    adapter = MotionEnergyAdapter.for_transformer(pipe.transformer, energy=MotionEnergy(num_orientations=4,
                                                  num_scales=2), hidden=8, pooling="global", inject="text")
    torch.nn.init.normal_(adapter.proj.weight, std=1.0)
    monkeypatch.setattr(motion_demo, "motion_adapter", lambda: adapter)

    right = write_clip(tmp_path / "right.mp4", moving_square_clip(frames=9, dx=2))
    video, text = client.predict(video_input(right), 9, "a red circle", 8, 1, api_name="/motion_generate")
    frames = read_video(video)
    assert frames.shape == (17, 256, 256, 3) and "'a red circle', seed 1, 8 steps" in text
    enable(pipe, DEFAULT_VMOBA_CONFIG)
    call = dict(num_inference_steps=8, output_type="np")  # the model's own guidance, as the tab
    reference = torch.from_numpy(read_video(right)).permute(0, 3, 1, 2).float() / 255
    with adapter.conditioning(pipe, reference):
        expected = pipe("a red circle", generator=torch.Generator().manual_seed(1), **call).frames[0]
    plain = pipe("a red circle", generator=torch.Generator().manual_seed(1), **call).frames[0]
    shown = frames.reshape(17, 64, 4, 64, 4, 3).mean(axis=(2, 4))  # the page shows it 4x larger, as H.264
    error = np.abs(shown - to_uint8(expected).astype(float)).mean()
    assert error < 3 and np.abs(shown - to_uint8(plain).astype(float)).mean() > 2 * error
    with pytest.raises(Exception, match="prompt must be some words"):
        client.predict(video_input(right), 9, "  ", 8, 0, api_name="/motion_generate")
    with pytest.raises(Exception, match="no video given"):
        client.predict(None, 9, "a red circle", 8, 0, api_name="/motion_generate")

    from vmoba.pipelines import load_motion_adapter

    monkeypatch.setattr(motion_demo, "motion_adapter", lambda: load_motion_adapter(tmp_path))  # a model without one
    with pytest.raises(Exception, match=f"{tmp_path} has no motion adapter"):
        client.predict(video_input(right), 9, "a red circle", 8, 0, api_name="/motion_generate")


def test_attention_speed_table(client):
    knobs = [0.25, "threshold", "query_head", "token", "1d,2d,3d", 3, 32, 80, 1, 2, 2, 1, 2, 2]
    table, text, partition = client.predict(2, 4, 8, 1, 16, *knobs, api_name="/attention_speed")
    rows = table["data"]
    assert [r[0] for r in rows] == ["dense (PyTorch SDPA)", "VMoBA, layer 0", "VMoBA, layer 1", "VMoBA, layer 2",
                                    "criss-cross"]
    assert rows[0][3] == 1.0 and rows[0][5] == 0.0
    assert rows[4][4] == round((2 + 4 + 8 - 2) / 64, 3)
    assert [r[1] for r in rows[1:4]] == ["1d", "2d", "3d"]
    assert all(0 < r[4] <= 1 for r in rows[1:4])
    assert "64 tokens" in text
    with pytest.raises(Exception, match="tokens; the limit here is 4,096"):
        client.predict(16, 32, 32, 1, 16, *knobs, api_name="/attention_speed")
    with pytest.raises(Exception, match="space-time chunk\\[0\\] must be >= 1, got 0"):
        client.predict(2, 4, 8, 1, 16, *knobs[:11], 0, 2, 2, api_name="/attention_speed")
    table, _, _ = client.predict(2, 4, 8, 1, 16, *knobs, api_name="/attention_speed")
    assert len(table["data"]) == 5
