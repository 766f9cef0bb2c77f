"""Enrolment presets (``opom enroll --strength``): plain data, importable without torch."""

# What ``--strength`` sets (each value can still be given on its own). ``paper``: the paper's recipe (SFace alone on
# the 112 crop, plain L-inf budget on the whole crop, eps 8, FIM 16 iterations). ``balanced`` and ``strong``: chosen
# from the held-out-photo ablation (experiments/transfer_ablation/): an ensemble of the real families, on a canvas
# with the photo around the face, only on a soft face region, with the transfer extensions that helped there.
STRENGTHS: dict[str, dict] = {
    "paper": {"surrogate": "sface", "canvas": "arcface_112", "eps": 8.0, "iterations": 16, "transforms": (),
              "region": "full", "chroma": 1.0, "texture": 0.0, "ensemble": "distance"},
    "balanced": {"surrogate": "sface,faceres,faceapi", "canvas": "canvas224", "eps": 8.0, "iterations": 20,
                 "transforms": ("diversity", "jitter"), "region": "face", "chroma": 1.0, "texture": 0.0,
                 "ensemble": "gradient"},
    "strong": {"surrogate": "sface,faceres,mobileface,faceapi", "canvas": "canvas224", "eps": 12.0, "iterations": 30,
               "transforms": ("diversity", "jitter", "jpeg", "resize", "blur"), "region": "face", "chroma": 1.0,
               "texture": 0.0, "ensemble": "gradient"},
}
DEFAULT_STRENGTH = "balanced"
EXPECTED: dict[str, str] = {}
