"""Real-texture MVTec-layout categories from scikit-image's texture photographs (brick, grass, gravel).

Usage: python docs/results/make_real_textures.py SKIMAGE_DATA_DIR OUT_ROOT
(SKIMAGE_DATA_DIR holds brick.png, grass.png, gravel.png: the skimage/data/ folder of an installed scikit-image,
or of its wheel unpacked; opencv and numpy come with kdad's environment). Writes OUT_ROOT/real_{brick,grass,gravel}/
in the MVTec layout: 60 train/good, 20 test/good, 10 each of test/{scratch,stain,contamination} with masks.
Deterministic (seeded per category). The photographs are real; the defects are painted, and on purpose not the
DRAEM/Perlin recipe the pseudo-anomaly methods train on.

Normal images: 160x160 crops of the photograph (train from its left 300 columns, test from the right 212, so no
test crop overlaps a training crop), resized to 256. Defects painted on test crops, not DRAEM-like: scratch
(thin polyline), stain (soft dark/bright ellipse), contamination (blob of another texture).
"""
import sys
from pathlib import Path
import numpy as np
import cv2

SRC = Path(sys.argv[1])
OUT = Path(sys.argv[2])
CROP, SIZE = 160, 256
N_TRAIN, N_GOOD, N_DEF = 60, 20, 10

def crop(img, rng, x0, x1):
    y = rng.integers(0, img.shape[0] - CROP + 1); x = rng.integers(x0, x1 - CROP + 1)
    return cv2.resize(img[y:y+CROP, x:x+CROP], (SIZE, SIZE), interpolation=cv2.INTER_AREA)

def scratch(im, rng, other):
    mask = np.zeros(im.shape[:2], np.uint8)
    pts = [rng.integers(40, SIZE - 40, 2)]
    for _ in range(rng.integers(2, 5)):
        pts.append(np.clip(pts[-1] + rng.integers(-50, 51, 2), 5, SIZE - 5))
    cv2.polylines(mask, [np.array(pts, np.int32)], False, 255, int(rng.integers(2, 5)))
    val = 255 if rng.random() < 0.5 else 10
    out = im.copy(); out[mask > 0] = (0.3 * out[mask > 0] + 0.7 * val).astype(np.uint8)
    return out, mask

def stain(im, rng, other):
    soft = np.zeros(im.shape[:2], np.float32)
    c = tuple(int(v) for v in rng.integers(50, SIZE - 50, 2)); ax = tuple(int(v) for v in rng.integers(12, 35, 2))
    cv2.ellipse(soft, c, ax, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    soft = cv2.GaussianBlur(soft, (0, 0), 4)
    factor = rng.uniform(0.45, 0.65) if rng.random() < 0.6 else rng.uniform(1.4, 1.7)
    out = np.clip(im * (1 + (factor - 1) * soft[..., None]), 0, 255).astype(np.uint8)
    return out, ((soft > 0.5) * 255).astype(np.uint8)

def contamination(im, rng, other):
    mask = np.zeros(im.shape[:2], np.uint8)
    c = rng.integers(50, SIZE - 50, 2)
    pts = np.array([c + rng.integers(12, 30) * np.array([np.cos(a), np.sin(a)]) for a in np.sort(rng.uniform(0, 2*np.pi, 7))], np.int32)
    cv2.fillPoly(mask, [pts], 255)
    out = im.copy(); out[mask > 0] = other[mask > 0]
    return out, mask

def main():
    names = ["brick", "grass", "gravel"]
    imgs = {n: cv2.cvtColor(cv2.imread(str(SRC / f"{n}.png"), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR) for n in names}
    for i, name in enumerate(names):
        rng = np.random.default_rng(100 + i)
        img, other_img = imgs[name], imgs[names[(i + 1) % 3]]
        cat = OUT / f"real_{name}"
        for sub in ("train/good", "test/good"):
            (cat / sub).mkdir(parents=True, exist_ok=True)
        for k in range(N_TRAIN):
            cv2.imwrite(str(cat / "train/good" / f"{k:03d}.png"), crop(img, rng, 0, 300))
        for k in range(N_GOOD):
            cv2.imwrite(str(cat / "test/good" / f"{k:03d}.png"), crop(img, rng, 300, 512))
        for defect, fn in (("scratch", scratch), ("stain", stain), ("contamination", contamination)):
            (cat / "test" / defect).mkdir(parents=True, exist_ok=True); (cat / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            for k in range(N_DEF):
                base = crop(img, rng, 300, 512); other = crop(other_img, rng, 0, 512)
                out, mask = fn(base, rng, other)
                cv2.imwrite(str(cat / "test" / defect / f"{k:03d}.png"), out)
                cv2.imwrite(str(cat / "ground_truth" / defect / f"{k:03d}_mask.png"), mask)
        print(cat)

main()
