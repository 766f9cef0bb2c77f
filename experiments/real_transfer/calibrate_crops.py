"""Where dlib's face chip and HSE's face box lie in the ArcFace frame, measured on the real photos.

dlib (and face-api, its port) and HSE FaceRes do not use the ArcFace 5-point alignment: dlib aligns its own
5 landmarks (eye corners, nose base) into a 150x150 chip with padding 0.25, HSE takes the MTCNN box plus 10 px,
squared, resized to 224. Both are fixed geometric recipes on top of a detector, so relative to the ArcFace frame
of the same face they sit at (nearly) the same place. This script measures that place on every face of the
real photos (``make test-assets``):

- ArcFace frame: the MTCNN 5 points -> insightface template (opom's prepare, transform in its manifest);
- dlib chip: dlib's 5-point shape predictor in the MTCNN box, ``dlib.get_face_chip_details(size=150,
  padding=0.25)``; the chip mapping (checked against ``dlib.get_face_chip``'s pixels) composed with the inverse
  ArcFace transform gives canonical -> chip, one similarity per face;
- HSE box: the MTCNN box grown by 10 px on each side and squared (the HSE authors' ``facial_analysis.py``), its
  centre and side mapped into the ArcFace frame.

It prints the mean transforms (the constants of ``opom.models.crops``) and how far single faces are from them.

    python experiments/real_transfer/calibrate_crops.py [--work /tmp/opom-calibrate]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from opom.data.alignment import invert_affine, transform_scale
from opom.data.prepare import prepare
from opom.data.real_photos import export_source_photos
from opom.masks import ARCFACE_TEMPLATE_112
from opom.models.crops import compose
from opom.models.dlib_native import LANDMARKS_FILE, _require_dlib, dlib_model_dir

ARCFACE = np.array(ARCFACE_TEMPLATE_112)


def chip_matrix(details) -> np.ndarray:
    """dlib's mapping from image pixels to chip pixels for a ``chip_details`` (as dlib's get_mapping_to_chip)."""
    r, angle = details.rect, details.angle
    cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
    c, s = np.cos(angle), np.sin(angle)

    def rot(x, y):
        return [c * (x - cx) - s * (y - cy) + cx, s * (x - cx) + c * (y - cy) + cy]

    src = np.array([rot(r.left(), r.top()), rot(r.right(), r.top()), rot(r.right(), r.bottom())])
    dst = np.array([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]], float)
    return cv2.getAffineTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/opom-calibrate")
    args = parser.parse_args()
    work = Path(args.work)
    export_source_photos(work / "photos" / "all")
    prepare(work / "photos", work / "aligned", choose="all", template="arcface_112", workers=1, progress=False,
            detector="mtcnn")  # the HSE box is the MTCNN box plus a margin
    dlib = _require_dlib()
    predictor = dlib.shape_predictor(str(dlib_model_dir() / LANDMARKS_FILE))
    chips, boxes, pixel_err = [], [], []
    for line in (work / "aligned" / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("outcome") != "ok":
            continue
        rgb = cv2.cvtColor(cv2.imread(entry["source"]), cv2.COLOR_BGR2RGB)
        for crop in entry["crops"]:
            arc = np.asarray(crop["transform"])  # photo -> canonical
            x0, y0, x1, y1 = crop["box"]
            shape = predictor(rgb, dlib.rectangle(int(x0), int(y0), int(x1), int(y1)))
            details = dlib.get_face_chip_details(shape, size=150, padding=0.25)
            to_chip = chip_matrix(details)
            ours = cv2.warpAffine(rgb, to_chip, (150, 150), flags=cv2.INTER_LINEAR)
            theirs = dlib.get_face_chip(rgb, shape, size=150, padding=0.25)
            pixel_err.append(np.abs(ours.astype(float) - theirs).mean())
            chips.append(compose(to_chip, invert_affine(arc)))
            scale = transform_scale(arc)
            w, h = x1 - x0, y1 - y0
            side = max(w + 20, h + 20) * scale
            centre = arc @ np.array([(x0 + x1) / 2, (y0 + y1) / 2, 1.0])
            boxes.append([*centre, side, max(w, h)])
    chips, boxes = np.array(chips), np.array(boxes)
    mean_chip = np.median(chips, axis=0)  # robust to the odd face whose landmarks disagree
    spread = [np.abs((ARCFACE @ c[:, :2].T + c[:, 2]) - (ARCFACE @ mean_chip[:, :2].T + mean_chip[:, 2])).max()
              for c in chips]
    print(f"{len(chips)} faces; our chip mapping vs dlib.get_face_chip: mean abs pixel difference "
          f"{np.mean(pixel_err):.2f} grey levels (max over faces {np.max(pixel_err):.2f})")
    print("dlib chip (canonical -> 150x150 chip), median over faces:")
    print(np.array2string(mean_chip, precision=4, separator=", "))
    print(f"  chip scale {np.sqrt(abs(np.linalg.det(mean_chip[:, :2]))):.4f} chip px per canonical px; single faces "
          f"put the template points within {np.median(spread):.2f} px (median) / {np.max(spread):.2f} px (max) "
          f"of the median chip's")
    print("HSE box (canonical): centre x, y and side (median, std over faces):")
    print("  centre", np.round(np.median(boxes[:, :2], 0), 3), "std", np.round(boxes[:, :2].std(0), 3))
    print("  side", round(float(np.median(boxes[:, 2])), 3), "std", round(float(boxes[:, 2].std()), 3),
          f"(box sides in the photos {boxes[:, 3].min():.0f}-{boxes[:, 3].max():.0f} px)")


if __name__ == "__main__":
    main()
