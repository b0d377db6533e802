"""The built-in demo set: synthetic B-mode breast ultrasound images with lesion masks and benign/malignant
labels, generated from a seed (no download). data.load_dataset("demo") wraps them in a CachedSet."""
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

DEMO_SIZE = 240               # images in the demo set (BUSI-like class balance, DEMO_MALIGNANT)
DEMO_MALIGNANT = 0.4
DEMO_BORDERLINE = 0.18        # share of demo cases whose signs lean to the other class


@functools.lru_cache(maxsize=8)
def _gaussian_filters(S, sigmas):
    """Fourier transfer functions (K,S,S//2+1) of Gaussian blurs, sigmas ((axial, lateral) px, ...)."""
    fy = np.fft.fftfreq(S)[None, :, None]
    fx = np.fft.rfftfreq(S)[None, None, :]
    sig = np.asarray(sigmas, dtype=np.float64)[:, :, None, None]                  # (K,2,1,1)
    return np.exp(-2 * np.pi ** 2 * ((sig[:, 0] * fy) ** 2 + (sig[:, 1] * fx) ** 2)).astype(np.complex64)


def _gaussian_fields(rng, S, sigmas):
    """len(sigmas) smooth zero-mean unit-std random fields (K,S,S) float32 (periodic boundary).

    One batched FFT for all fields: the demo set's cost is mostly per-call overhead."""
    f = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((len(sigmas), S, S), dtype=np.float32))
                      * _gaussian_filters(S, tuple(sigmas)), s=(S, S))
    return f / (f.std(axis=(1, 2), keepdims=True) + 1e-8)


def _demo_case(rng, S, label, borderline):
    """One synthetic B-mode breast ultrasound image: (image (S,S) float32 in [0,1], mask (S,S) bool).

    Tissue (top to bottom): gel, bright skin line, hypoechoic subcutaneous fat crossed by echogenic Cooper's
    ligaments, bright fibroglandular layer, retromammary fat, striated pectoralis muscle. One hypoechoic
    lesion: benign signs = oval, circumscribed (thin capsule), wider than tall, posterior enhancement
    (and edge shadows); malignant signs = irregular / spiculated margin (echogenic halo), taller than wide,
    posterior shadowing, microcalcifications. Borderline cases flip 1-3 of the signs (shape, orientation,
    posterior feature). Then depth attenuation, compounded Rayleigh speckle (multiplicative) and log
    compression."""
    u = S / 96.0                                        # texture scale: the same anatomy at any S
    y = ((np.arange(S, dtype=np.float32) + 0.5) / S)[:, None]   # depth (S,1), 0 = transducer
    x = ((np.arange(S, dtype=np.float32) + 0.5) / S)[None, :]   # lateral (1,S)
    wav = lambda amp: amp * np.sin(2 * np.pi * (rng.uniform(0.4, 1.4) * x + rng.random()))
    step = lambda b, w: 0.5 + 0.5 * np.tanh((y - b) / (2 * w))              # smooth 0 -> 1 at depth b
    F = _gaussian_fields(rng, S, [(3 * u, 8 * u), (4 * u, 4 * u), (1.2 * u, 6 * u), (6 * u, 6 * u),
                                  (3 * u, 10 * u), (1.5 * u, 1.5 * u)] + [(0.7 * u, 1.4 * u)] * 6)

    sign = {k: label == 1 for k in ("shape", "orient", "posterior")}         # True = the malignant sign
    if borderline:
        for k in rng.permutation(list(sign))[:rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])]:
            sign[k] = not sign[k]

    # --- layered tissue echogenicity E (S,S)
    y_skin = 0.035 + wav(0.006)
    y_fat = 0.2 + 0.08 * rng.random() + wav(0.03)
    y_gland = y_fat + 0.38 + 0.1 * rng.random() + wav(0.04)
    y_muscle = y_gland + 0.06 + 0.04 * rng.random()
    fat = 0.16 + 0.3 * np.exp(-(F[0] / 0.1) ** 2) + 0.04 * F[1]     # ligaments: zero set of a smooth field
    gland = np.clip(0.8 + 0.3 * F[2] + 0.15 * F[3], 0.3, 1.4)          # horizontally layered parenchyma
    fibres = np.sin(2 * np.pi * (y + rng.uniform(-0.25, 0.25) * x) * rng.uniform(14, 20) + 1.5 * F[4])
    E = 0.03 + (fat - 0.03) * step(y_skin + 0.02, 0.012)
    E = E + (gland - E) * step(y_fat, 0.02)
    E = E + (0.28 - E) * step(y_gland, 0.02)
    E = E + (0.3 + 0.15 * fibres - E) * step(y_muscle, 0.012)
    E = E + 1.1 * np.exp(-((y - y_skin) / (0.008 + 0.6 / S)) ** 2)     # skin line

    # --- lesion: ellipse in rotated normalised coordinates, margin r(theta); mask = rho < r exactly
    size = rng.uniform(0.07, 0.19)                                      # equivalent radius / S
    aspect = rng.uniform(1.1, 1.6) if sign["orient"] else rng.uniform(0.45, 0.8)   # height / width
    angle = rng.uniform(-0.5, 0.5) if sign["orient"] else rng.uniform(-0.25, 0.25)
    a, b = size / np.sqrt(aspect), size * np.sqrt(aspect)              # lateral, axial semi-axes
    cx = rng.uniform(0.22, 0.78)
    cy = float(np.clip(rng.uniform(0.32, 0.58), 0.1 + b, 0.8 - b))
    c, s = np.cos(angle), np.sin(angle)
    u_, v_ = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
    rho = np.sqrt((u_ / a) ** 2 + (v_ / b) ** 2)                       # 1 on the ellipse
    theta = np.arctan2(v_ / b, u_ / a)
    r = np.ones_like(theta)
    if sign["shape"]:                                                   # angular, microlobulated, spiculated
        for k in range(3, 11):
            r = r + rng.uniform(0.02, 0.09) / np.sqrt(k - 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        for t0 in rng.uniform(-np.pi, np.pi, rng.integers(4, 10)):
            d = np.abs((theta - t0 + np.pi) % (2 * np.pi) - np.pi)
            r = r + rng.uniform(0.2, 0.6) * np.clip(1 - d / rng.uniform(0.08, 0.18), 0, None) ** 1.5
        edge_w, E_in = 1.0, rng.uniform(0.06, 0.16)
    else:                                                              # oval, circumscribed, gently lobulated
        for k in (2, 3):
            r = r + rng.uniform(0.0, 0.05) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        edge_w, E_in = 0.5, rng.uniform(0.02, 0.14)
    mask = rho < r
    if mask.sum() < 4:                                                  # tiny S: keep a visible lesion
        mask = rho <= np.sort(rho.ravel())[3]
    dist = (rho - r) * (min(a, b) * S)                                  # ~ signed distance to the margin, px
    soft = 0.5 - 0.5 * np.tanh(dist / (2 * edge_w * u))
    inside = E_in * (1 + (0.35 if sign["shape"] else 0.15) * F[5])
    if label == 1 and rng.random() < 0.4:                               # microcalcifications
        ys, xs = np.nonzero(mask)
        for j in rng.integers(len(ys), size=rng.integers(2, 6)):
            inside = inside + 2.0 * np.exp(-(((y - (ys[j] + .5) / S) ** 2 + (x - (xs[j] + .5) / S) ** 2)
                                             / (0.6 * u / S) ** 2))
    E = E * (1 - soft) + inside * soft
    if sign["shape"] and rng.random() < 0.6:                            # echogenic halo
        E = E + rng.uniform(0.25, 0.5) * np.exp(-((dist - 2.5 * u) / (2.0 * u)) ** 2) * (dist > 0)
    elif not sign["shape"] and rng.random() < 0.5:                      # thin echogenic capsule
        E = E + 0.4 * np.exp(-(dist / (0.7 * u)) ** 2)

    # --- posterior features below the lesion core (ellipse without spicules), soft lateral edges
    core = rho < 1
    cols = core.any(axis=0)
    if not cols.any():
        core, cols = mask, mask.any(axis=0)
    bottom = (np.where(cols, S - 1 - np.argmax(core[::-1], axis=0), int(cy * S)) / S)[None, :]   # (1,S)
    k = np.exp(-0.5 * (np.arange(-4 * u, 4 * u + 1) / (1.5 * u)) ** 2)
    cover = np.clip(np.convolve(cols.astype(float), k / k.sum(), mode="same"), 0, 1)[None, :]   # (1,S)
    below = step(bottom - 0.005, 0.01) * cover                                                # (S,S)
    depth_below = np.clip(y - bottom, 0, None)
    if sign["posterior"]:                                               # shadowing
        E = E * (1 - rng.uniform(0.6, 0.85) * below * np.exp(-depth_below / 0.8))
    else:                                                               # enhancement, strongest for cysts
        strength = rng.uniform(1.0, 1.8) if E_in < 0.06 else rng.uniform(0.5, 1.2)
        E = E * (1 + strength * below * np.exp(-depth_below / 0.4))
        if rng.random() < 0.4:                                          # lateral edge (refraction) shadows
            xs = np.nonzero(cols)[0]
            for xe in (xs[0], xs[-1]):
                edge = np.exp(-((x - (xe + 0.5) / S) / (1.5 * u / S)) ** 2)
                E = E * (1 - 0.6 * edge * step(bottom - 0.3 * b, 0.01))

    # --- attenuation with imperfect gain compensation, 3-look compounded Rayleigh speckle, log compression
    E = E * np.exp(-rng.uniform(0.4, 0.9) * y) * (1 + 0.2 * np.exp(-((y - 0.45) / 0.2) ** 2))
    speckle = (F[6] ** 2 + F[7] ** 2 + F[8] ** 2 + F[9] ** 2 + F[10] ** 2 + F[11] ** 2) / 6   # |z|^2, 3 looks
    img = 0.87 + 10 * np.log10(np.clip(E, 0.005, None) ** 2 * speckle) / rng.uniform(32, 40)  # 32-40 dB shown
    return np.clip(img, 0, 1).astype(np.float32), mask


def synthesise(n, image_size, seed):
    """n demo cases of image_size px, 40 % malignant, deterministic in (n, size, seed):
    (images (n,S,S,3) uint8, masks (n,S,S) uint8, labels (n,) int64, borderline (n,) bool).

    DEMO_BORDERLINE of the cases show signs of the other class (see `_demo_case`)."""
    S = image_size
    children = np.random.SeedSequence(seed).spawn(n + 1)
    rng = np.random.default_rng(children[0])
    n_mal = int(round(DEMO_MALIGNANT * n))
    labels = np.zeros(n, np.int64)
    labels[rng.permutation(n)[:n_mal]] = 1
    borderline = rng.random(n) < DEMO_BORDERLINE
    images = np.empty((n, S, S, 3), np.uint8)
    masks = np.empty((n, S, S), np.uint8)

    def one(i):
        img, m = _demo_case(np.random.default_rng(children[1 + i]), S, int(labels[i]), bool(borderline[i]))
        images[i] = (img * 255 + 0.5).astype(np.uint8)[..., None]
        masks[i] = m

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:   # numpy releases the GIL
        list(pool.map(one, range(n)))
    return images, masks, labels, borderline
