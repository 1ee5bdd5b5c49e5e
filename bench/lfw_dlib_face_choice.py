"""Largest versus centred face on the first 1,200 LFW pairs: re-embeds the images where the two choices differ.

Run after bench/lfw_dlib_variants.py: OMP_NUM_THREADS=1 python bench/lfw_dlib_face_choice.py dlib_fold12.npz
"""

import numpy as np
from synthface.faces.align import FaceDetector, load_image, flip_inputs
from synthface.faces.embedders import get_embedder
from synthface.recognition.protocols import read_pairs
from synthface.recognition.verification import evaluate_scores, pair_scores
import sys
from pathlib import Path
from synthface.lfw import lfw_dir

LFW = str(lfw_dir(Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"))  # $SYNTHFACE_LFW when set
OUT = sys.argv[1] if len(sys.argv) > 1 else "dlib_fold12.npz"
p = read_pairs(LFW + "/pairs.txt", LFW + "/lfw-deepfunneled")
d = np.load(OUT)
used = d["used"].tolist()
raw = d["raw"]
rawf = d["rawflip"]
idx = {u: k for k, u in enumerate(used)}
imgs = [load_image(p.images[u]) for u in used]
det = FaceDetector(device="cpu")
allf = det.detect_all(imgs)
det.select = "center"
changed = []
for k, (fs, img) in enumerate(zip(allf, imgs)):
    if len(fs) > 1:
        det.select = "largest"
        a = det.choose(fs, img.shape)
        det.select = "center"
        b = det.choose(fs, img.shape)
        if a is not b:
            changed.append((k, b))
print("multi-face", sum(len(f) > 1 for f in allf), "largest!=center", len(changed))
E = get_embedder("dlib")
for k, b in changed:
    I = [imgs[k]]
    L = b.landmarks[None]
    B = b.box[None]
    raw[k] = np.asarray(E._net.compute_face_descriptor(E.chips(I, L, B))[0])
    fi, fl, fb = flip_inputs(I, L, B)
    rawf[k] = np.asarray(E._net.compute_face_descriptor(E.chips(fi, fl, fb))[0])
sel = np.where(p.folds < 2)[0]
pr = np.array([[idx[a], idx[b]] for a, b in p.pairs[sel]])
same = p.issame[sel]
folds = p.folds[sel]


def cos(e):
    return pair_scores(e, pr)


for name, e in (("noflip", raw), ("flip-sum", raw + rawf)):
    print(name, "center-select cosine", round(evaluate_scores(cos(e), same, folds, n_folds=2).accuracy * 100, 2))
