"""Scoring variants of the dlib embedder on the first 1,200 LFW pairs (folds 1-2): flip-TTA, cosine vs Euclidean.

Run: OMP_NUM_THREADS=1 python bench/lfw_dlib_variants.py  (writes the raw descriptors to dlib_fold12.npz,
which bench/lfw_dlib_face_choice.py reuses). Results in BENCHMARKS.md, "verify".
"""

import numpy as np
import json
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
sel = np.where(p.folds < 2)[0]  # first two folds: 1,200 pairs
used = sorted(set(p.pairs[sel].ravel().tolist()))
idx = {u: k for k, u in enumerate(used)}
imgs = [load_image(p.images[u]) for u in used]
faces = FaceDetector(device="cpu", select="largest").detect(imgs)
E = get_embedder("dlib")
ok = [k for k, f in enumerate(faces) if f is not None]
I = [imgs[k] for k in ok]
L = np.stack([faces[k].landmarks for k in ok])
B = np.stack([faces[k].box for k in ok])


def raw(I, L, B):
    chips = E.chips(I, L, B)
    return np.array([np.asarray(d) for d in E._net.compute_face_descriptor(chips)])


r = raw(I, L, B)
fi, fl, fb = flip_inputs(I, L, B)
rf = raw(fi, fl, fb)
full = np.full((len(used), 128), np.nan)
fullf = full.copy()
full[ok] = r
fullf[ok] = rf
np.savez(OUT, raw=full, rawflip=fullf, used=np.array(used))
pr = np.array([[idx[a], idx[b]] for a, b in p.pairs[sel]])
same = p.issame[sel]
folds = p.folds[sel]


def cos(e):
    return pair_scores(e, pr)


def neg_euc(e):
    return -np.linalg.norm(e[pr[:, 0]] - e[pr[:, 1]], axis=1)


out = {}
for name, e in (("noflip", full), ("flip-sum", full + fullf)):
    for metric, f in (("cosine", cos), ("euclidean", neg_euc)):
        res = evaluate_scores(f(e), same, folds, n_folds=2)
        out[f"{name}/{metric}"] = round(res.accuracy * 100, 2)
print(json.dumps(out))
