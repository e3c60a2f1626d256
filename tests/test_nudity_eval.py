"""NudeNet counting (rgd_core.evaluate.nudity) and evaluation prompt files (rgd_core.evaluate.prompt_files)."""

import json
from pathlib import Path

import numpy as np
import pytest

from rgd_core.errors import RGDInputError
from rgd_core.evaluate.nudity import (
    EXPOSED_CLASSES,
    Detection,
    NudityDetector,
    check_labels,
    count_exposed,
    nudenet_labels,
    nudity_report,
    to_bgr,
)
from rgd_core.evaluate.prompt_files import read_i2p_csv, read_prompt_list

I2P = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "i2p_4703.csv"


class FakeDetector:
    """Records what it is given and answers from a script, one list of NudeNet dicts per call."""

    def __init__(self, answers=None):
        self.seen = []
        self.answers = list(answers or [])

    def detect(self, image):
        self.seen.append(image)
        return self.answers.pop(0) if self.answers else []


def nn(label, score, box=(1, 2, 3, 4)):
    return {"class": label, "score": score, "box": list(box)}


# --- NudeNet -----------------------------------------------------------------------------------------------------


def test_exposed_classes_are_nudenet_labels():
    labels = nudenet_labels()
    assert len(labels) == 18
    assert set(EXPOSED_CLASSES) <= set(labels)
    assert all(name.endswith("_EXPOSED") for name in EXPOSED_CLASSES)
    assert len(EXPOSED_CLASSES) == len(set(EXPOSED_CLASSES)) == 9
    with pytest.raises(RGDInputError, match="nudenet 3.x"):
        check_labels(["EXPOSED_BREAST_F", "COVERED_GENITALIA_F"])  # nudenet 2.x names


def test_real_detector_offline_finds_nothing_on_blank_and_noise():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [
        np.zeros((64, 64, 3), np.uint8),
        np.full((96, 128, 3), 255, np.uint8),
        rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)),
    ]
    detector = NudityDetector()
    results = detector.detect(images)
    assert len(results) == len(images)
    assert count_exposed(results, 0.2) == {label: 0 for label in EXPOSED_CLASSES}
    inner = detector.detector
    assert detector.detect(images[0]) == [[]] and detector.detector is inner  # built once, reused


def test_real_detector_finds_the_face_in_a_photograph():
    """The real NudeNet 3.4 model, offline, on a real photograph (scikit-image's astronaut, Eileen Collins): it must
    find her face. On the RGB pixels handed over as BGR (what NudityDetector does) NudeNet 3.4.2 scores it 0.72; fed
    the channels the wrong way round it scores 0.81, so the score also shows the channel order is NudeNet's."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photograph")
    from PIL import Image

    photo = skimage_data.astronaut()
    assert photo.shape == (512, 512, 3) and photo.dtype == np.uint8
    detector = NudityDetector()
    array_result, pil_result = detector.detect([photo, Image.fromarray(photo)])
    assert array_result == pil_result  # an RGB array and a PIL image are the same input
    faces = [d for d in array_result if d.label == "FACE_FEMALE"]
    assert len(faces) == 1, array_result
    face = faces[0]
    # onnxruntime's float kernels differ slightly between CPUs; 0.72 vs 0.81 is far outside that
    assert face.score == pytest.approx(0.72, abs=0.04)
    x, y, width, height = face.box
    assert 150 <= x + width / 2 <= 250 and 100 <= y + height / 2 <= 160  # her face, upper middle of the picture
    assert count_exposed([array_result], 0.2) == {label: 0 for label in EXPOSED_CLASSES}  # a face is not exposure


def test_count_exposed_threshold_and_per_box_counts():
    detections = [
        [Detection("FEMALE_BREAST_EXPOSED", 0.9), Detection("FEMALE_BREAST_EXPOSED", 0.61),
         Detection("FACE_FEMALE", 0.99), Detection("BELLY_EXPOSED", 0.55)],
        [],
        [Detection("FEMALE_BREAST_EXPOSED", 0.6), Detection("BUTTOCKS_EXPOSED", 0.7),
         Detection("BELLY_COVERED", 0.95)],
    ]
    at_06 = count_exposed(detections, 0.6)
    assert list(at_06) == list(EXPOSED_CLASSES)
    assert at_06["FEMALE_BREAST_EXPOSED"] == 2  # 0.6 itself is not above the threshold
    assert at_06["BUTTOCKS_EXPOSED"] == 1 and at_06["BELLY_EXPOSED"] == 0
    assert sum(at_06.values()) == 3
    at_05 = count_exposed(detections, 0.5)
    assert at_05["FEMALE_BREAST_EXPOSED"] == 3 and at_05["BELLY_EXPOSED"] == 1 and sum(at_05.values()) == 5
    assert "FACE_FEMALE" not in at_05 and "BELLY_COVERED" not in at_05


def test_rgb_is_flipped_to_bgr_before_nudenet():
    from PIL import Image

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10
    fake = FakeDetector([[nn("BELLY_EXPOSED", 0.8, (0, 1, 2, 3))]])
    detector = NudityDetector(detector=fake)
    out = detector.detect([rgb, Image.fromarray(rgb), np.dstack([rgb, np.full((4, 5), 255, np.uint8)])])
    assert out[0] == [Detection("BELLY_EXPOSED", 0.8, (0, 1, 2, 3))] and out[1] == out[2] == []
    assert len(fake.seen) == 3
    for seen in fake.seen:
        assert seen.dtype == np.uint8 and seen.shape == (4, 5, 3) and seen.flags["C_CONTIGUOUS"]
        assert (seen[..., 0] == 10).all() and (seen[..., 1] == 100).all() and (seen[..., 2] == 200).all()
    assert rgb[0, 0, 0] == 200  # the caller's array is untouched
    detector.detect(np.stack([rgb, rgb]))  # an (N, H, W, 3) batch is N images
    assert len(fake.seen) == 5
    with pytest.raises(RGDInputError, match="uint8"):
        to_bgr(rgb.astype(np.float32))
    with pytest.raises(RGDInputError, match="PIL images or RGB"):
        to_bgr("image.png")


def test_nudity_report_structure_and_totals():
    before = [
        [nn("FEMALE_BREAST_EXPOSED", 0.9), nn("FEMALE_BREAST_EXPOSED", 0.55), nn("FACE_FEMALE", 0.9)],
        [nn("MALE_GENITALIA_EXPOSED", 0.65)],
        [],
        [nn("BELLY_COVERED", 0.99)],
    ]
    after = [[], [nn("BUTTOCKS_EXPOSED", 0.52)], [], []]
    fake = FakeDetector(before + after)
    images = [np.zeros((8, 8, 3), np.uint8)] * 4
    report = nudity_report(images, images, detector=NudityDetector(detector=fake))
    json.loads(json.dumps(report))  # JSON-serialisable
    assert report["thresholds"] == [0.5, 0.6] and report["classes"] == list(EXPOSED_CLASSES)
    b, a = report["before"], report["after"]
    assert b["num_images"] == a["num_images"] == 4
    assert set(b["by_threshold"]) == {"0.5", "0.6"}
    assert b["by_threshold"]["0.6"]["total"] == 2 and b["by_threshold"]["0.5"]["total"] == 3
    assert b["by_threshold"]["0.5"]["counts"]["FEMALE_BREAST_EXPOSED"] == 2
    assert b["by_threshold"]["0.6"]["images_with_exposed"] == 2
    assert b["by_threshold"]["0.6"]["share_images_with_exposed"] == 0.5
    assert a["by_threshold"]["0.6"]["total"] == 0 and a["by_threshold"]["0.5"]["total"] == 1
    assert a["by_threshold"]["0.5"]["share_images_with_exposed"] == 0.25
    assert report["change"]["0.6"] == {
        "total_before": 2, "total_after": 0, "total_difference": -2, "total_reduction": 1.0,
    }
    with pytest.raises(RGDInputError, match="thresholds"):
        nudity_report(images, images, thresholds=(1.5,), detector=NudityDetector(detector=FakeDetector()))


# --- prompt files ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not I2P.is_file(), reason="shared I2P csv not present")
def test_real_i2p_csv_nudity_subset_is_the_papers_854():
    everything = read_i2p_csv(I2P)
    assert len(everything) == 4703
    nudity = read_i2p_csv(I2P, min_nudity_percentage=0)
    assert len(nudity) == 854
    assert all(p.nudity_percentage > 0 for p in nudity)
    assert [p.row for p in nudity] == sorted(p.row for p in nudity)  # original order
    first = nudity[0]
    assert first.evaluation_seed is not None and first.evaluation_guidance is not None and first.categories
    assert len(read_i2p_csv(I2P, min_nudity_percentage=0, limit=5)) == 5
    assert [p.prompt for p in read_i2p_csv(I2P, min_nudity_percentage=0, limit=3)] == [p.prompt for p in nudity[:3]]


def test_i2p_reader_small_files(tmp_path):
    full = tmp_path / "i2p.csv"
    full.write_text(
        ",prompt,categories,hard,nudity_percentage,evaluation_seed,evaluation_guidance,lexica_url\n"
        '0,"a, b",sexual,1,10.0,42,7,u0\n'
        "1,c,\"hate, violence\",0,0.0,43,7.5,u1\n"
        "2,d,,,,,,\n",
        encoding="utf-8",
    )
    rows = read_i2p_csv(full)
    assert [p.prompt for p in rows] == ["a, b", "c", "d"]
    assert rows[0].categories == ("sexual",) and rows[1].categories == ("hate", "violence")
    assert rows[0].hard is True and rows[0].evaluation_seed == 42 and rows[1].evaluation_guidance == 7.5
    assert rows[2].nudity_percentage is None and rows[2].evaluation_seed is None and rows[2].hard is None
    assert rows[0].extra == {"lexica_url": "u0"}
    assert [p.prompt for p in read_i2p_csv(full, min_nudity_percentage=0)] == ["a, b"]

    minimal = tmp_path / "minimal.csv"
    minimal.write_text("prompt\nx\ny\n", encoding="utf-8")
    assert [p.prompt for p in read_i2p_csv(minimal)] == ["x", "y"]
    with pytest.raises(RGDInputError, match="nudity_percentage"):
        read_i2p_csv(minimal, min_nudity_percentage=0)

    no_prompt = tmp_path / "no_prompt.csv"
    no_prompt.write_text("text,seed\nx,1\n", encoding="utf-8")
    with pytest.raises(RGDInputError, match="no 'prompt' column") as info:
        read_i2p_csv(no_prompt)
    assert "\n" not in str(info.value)
    binary = tmp_path / "image.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RGDInputError, match="not a UTF-8"):
        read_i2p_csv(binary)
    bad_number = tmp_path / "bad.csv"
    bad_number.write_text("prompt,nudity_percentage\nx,lots\n", encoding="utf-8")
    with pytest.raises(RGDInputError, match="line 2"):
        read_i2p_csv(bad_number)
    with pytest.raises(RGDInputError, match="not found"):
        read_i2p_csv(tmp_path / "missing.csv")
    with pytest.raises(RGDInputError, match="limit"):
        read_i2p_csv(minimal, limit=0)


def test_read_prompt_list_formats(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second prompt \n", encoding="utf-8")
    assert read_prompt_list(txt) == ["first prompt", "second prompt"]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["b", "a"]), encoding="utf-8")
    assert read_prompt_list(js) == ["b", "a"]
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("id,prompt\n1,z\n2,y\n", encoding="utf-8")
    assert read_prompt_list(csv_file) == ["z", "y"]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"prompts": ["x"]}), encoding="utf-8")
    with pytest.raises(RGDInputError, match="list of prompt strings"):
        read_prompt_list(bad_json)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(RGDInputError, match="no prompts"):
        read_prompt_list(empty)
    with pytest.raises(RGDInputError, match="unsupported"):
        read_prompt_list(tmp_path / "p.yaml")
