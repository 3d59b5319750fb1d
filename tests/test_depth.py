"""`task=depth`: the NYUv2 .mat and depth-folder loaders on tiny data in their real formats, centre decimation,
the normalisation and the border, the RMSE on a hand-computed case, the network with guided and unguided
upsamplers, bad inputs, and tiny runs (trained and non-learned)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.config import compose
from tasks.depth.data import DepthData, centre_decimate, crop_border, load_splits, normalise
from tasks.depth.models import JointUpsampler
from tasks.depth.task import per_image_errors, restore

pytestmark = pytest.mark.usefixtures("bench_cache")

TINY = ["task=depth", "data.train_size=8", "data.val_size=2", "data.test_size=4", "data.image_size=32",
        "recipe.crop_size=32", "scale=4"]


def nyu_mat(path: Path, n: int = 5, w: int = 24, h: int = 16) -> np.ndarray:
    """A tiny labeled NYUv2 in its exact layout: images N x 3 x W x H uint8, depths N x W x H float32 (metres)."""
    import h5py

    rng = np.random.default_rng(0)
    depths = rng.uniform(0.5, 9.5, (n, w, h)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 255, (n, 3, w, h), dtype=np.uint8)
        f["depths"] = depths
    return depths


def test_nyu_loader_reads_the_hdf5_layout_and_pacs_split(tmp_path: Path) -> None:
    depths = nyu_mat(tmp_path / "nyu_depth_v2_labeled.mat")
    cfg = compose("run", ["task=depth", "data=nyuv2", f"data.path={tmp_path}", "scale=4", "recipe.crop_size=8",
                          "data.eval_border=1"])
    splits = load_splits(cfg.data)
    assert len(splits["train"]) == 4 and len(splits["test"]) == 1  # at most the first 1000 train; the rest test
    data = DepthData(cfg, 1)
    sample = data.test_dataloader().dataset[0]
    truth = depths[4].T  # stored W x H: the sample is H x W
    assert sample["guide"].shape == (3, 16, 24) and sample["low"].shape == (1, 4, 6)
    assert torch.allclose(sample["target"][0], torch.from_numpy(truth[1:-1, 1:-1]))
    low = truth[1::4, 1::4]
    assert torch.allclose(sample["low"][0], torch.from_numpy((low - low.min()) / (low.max() - low.min())))
    assert torch.allclose(sample["range"], torch.tensor([low.min(), low.max()]))


def test_depth_folder_reads_16_bit_millimetres(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for k in range(2):
            (tmp_path / split / "rgb").mkdir(parents=True, exist_ok=True)
            (tmp_path / split / "depth").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / split / "rgb" / f"{k}.jpg")
            Image.fromarray(np.full((16, 16), 1500 + k, np.uint16)).save(tmp_path / split / "depth" / f"{k}.png")
    cfg = compose("run", ["task=depth", "data=depthfolder", f"data.path={tmp_path}", "scale=4", "recipe.crop_size=16",
                          "data.eval_border=0"])
    sample = DepthData(cfg, 1).test_dataloader().dataset[1]
    assert torch.allclose(sample["target"], torch.full((1, 16, 16), 1.501))
    assert torch.allclose(sample["low"], torch.full((1, 4, 4), 0.5))  # flat: (d - (d - 0.5)) / 1
    (tmp_path / "test" / "depth" / "1.png").unlink()
    with pytest.raises(Exception, match="depth map of .*1.jpg is missing"):
        DepthData(cfg, 1)


def test_centre_decimation_normalisation_and_border_on_hand_made_arrays() -> None:
    depth = np.arange(64, dtype=np.float32).reshape(8, 8)
    assert centre_decimate(depth, 4).tolist() == [[9.0, 13.0], [41.0, 45.0]]  # offset (4 - 1) // 2 = 1
    assert centre_decimate(depth, 8).tolist() == [[27.0]]  # offset 3
    low, lo, hi = normalise(np.array([[2.0, 4.0], [3.0, 6.0]]))
    assert (lo, hi) == (2.0, 6.0) and low.tolist() == [[0.0, 0.5], [0.25, 1.0]]
    assert normalise(np.full((2, 2), 3.0))[1:] == (2.5, 3.5)
    assert crop_border(depth, 2).shape == (4, 4) and crop_border(depth, 2)[0, 0] == 18


def test_rmse_mae_delta1_per_image_on_a_hand_computed_case() -> None:
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    errors = per_image_errors(pred, target)
    assert errors["rmse"].tolist() == pytest.approx([math.sqrt(4 / 4), 0.0])  # per image, then averaged by the module
    assert errors["mae"].tolist() == pytest.approx([0.5, 0.0])
    assert errors["delta1"].tolist() == pytest.approx([0.75, 1.0])  # 6 / 4 = 1.5 is outside 1.25x
    assert restore(torch.full((1, 1, 1, 1), 0.5), torch.tensor([[2.0, 4.0]])).item() == 3.0


@pytest.mark.parametrize("upsampler, guided", [("pac", True), ("ddf_up", True), ("ddf_up", False), ("carafe", True),
                                              ("bilinear", True)])
def test_network_upsamples_with_guided_and_unguided_slots(upsampler: str, guided: bool) -> None:
    net = JointUpsampler(8, upsampler, guided=guided)
    guide = torch.rand(2, 3, 24, 40, requires_grad=True)
    out = net(torch.rand(2, 1, 3, 5), guide)
    assert out.shape == (2, 1, 24, 40) and len(net.ups) == 3
    out.mean().backward()
    uses_guide = guided and upsampler in ("pac", "ddf_up")
    assert net.guided == uses_guide and (net.guidance is not None) == uses_guide  # no branch that nothing reads
    assert net.upsample_metadata["unguided_slots"] == ([] if uses_guide else ["up1", "up2", "up3"])
    assert (guide.grad is not None) == uses_guide
    if uses_guide:
        assert all(p.grad is not None for p in net.guidance.parameters())


def test_parameter_count_is_pacs_at_the_same_widths() -> None:
    """PacJointUpsample(factor=8): target 1-32-32-32, guide 3-32-32-48, three 32->32 PAC stages, final 32-32-1."""
    def conv(cin: int, cout: int) -> int:
        return cin * cout * 25 + cout

    pac_stage = 32 * 32 * 25 + 32
    want = (conv(1, 32) + 2 * conv(32, 32) + conv(3, 32) + conv(32, 32) + conv(32, 48) + 3 * pac_stage
            + conv(32, 32) + conv(32, 1))
    assert sum(p.numel() for p in JointUpsampler(8, "pac").parameters()) == want


def test_bad_inputs_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "task=depth", "scale=3"]) == 2
    assert main(["run", "task=depth", "op=ddf"]) == 2
    assert main(["run", "task=depth", "guide=foo"]) == 2
    assert main(["run", "task=depth", "model=interpolate", "upsampler=deconv", f"results_dir={tmp_path}/r0"]) == 2
    assert not (tmp_path / "r0" / "depth").exists()  # a mistake, refused: no failed record
    assert main(["run", "task=depth", "data=nyuv2", f"data.path={tmp_path}"]) == 2
    (tmp_path / "nyu_depth_v2_labeled.mat").write_text("not hdf5")
    assert main(["run", "task=depth", "data=nyuv2", f"data.path={tmp_path}", f"results_dir={tmp_path}/r"]) == 2
    err = capsys.readouterr().err
    assert "4, 8, 16" in err and "no conv-operator slots" in err and "HDF5" in err and "Traceback" not in err
    assert "rgb or none" in err and "non-learned row" in err


@pytest.mark.parametrize("extra, learned, guide", [(["upsampler=pac"], True, "rgb"),
                                                   (["upsampler=deconv"], True, "none"),
                                                   (["model=interpolate"], False, "none"),
                                                   (["model=interpolate", "upsampler=jbu"], False, "rgb")])
def test_tiny_runs_write_depth_records(tmp_path: Path, extra: list[str], learned: bool, guide: str) -> None:
    args = [*TINY, *extra, "recipe.epochs=1", "recipe.global_batch=4", "recipe.eval_batch=4", "task.profile_size=32",
            f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(["run", *args]) == 0
    (path,) = sorted((tmp_path / "r").glob("depth/*.json"))
    record = json.loads(path.read_text())
    assert record["status"] == "success" and record["scale"] == 4 and record["guide"] == guide
    assert record["steps"] == (2 if learned else 0)
    assert {"rmse", "mae", "delta1"} <= set(record["metrics"]) and record["metrics"]["rmse"] > 0
    assert (record["efficiency"]["params"] > 0) == learned
