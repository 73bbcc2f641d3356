"""Synthetic motion references for motion-adapter training: their motion, the swap rule, a run that uses them."""

import numpy as np
import pytest
import torch

from _reference import global_velocity
from vmoba.training import config_from_dict
from vmoba.training.config import ConfigError
from vmoba.training.references import KINDS, SyntheticReferences, caption_direction, render_reference
from vmoba.training.shapes import DIRECTIONS


def test_caption_direction_reads_one_direction_word():
    assert caption_direction("a red circle moves left on a dark background") == "left"
    assert caption_direction("A blue square goes UP.") == "up"
    assert caption_direction("a red circle") is None
    assert caption_direction("left then right") is None  # two directions: none
    assert caption_direction("a leftover box") is None  # whole words only


@pytest.mark.parametrize("kind", KINDS)
def test_references_move_toward_their_direction(kind):
    rng = np.random.default_rng(3)
    for direction, (dx, dy) in DIRECTIONS.items():
        for _ in range(3):
            clip = render_reference(rng, direction, frames=9, height=32, width=32, speed=(0.5, 1.0), kind=kind)
            assert clip.shape == (9, 32, 32) and 0 <= clip.min() and clip.max() <= 1
            v = global_velocity(clip.numpy())
            axis = int(np.argmax(np.abs(v)))
            assert axis == (0 if dx else 1), f"{kind} {direction}: velocity {v}"
            assert np.sign(v[axis]) == (dx or dy), f"{kind} {direction}: velocity {v}"
    with pytest.raises(ValueError, match="pattern kind must be one of image, dots, grating"):
        render_reference(rng, "left", frames=9, height=32, width=32, speed=(1, 1), kind="noise")


def test_mix_swaps_in_a_reference_of_the_clips_direction_at_the_given_share():
    # a bank whose every row says its direction: row value = index of the direction + 1
    names = list(DIRECTIONS)
    bank = {name: torch.full((5, 3, 1, 1, 1), float(i + 1)) for i, name in enumerate(names)}
    own = torch.zeros(400, 3, 1, 1, 1)
    directions = [names[i % 4] if i % 5 else None for i in range(400)]
    mixed = SyntheticReferences(bank, share=0.5).mix(own, directions, torch.Generator().manual_seed(0))
    swapped = mixed[:, 0, 0, 0, 0] != 0
    for i, d in enumerate(directions):
        if d is None:
            assert not swapped[i]  # no direction: its own reference
        elif swapped[i]:
            assert mixed[i, 0, 0, 0, 0].item() == names.index(d) + 1
    share = swapped[[d is not None for d in directions]].double().mean().item()
    assert share == pytest.approx(0.5, abs=0.08)
    assert torch.equal(SyntheticReferences(bank, share=0.0).mix(own, directions, torch.Generator()), own)
    assert torch.all(SyntheticReferences(bank, share=1.0).mix(own, directions, torch.Generator())[
        [d is not None for d in directions]] != 0)
    with pytest.raises(ValueError, match="energies lack the directions"):
        SyntheticReferences({"left": bank["left"]}, share=0.5)


def test_built_references_are_the_adapters_energy_of_the_rendered_clips():
    from vmoba.motion import MotionEnergy, MotionEnergyAdapter

    adapter = MotionEnergyAdapter(64, energy=MotionEnergy(num_orientations=4, num_scales=2), hidden=8,
                                  pooling="global", inject="text")
    refs = SyntheticReferences.build(adapter, (3, 4, 4), share=0.5, frames=9, height=32, width=32, speed=(1.0, 2.0),
                                     per_direction=3, seed=7)
    rng = np.random.default_rng([7, 31])
    for direction in DIRECTIONS:  # rendered in this order, three each
        clips = torch.stack([render_reference(rng, direction, frames=9, height=32, width=32, speed=(1.0, 2.0))
                             for _ in range(3)])
        with torch.no_grad():
            expected = adapter.energy(clips[:, :, None], temporal_bins=1)
        expected = expected.mean(dim=(2, 3, 4), keepdim=True)
        torch.testing.assert_close(refs.energies[direction], expected, rtol=1e-4, atol=1e-6)
    # energies of opposite directions differ: the bank carries the motion
    assert not torch.allclose(refs.energies["left"].mean(0), refs.energies["right"].mean(0), rtol=0.05)


@pytest.mark.parametrize("field, value, message", [
    ("synthetic_references", 1.5, r"motion_adapter.synthetic_references must be in \[0, 1\]"),
    ("synthetic_speed", [2.0, 1.0], r"motion_adapter.synthetic_speed must be \[low, high\]"),
    ("synthetic_speed", [1.0], r"motion_adapter.synthetic_speed must be \[low, high\]"),
    ("synthetic_per_direction", 0, "motion_adapter.synthetic_per_direction must be > 0"),
])
def test_bad_reference_settings_are_named(tmp_path, field, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"model": {"train": ["motion_adapter"]}, "data": {"root": str(tmp_path)},
                          "training": {"output_dir": str(tmp_path / "run"), "max_steps": 1},
                          "motion_adapter": {field: value}})


def test_a_run_trains_the_adapter_on_synthetic_references(tmp_path, monkeypatch):
    import json

    from vmoba.motion import MotionEnergyAdapter
    from vmoba.training import DataError
    from vmoba.training.shapes import write_shapes_dataset
    from vmoba.training.trainer import run

    data = write_shapes_dataset(tmp_path / "d", count=4, frames=9, size=32, seed=5)
    built, seen = [], []
    build = SyntheticReferences.build.__func__
    monkeypatch.setattr(SyntheticReferences, "build",
                        classmethod(lambda cls, *a, **k: built.append(build(cls, *a, **k)) or built[-1]))
    record = MotionEnergyAdapter.set_reference_energy
    monkeypatch.setattr(MotionEnergyAdapter, "set_reference_energy",
                        lambda self, energy: seen.append(energy.clone()) or record(self, energy))

    def config(root, out):
        return config_from_dict({
            "model": {"pretrained": "default", "train": ["motion_adapter"]},
            "data": {"root": str(root), "num_frames": 9, "height": 32, "width": 32, "cache_dir": str(tmp_path / out)},
            "motion_adapter": {"hidden": 8, "synthetic_references": 1.0, "synthetic_per_direction": 2},
            "training": {"output_dir": str(tmp_path / out / "run"), "max_steps": 2, "batch_size": 2,
                         "learning_rate": 1e-2, "threads": 1}})

    run(config(data, "a"))
    (bank,) = built
    rows = torch.cat(list(bank.energies.values()))
    assert len(seen) == 2 and all(e.shape[0] == 2 for e in seen)
    for energy in seen:  # every clip names a direction and the share is 1: every reference is synthetic
        for row in energy:
            assert min((row - r).abs().max().item() for r in rows) == 0

    # captions that name no direction leave nothing to draw a reference for
    bare = tmp_path / "bare"
    (bare / "videos").mkdir(parents=True)
    for path in (data / "videos").iterdir():
        (bare / "videos" / path.name).write_bytes(path.read_bytes())
    lines = [json.loads(line) for line in (data / "captions.jsonl").read_text().splitlines()]
    (bare / "captions.jsonl").write_text("".join(json.dumps({**r, "caption": "a shape"}) + "\n" for r in lines))
    with pytest.raises(DataError, match="synthetic_references needs captions that name a direction"):
        run(config(bare, "b"))
